"""Convolutional Block Attention Module.

Woo, Park, Lee, Kweon. "CBAM: Convolutional Block Attention Module", ECCV 2018, arXiv:1807.06521.

For x in R^{N x C x H x W}, reduction r = 16 and a k x k spatial kernel (k = 7):

    M_c(x) = sigmoid( MLP(avgpool_HW(x)) + MLP(maxpool_HW(x)) )           in R^{N x C x 1 x 1}
             MLP(z) = W_1 . relu(W_0 . z + b_0) + b_1   (shared by both pooled vectors,
                                                         W_0: C -> C/r, W_1: C/r -> C)
    x'     = M_c(x) * x
    M_s(x') = sigmoid( f_kxk([mean_C(x'); max_C(x')]) )                  in R^{N x 1 x H x W}
             (a k x k convolution, padding k // 2, from the 2 pooled maps to 1)
    y      = M_s(x') * x'

Channel attention first, then spatial attention, as the paper's ablation chose. The MLP layers
are 1x1 convolutions, and both pooled vectors go through them in a single call (stacked along
the width), which is the same map. Nothing here uses batch statistics by default, so any batch
size, including 1 at a 1x1 map, trains.

What differs from common copies, and why:

* ultralytics' ``CBAM`` (``nn/modules/conv.py``, not a YAML name) has a channel branch of one
  C -> C 1x1 convolution on the average-pooled vector only: no bottleneck MLP and no max-pooled
  descriptor, which the paper's ablation (Table 1) shows to help. Here: the paper's shared MLP
  on both descriptors, with r = 16.
* The authors' code (Jongchan/attention-module) computes the hidden width as ``C // r``,
  which is 0 for C < 16 and fails; here it is ``make_divisible(C / r, 8)`` (never below 8,
  exactly C / 16 for the usual YOLO widths that are multiples of 128), or ``rd_channels``.
* The authors' code follows the spatial convolution with BatchNorm (momentum 0.01) and drops
  the convolution's bias; the paper describes a convolution followed by the sigmoid, which is
  what the default does. ``norm_layer=SafeBatchNorm2d`` restores the authors' variant (the
  convolution then has no bias), safe at batch 1 on a 1x1 map, where plain BatchNorm raises.
* The authors' code stacks the channel-pooled maps as [max; mean], the paper as [mean; max];
  the two differ only by the order of the convolution's input channels (equal up to relabelling
  its weights). The paper's order is used.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import check_channels, check_input, check_odd, resolve_layer, resolve_rd_channels

__all__ = ["CBAM"]


@register_attention(
    "cbam",
    kind="hybrid",
    paper="CBAM: Convolutional Block Attention Module",
    arxiv="1807.06521",
    aliases=("convolutional_block_attention", "convolutional_block_attention_module"),
    taps=(
        AttentionTap("channel_gate", "channel", "channel attention M_c"),
        AttentionTap("spatial_gate", "spatial", "spatial attention M_s"),
    ),
    _builtin=True,
)
class CBAM(nn.Module):
    """Convolutional Block Attention Module (arXiv:1807.06521): channel, then spatial attention.

    Args:
        channels: input (and output) channels C.
        rd_ratio: reduction 1/r of the channel MLP (paper: r = 16).
        rd_divisor: the hidden width is rounded to a multiple of this, and is never below it.
        rd_channels: explicit hidden width (overrides ``rd_ratio``/``rd_divisor``).
        k_size: kernel size of the spatial convolution (paper: 7), odd.
        act_layer: activation of the MLP (paper: ReLU); a class or a name such as "silu".
        gate_layer: gating function of both branches (paper: sigmoid).
        norm_layer: optional normalisation after the spatial convolution (paper: none; the
            authors' code: BatchNorm, e.g. ``SafeBatchNorm2d``); the convolution then has no bias.
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_divisor: int = 8,
        rd_channels: int | None = None,
        k_size: int = 7,
        act_layer: type[nn.Module] | str = nn.ReLU,
        gate_layer: type[nn.Module] | str = nn.Sigmoid,
        norm_layer: type[nn.Module] | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        self.rd_channels = rd_channels = resolve_rd_channels(name, channels, rd_ratio, rd_divisor, rd_channels)
        self.k_size = check_odd(name, "k_size", k_size)
        gate = resolve_layer(name, "gate_layer", gate_layer)

        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = resolve_layer(name, "act_layer", act_layer)()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)
        self.channel_gate = gate()

        self.spatial_conv = nn.Conv2d(2, 1, k_size, padding=k_size // 2, bias=norm_layer is None)
        self.spatial_norm = nn.Identity() if norm_layer is None else norm_layer(1)
        self.spatial_gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        # both descriptors through the shared MLP at once: (N, C, 1, 2), then summed
        pooled = torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)], dim=3)
        logits = self.fc2(self.act(self.fc1(pooled))).sum(3, keepdim=True)
        x = x * self.channel_gate(logits)
        desc = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)  # N, 2, H, W
        return x * self.spatial_gate(self.spatial_norm(self.spatial_conv(desc)))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}, k_size={self.k_size}"
