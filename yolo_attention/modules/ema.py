"""Efficient Multi-Scale Attention with cross-spatial learning.

Ouyang, He, Zhang, Huang, Zhang, Luo, Xiang, Xu. "Efficient Multi-Scale Attention Module with
Cross-Spatial Learning", ICASSP 2023, arXiv:2305.13563.

The C channels are split into G groups of C/G channels (G is the authors' "factor", 32 in their
code), and each group X_g in R^{C/G x H x W} of each image is attended separately:

    1x1 branch:   z^h = mean_W(X_g) (C/G x H),  z^w = mean_H(X_g) (C/G x W)
                  [f^h, f^w] = split( F_1x1([z^h, z^w]), [H, W] )     (one shared 1x1 conv)
                  X_1 = GN( X_g * sigmoid(f^h) * sigmoid(f^w) )       (GroupNorm with one channel
                                                                       per group: each channel
                                                                       normalised over H x W)
    3x3 branch:   X_2 = F_3x3(X_g)                                    (3x3 conv, padding 1)
    cross-spatial learning:
                  a_1 = softmax_{C/G}( mean_HW(X_1) ),  a_2 = softmax_{C/G}( mean_HW(X_2) )
                  W(i, j) = sum_c a_1[c] X_2[c, i, j] + sum_c a_2[c] X_1[c, i, j]     (1 x H x W)
    output:       Y_g = X_g * sigmoid(W)

i.e. each branch's global channel descriptor, as a distribution over the group's channels, weighs
the other branch's maps (the paper's two matrix products (1 x C/G) . (C/G x HW)). Everything is
per image (GroupNorm included), so no image of a batch affects another.

Groups: the reshape into groups needs G to divide C. By default G is the largest divisor of C
not above 32: 32 for every multiple of 32 (the authors' setting), 24 at C = 24, 16 at C = 16
(one channel per group, where the channel softmax is 1 and the cross-spatial term is the sum of
the two branches). An explicit ``groups`` must divide C, or construction fails with a clear error.

What differs from common copies, and why: the authors' code (YOLOonMe/EMA-attention-module), and
copies of it, assert only ``C // 32 > 0`` and then fail inside ``reshape`` for a
C that 32 does not divide (e.g. 48, 80, 112), and fail outright for C < 32; here the default
group count adapts as described. They pool with ``AdaptiveAvgPool2d``; here plain means, the
same values, exported to ONNX at any H x W. The two weighted sums are written as broadcast
products summed over the channels rather than matrix products: the same numbers without
reshaping to H*W. Softmaxes run in float32 for float16/bfloat16 inputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import check_channels, check_input, check_positive, largest_divisor

__all__ = ["EMA"]

DEFAULT_GROUPS = 32  # the authors' default factor


@register_attention(
    "ema",
    kind="hybrid",
    paper="Efficient Multi-Scale Attention Module with Cross-Spatial Learning",
    arxiv="2305.13563",
    aliases=("efficient_multiscale_attention", "efficient_multi_scale_attention", "ema_attention", "ema_module"),
    taps=(AttentionTap("gate", "spatial", "cross-spatial weights sigmoid(W), one map per group (N, G, H, W)"),),
    _builtin=True,
)
class EMA(nn.Module):
    """Efficient Multi-Scale Attention (arXiv:2305.13563).

    Args:
        channels: input (and output) channels C.
        groups: number of channel groups G (the paper's factor). Default: the largest divisor of C
            not above 32 (32 when C is a multiple of 32). An explicit value must divide C.
    """

    def __init__(self, channels: int, groups: int | None = None):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        if groups is None:
            groups = largest_divisor(channels, DEFAULT_GROUPS)
        check_positive(name, "groups", groups)
        if channels % groups:
            raise ValueError(
                f"{name}: argument 'groups' must divide channels={channels}, got {groups!r} "
                f"(leave it unset for the largest divisor not above {DEFAULT_GROUPS})"
            )
        self.groups = groups
        cg = channels // groups
        self.conv1x1 = nn.Conv2d(cg, cg, 1)
        self.conv3x3 = nn.Conv2d(cg, cg, 3, padding=1)
        self.gn = nn.GroupNorm(cg, cg)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        h = x.shape[2]
        xg = x.unflatten(1, (self.groups, -1))  # N, G, C/G, H, W
        g = xg.flatten(0, 1)  # N*G, C/G, H, W: every group of every image on its own
        z = torch.cat([g.mean(3, keepdim=True), g.mean(2, keepdim=True).transpose(2, 3)], dim=2)  # N*G, C/G, H+W, 1
        f = self.conv1x1(z)
        x1 = self.gn(g * f[:, :, :h].sigmoid() * f[:, :, h:].transpose(2, 3).sigmoid())
        x2 = self.conv3x3(g)
        a1 = self._channel_softmax(x1)
        a2 = self._channel_softmax(x2)
        weights = (a1 * x2).sum(1) + (a2 * x1).sum(1)  # N*G, H, W
        gate = self.gate(weights.unflatten(0, (-1, self.groups)))  # N, G, H, W
        return (xg * gate.unsqueeze(2)).reshape_as(x)

    @staticmethod
    def _channel_softmax(t: torch.Tensor) -> torch.Tensor:
        """softmax over the group's channels of the global average: (N*G, C/G, 1, 1)."""
        dtype = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype
        return torch.softmax(t.mean((2, 3), keepdim=True), dim=1, dtype=dtype).to(t.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
