"""Bottleneck Attention Module.

Park, Woo, Lee, Kweon. "BAM: Bottleneck Attention Module", BMVC 2018, arXiv:1807.06514.

For x in R^{N x C x H x W}, reduction r = 16 and dilation d = 4:

    M_c(x) = W_1 . relu(W_0 . avgpool(x) + b_0) + b_1            in R^{N x C x 1 x 1}
    M_s(x) = f_1x1( f_3x3,d( f_3x3,d( f_1x1(x) ) ) )              in R^{N x 1 x H x W}
             (1x1: C -> C/r, two dilated 3x3: C/r -> C/r with padding d so H x W is kept,
              1x1: C/r -> 1; BN + ReLU after each of the first three)
    M(x)   = sigmoid(M_c(x) + M_s(x))                              (broadcast to N x C x H x W)
    y      = x + x * M(x)

Normalisation, and why it differs from common copies: the paper's channel MLP applies
BatchNorm to the pooled C-vector. Batch statistics of a pooled vector are computed over N
values only: undefined at batch 1 (the familiar "Expected more than 1 value per channel"
crash on a detector's last, size-1 batch) and noisy at the small per-GPU batches of
detection. The channel branch here therefore has no normalisation (like SE, arXiv:1709.01507).
The spatial branch keeps the paper's BatchNorm, whose statistics cover N*H*W values, using
:class:`SafeBatchNorm2d`, which falls back to running statistics in the one case where a
training batch has a single value per channel (batch 1 at a 1x1 map).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import (
    SafeBatchNorm2d,
    check_channels,
    check_input,
    check_positive,
    check_ratio,
    make_divisible,
    resolve_layer,
)

__all__ = ["BAM"]


@register_attention(
    "bam",
    kind="hybrid",
    paper="BAM: Bottleneck Attention Module",
    arxiv="1807.06514",
    aliases=("bottleneck_attention", "bottleneck_attention_module"),
    taps=(
        AttentionTap("channel_mlp", "channel", "channel branch sigmoid(M_c)", "sigmoid"),
        AttentionTap("spatial", "spatial", "spatial branch sigmoid(M_s)", "sigmoid"),
    ),
    _builtin=True,
)
class BAM(nn.Module):
    """Bottleneck Attention Module (arXiv:1807.06514).

    Args:
        channels: input (and output) channels C.
        rd_ratio: reduction 1/r of both branches (paper: r = 16).
        rd_divisor: hidden widths are rounded to a multiple of this, never below it.
        dilation: dilation d of the two 3x3 convolutions of the spatial branch (paper: 4).
        num_dilated: number of dilated 3x3 convolutions (paper: 2).
        act_layer: activation (paper: ReLU).
        norm_layer: normalisation of the spatial branch (default: BatchNorm safe at batch 1).
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_divisor: int = 8,
        dilation: int = 4,
        num_dilated: int = 2,
        act_layer: type[nn.Module] | str = nn.ReLU,
        norm_layer: type[nn.Module] = SafeBatchNorm2d,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_ratio(name, "rd_ratio", rd_ratio)
        check_positive(name, "rd_divisor", rd_divisor)
        check_positive(name, "dilation", dilation)
        check_positive(name, "num_dilated", num_dilated)
        act = resolve_layer(name, "act_layer", act_layer)
        rd = make_divisible(channels * rd_ratio, rd_divisor)
        self.rd_channels = rd
        self.dilation = dilation

        self.channel_mlp = nn.Sequential(nn.Conv2d(channels, rd, 1), act(), nn.Conv2d(rd, channels, 1))

        layers: list[nn.Module] = [nn.Conv2d(channels, rd, 1, bias=False), norm_layer(rd), act()]
        for _ in range(num_dilated):
            # padding = dilation keeps H x W for a 3x3 kernel at any size, odd or 1x1 included
            layers += [nn.Conv2d(rd, rd, 3, padding=dilation, dilation=dilation, bias=False), norm_layer(rd), act()]
        layers.append(nn.Conv2d(rd, 1, 1))
        self.spatial = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        mc = self.channel_mlp(x.mean((2, 3), keepdim=True))  # N, C, 1, 1
        ms = self.spatial(x)  # N, 1, H, W
        return x + x * torch.sigmoid(mc + ms)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}, dilation={self.dilation}"
