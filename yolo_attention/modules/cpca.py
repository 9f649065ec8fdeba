"""Channel Prior Convolutional Attention.

Huang, Chen, Zou, Lu, Chen. "Channel prior convolutional attention for medical image
segmentation", arXiv:2306.05196 (Computers in Biology and Medicine, 2024).

For F in R^{N x C x H x W}:

    CA(F)  = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))       in R^{N x C x 1 x 1}
             MLP = 1x1 conv C -> C/r, ReLU, 1x1 conv C/r -> C (shared by both pools, biases)
    F_c    = CA(F) * F                                         the channel prior
    D      = DwConv_5x5(F_c)
    SA(F_c) = Conv_1x1( D + sum_{k in (7, 11, 21)} DwConv_{k x 1}(DwConv_{1 x k}(D)) )
                                                               in R^{N x C x H x W}
    out    = SA(F_c) * F_c

All depthwise convolutions and the 1x1 convolution have biases; padding keeps H x W at every
size. The spatial attention is not squashed: SA is the 1x1 convolution's output itself (the
paper's equation; the authors' code likewise). The reduction r = 4 is the authors' CPCANet
value (``channelAttention_reduce=4``).

What differs from the authors' code, and why:

- Channel attention. The paper writes CBAM's form, sigmoid(MLP(avg) + MLP(max)), one gate in
  (0, 1). The authors' ``ChannelAttention`` computes sigmoid(MLP(avg)) + sigmoid(MLP(max)), a
  gate in (0, 2). This module follows the paper (the parity test swaps in the authors' channel
  attention to compare everything else).
- Projections. The authors' ``RepBlock`` wraps the attention as conv1x1 -> GELU -> CPCA ->
  conv1x1, and uses one and the same 1x1 convolution (shared weights) for the input
  projection, for SA's channel mixing and for the output projection. Those projections belong
  to CPCANet's block, not to the attention (like VAN's around LKA); as an attention module
  inserted into a detector this module is CA then SA, with SA's 1x1 convolution its own.

Common copies for YOLO (``CPCABlock``/``RepBlock`` snippets) keep the authors' block: the
shared 1x1 convolution, the GELU input projection and their channel attention.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import check_channels, check_input, check_positive, check_ratio, make_divisible, resolve_layer

__all__ = ["CPCA", "ChannelPrior"]

STRIP_KERNELS = (7, 11, 21)  # the paper's multi-scale strip convolutions


def _depthwise(channels: int, kh: int, kw: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, (kh, kw), padding=(kh // 2, kw // 2), groups=channels)


class ChannelPrior(nn.Module):
    """CA(F) = gate(MLP(AvgPool(F)) + MLP(MaxPool(F))), the (N, C, 1, 1) channel weights."""

    def __init__(self, channels: int, rd_channels: int, act_layer):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)
        self.gate = nn.Sigmoid()

    def _mlp(self, v: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(v)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self._mlp(x.mean((2, 3), keepdim=True)) + self._mlp(x.amax((2, 3), keepdim=True)))


@register_attention(
    "cpca",
    kind="hybrid",
    paper="Channel prior convolutional attention for medical image segmentation",
    arxiv="2306.05196",
    aliases=("channel_prior_convolutional_attention",),
    taps=(
        AttentionTap("channel_prior.gate", "channel", "channel prior CA(F)"),
        AttentionTap("mix", "spatial", "spatial attention SA (unsquashed, per channel)"),
    ),
    _builtin=True,
)
class CPCA(nn.Module):
    """Channel Prior Convolutional Attention (arXiv:2306.05196): channel gate, then multi-scale strip-conv attention.

    Args:
        channels: input (and output) channels C.
        rd_ratio: 1/r of the channel MLP (authors: r = 4).
        rd_divisor: the hidden width is rounded to a multiple of this (1: C/r exactly when r divides C).
        act_layer: activation of the channel MLP (paper: ReLU).
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 4,
        rd_divisor: int = 1,
        act_layer: type[nn.Module] | str = nn.ReLU,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = c = check_channels(name, channels)
        check_ratio(name, "rd_ratio", rd_ratio)
        check_positive(name, "rd_divisor", rd_divisor)
        self.rd_channels = make_divisible(c * rd_ratio, rd_divisor)
        self.channel_prior = ChannelPrior(c, self.rd_channels, resolve_layer(name, "act_layer", act_layer))

        self.conv0 = _depthwise(c, 5, 5)
        self.strips = nn.ModuleList(nn.Sequential(_depthwise(c, 1, k), _depthwise(c, k, 1)) for k in STRIP_KERNELS)
        self.mix = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        f = x * self.channel_prior(x)
        d = self.conv0(f)
        s = d
        for strip in self.strips:
            s = s + strip(d)
        return self.mix(s) * f

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}"
