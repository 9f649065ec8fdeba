"""Shuffle Attention.

Zhang, Yang. "SA-Net: Shuffle Attention for Deep Convolutional Neural Networks", ICASSP 2021,
arXiv:2102.00240.

For x in R^{N x C x H x W}, G groups (paper: G = 64), each group split into two halves of
c = C / (2G) channels, X_k1 (channel branch) and X_k2 (spatial branch), k = 1 .. G:

    channel branch   s      = (1 / HW) sum_{i,j} X_k1[:, :, i, j]               in R^{c x 1 x 1}
                     X'_k1  = sigmoid(W_1 s + b_1) * X_k1                       W_1, b_1 in R^{c x 1 x 1}
    spatial branch   X'_k2  = sigmoid(W_2 GN(X_k2) + b_2) * X_k2                W_2, b_2 in R^{c x 1 x 1}
                     (GN: GroupNorm with c groups of one channel each, i.e. every channel
                      normalised over its H x W positions, with its own affine)
    aggregate        X'_k   = [X'_k1, X'_k2]                                    (concatenate)
                     y      = channel_shuffle([X'_1 .. X'_G], 2 groups)         (N, C, H, W)

W_1, b_1, W_2, b_2 (and GN's affine) are shared by all G groups, so the module has 6c
parameters. W are initialised to 0 and b to 1 (the authors' code): every gate starts at
sigmoid(1).

Channels: C must be even (each group has a channel and a spatial half). G is clamped to the
largest value not above ``groups`` for which 2G divides C (64 at C = 256; 8 at C = 16, 12 at
C = 24, 48 at C = 96), so c = C / (2G) is at least 1 and every even channel count builds.

Nothing mixes images of a batch (GN statistics are per image and channel); at a 1x1 map GN
maps every value to its bias, which is finite (:class:`SafeGroupNorm` allows the single value
per group that ``nn.GroupNorm`` refuses at C = 2).

What differs from common copies, and why: the widely copied ``ShuffleAttention`` snippet
defaults to G = 8 (the paper uses 64) and fails with a shape error when C is not divisible by
2G; this module follows the paper's G = 64 and clamps it for small C. The arithmetic is the
paper's and the authors' (wofmanaf/SA-Net ``sa_layer``), checked equal to their code.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import SafeGroupNorm, check_channels, check_input, check_positive, largest_divisor

__all__ = ["ShuffleAttention"]


@register_attention(
    "shuffle",
    kind="hybrid",
    paper="SA-Net: Shuffle Attention for Deep Convolutional Neural Networks",
    arxiv="2102.00240",
    aliases=("shuffle_attention", "sa_net", "sanet"),
    taps=(
        AttentionTap("channel_gate", "channel", "channel-branch gates (C/2: first half of every group)"),
        AttentionTap("spatial_gate", "spatial", "spatial-branch gates (C/2 maps: second half of every group)"),
    ),
    _builtin=True,
)
class ShuffleAttention(nn.Module):
    """Shuffle Attention (arXiv:2102.00240): per group, a channel gate on one half, a spatial gate on the other.

    Args:
        channels: input (and output) channels C; must be even.
        groups: G (paper: 64), clamped to the largest value not above it with C divisible by 2G.
    """

    def __init__(self, channels: int, groups: int = 64):
        super().__init__()
        name = type(self).__name__
        self.channels = c = check_channels(name, channels)
        if c % 2:
            raise ValueError(
                f"{name}: argument 'channels' must be even (every group splits into a channel half and a "
                f"spatial half), got {channels!r}"
            )
        self.groups = largest_divisor(c, check_positive(name, "groups", groups), step=2)
        self.group_channels = c // (2 * self.groups)  # channels per half-group
        self.cweight = nn.Parameter(torch.zeros(self.group_channels))
        self.cbias = nn.Parameter(torch.ones(self.group_channels))
        self.sweight = nn.Parameter(torch.zeros(self.group_channels))
        self.sbias = nn.Parameter(torch.ones(self.group_channels))
        self.gn = SafeGroupNorm(self.group_channels, self.group_channels)
        self.channel_gate = nn.Sigmoid()
        self.spatial_gate = nn.Sigmoid()

    def _per_group(self, p: torch.Tensor) -> torch.Tensor:
        """A shared (c,) parameter laid out over the G half-groups: (1, G*c, 1, 1)."""
        return p.repeat(self.groups).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        n, c, h, w = x.shape
        xg = x.reshape(n, self.groups, 2, self.group_channels, h, w)
        x1 = xg[:, :, 0].reshape(n, -1, h, w)  # N, G*c, H, W: channel halves
        x2 = xg[:, :, 1].reshape(n, -1, h, w)  # spatial halves
        s = x1.mean((2, 3), keepdim=True)
        y1 = x1 * self.channel_gate(self._per_group(self.cweight) * s + self._per_group(self.cbias))
        # GN per (image, group): one channel per norm group, statistics over H x W
        g2 = self.gn(x2.reshape(n * self.groups, self.group_channels, h, w)).reshape(n, -1, h, w)
        y2 = x2 * self.spatial_gate(self._per_group(self.sweight) * g2 + self._per_group(self.sbias))
        halves = (n, self.groups, self.group_channels, h, w)
        out = torch.stack((y1.reshape(halves), y2.reshape(halves)), dim=2).reshape(n, c, h, w)
        # channel shuffle with 2 groups: channel k*(C/2) + j -> 2j + k
        return out.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
