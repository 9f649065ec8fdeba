"""Coordinate Attention.

Hou, Zhou, Feng. "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021,
arXiv:2103.02907.

For x in R^{N x C x H x W} and reduction r = 32 (hidden width C/r, at least 8):

    z^h_c(h) = (1 / W) sum_{0 <= i < W} x_c(h, i)              (pool along the width,  N x C x H)
    z^w_c(w) = (1 / H) sum_{0 <= j < H} x_c(j, w)              (pool along the height, N x C x W)
    f        = delta( BN( F_1([z^h, z^w]) ) )                  (concatenated along the spatial axis,
                                                                N x C/r x (H + W); F_1 a 1x1 conv,
                                                                delta = h-swish)
    [f^h, f^w] = split(f, [H, W])
    g^h = sigmoid(F_h(f^h)),  g^w = sigmoid(F_w(f^w))          (1x1 convs C/r -> C; N x C x H x 1
                                                                and N x C x 1 x W)
    y_c(i, j) = x_c(i, j) * g^h_c(i) * g^w_c(j)

The two directional pools are plain means over one axis, so the module works at any H x W,
1x1 included, and its graph exports to ONNX with dynamic H and W.

Normalisation: the BatchNorm of the paper runs over the N x (H + W) pooled positions of each
hidden channel. That is at least two values even at batch 1 on a 1x1 map (the height and width
descriptors), so training never fails for lack of values; the statistics do mix the images of a
training batch, as BatchNorm does everywhere in a YOLO model, and evaluation uses running
statistics only. :class:`SafeBatchNorm2d` is the default for uniformity; ``F_1`` has no bias
(BatchNorm's shift replaces it).

What differs from common copies, and why: many YOLO snippets build the two pools as
``nn.AdaptiveAvgPool2d((h, 1))`` / ``((1, w))`` with an input size fixed at construction, or
call adaptive pooling with a non-unit output size, which legacy ONNX export rejects at a
dynamic size; both tie the module to one input size. The authors' code (Andrew-Qibin/
CoordAttention) pools with ``AdaptiveAvgPool2d((None, 1))``, which is size-agnostic in eager
PyTorch; here the pools are means, equal to it. The authors' ``F_1`` carries a bias before
BatchNorm, which BatchNorm cancels in training and folds into its running mean in evaluation:
the same function. The hidden width is ``make_divisible(C / 32, 8)``, a multiple of 8 as in the
package's other modules; the authors' ``max(8, C // 32)`` is the same below 288 channels and at
multiples of 256 and differs in between (320: 8 vs 10, 384: 16 vs 12, 640: 24 vs 20); pass
``rd_channels`` for theirs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import SafeBatchNorm2d, check_channels, check_input, resolve_layer, resolve_rd_channels

__all__ = ["CoordAtt"]


@register_attention(
    "coordatt",
    kind="hybrid",
    paper="Coordinate Attention for Efficient Mobile Network Design",
    arxiv="2103.02907",
    aliases=("coordinate_attention", "coord_attention", "coordinate_att"),
    taps=(
        AttentionTap("gate_h", "spatial", "height attention g^h"),
        AttentionTap("gate_w", "spatial", "width attention g^w"),
    ),
    _builtin=True,
)
class CoordAtt(nn.Module):
    """Coordinate Attention (arXiv:2103.02907).

    Args:
        channels: input (and output) channels C.
        rd_ratio: reduction 1/r of the shared transform (paper: r = 32).
        rd_divisor: the hidden width is rounded to a multiple of this, and is never below it (8, as the paper's minimum).
        rd_channels: explicit hidden width (overrides ``rd_ratio``/``rd_divisor``).
        act_layer: non-linearity delta (paper: h-swish).
        gate_layer: gating function (paper: sigmoid).
        norm_layer: normalisation after F_1 (paper: BatchNorm); None for none (F_1 then has a bias).
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 32,
        rd_divisor: int = 8,
        rd_channels: int | None = None,
        act_layer: type[nn.Module] | str = nn.Hardswish,
        gate_layer: type[nn.Module] | str = nn.Sigmoid,
        norm_layer: type[nn.Module] | None = SafeBatchNorm2d,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        self.rd_channels = rd_channels = resolve_rd_channels(name, channels, rd_ratio, rd_divisor, rd_channels)
        gate = resolve_layer(name, "gate_layer", gate_layer)

        self.conv1 = nn.Conv2d(channels, rd_channels, 1, bias=norm_layer is None)
        self.bn1 = nn.Identity() if norm_layer is None else norm_layer(rd_channels)
        self.act = resolve_layer(name, "act_layer", act_layer)()
        self.conv_h = nn.Conv2d(rd_channels, channels, 1)
        self.conv_w = nn.Conv2d(rd_channels, channels, 1)
        self.gate_h = gate()
        self.gate_w = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        h = x.shape[2]
        z_h = x.mean(3, keepdim=True)  # N, C, H, 1
        z_w = x.mean(2, keepdim=True).transpose(2, 3)  # N, C, W, 1: both along one axis for the shared F_1
        f = self.act(self.bn1(self.conv1(torch.cat([z_h, z_w], dim=2))))  # N, C/r, H + W, 1
        g_h = self.gate_h(self.conv_h(f[:, :, :h]))  # N, C, H, 1
        g_w = self.gate_w(self.conv_w(f[:, :, h:]).transpose(2, 3))  # N, C, 1, W
        return x * g_h * g_w

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}"
