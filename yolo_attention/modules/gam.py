"""Global Attention Mechanism.

Liu, Shao, Hoffmann. "Global Attention Mechanism: Retain Information to Enhance Channel-Spatial
Interactions", arXiv:2112.05561 (2021).

CBAM's sequential channel-then-spatial layout, with both sub-modules redesigned to keep the full
C x H x W information (no pooling). For x in R^{N x C x H x W} and reduction rate r = 4:

    M_c(x) = sigmoid( perm^-1( MLP( perm(x) ) ) )          in R^{N x C x H x W}
             perm: C x H x W -> H x W x C; MLP(v) = W_1 relu(W_0 v + b_0) + b_1 on the C-vector
             of every position (W_0: C -> C/r, W_1: C/r -> C)
    x'     = M_c(x) * x
    M_s(x') = sigmoid( BN( conv7x7_{C/r -> C}( relu( BN( conv7x7_{C -> C/r}(x') ) ) ) ) )
    y      = M_s(x') * x'

The permuted MLP applies the same linear maps to each position's channel vector, which is a 1x1
convolution; it is written as one (no permutation, same numbers, NCHW and channels_last alike).
The 7x7 convolutions (padding 3, H x W kept at any size) have no bias, as each is followed by
BatchNorm. BatchNorm over maps uses :class:`SafeBatchNorm2d`, which also trains at batch 1 on a
1x1 map.

What differs from common copies, and why: the widely copied ``GAM_Attention`` snippet multiplies
the input by the raw MLP output, without the sigmoid of the channel sub-module, so the "attention"
is an unbounded, possibly negative rescaling; here M_c is a sigmoid gate as in the paper. The
snippet also gives its convolutions a bias before BatchNorm (redundant) and uses plain
BatchNorm2d, which raises for a batch of one 1x1 map. The paper mentions group convolution with
channel shuffle in the spatial sub-module to save parameters in ResNet-50; that variant is not
implemented (the default keeps the paper's plain convolutions): at C = 256 the module has about
1.6 M parameters, almost all in the two 7x7 convolutions.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import SafeBatchNorm2d, check_channels, check_input, check_odd, resolve_layer, resolve_rd_channels

__all__ = ["GAM"]


@register_attention(
    "gam",
    kind="hybrid",
    paper="Global Attention Mechanism: Retain Information to Enhance Channel-Spatial Interactions",
    arxiv="2112.05561",
    aliases=("global_attention_mechanism", "gam_attention"),
    taps=(
        AttentionTap("channel_gate", "spatial", "channel attention M_c (per position)"),
        AttentionTap("spatial_gate", "spatial", "spatial attention M_s (per channel)"),
    ),
    _builtin=True,
)
class GAM(nn.Module):
    """Global Attention Mechanism (arXiv:2112.05561).

    Args:
        channels: input (and output) channels C.
        rd_ratio: reduction 1/r of the MLP and the spatial bottleneck (paper: r = 4).
        rd_divisor: the hidden width is rounded to a multiple of this, and is never below it.
        rd_channels: explicit hidden width (overrides ``rd_ratio``/``rd_divisor``).
        k_size: kernel size of the two spatial convolutions (paper: 7), odd.
        act_layer: activation of both sub-modules (paper: ReLU).
        gate_layer: gating function of both sub-modules (paper: sigmoid).
        norm_layer: normalisation after each spatial convolution (paper: BatchNorm).
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 4,
        rd_divisor: int = 8,
        rd_channels: int | None = None,
        k_size: int = 7,
        act_layer: type[nn.Module] | str = nn.ReLU,
        gate_layer: type[nn.Module] | str = nn.Sigmoid,
        norm_layer: type[nn.Module] = SafeBatchNorm2d,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        self.rd_channels = rd = resolve_rd_channels(name, channels, rd_ratio, rd_divisor, rd_channels)
        self.k_size = check_odd(name, "k_size", k_size)
        act = resolve_layer(name, "act_layer", act_layer)
        gate = resolve_layer(name, "gate_layer", gate_layer)

        self.channel_mlp = nn.Sequential(nn.Conv2d(channels, rd, 1), act(), nn.Conv2d(rd, channels, 1))
        self.channel_gate = gate()
        pad = k_size // 2
        self.spatial = nn.Sequential(
            nn.Conv2d(channels, rd, k_size, padding=pad, bias=False),
            norm_layer(rd),
            act(),
            nn.Conv2d(rd, channels, k_size, padding=pad, bias=False),
            norm_layer(channels),
        )
        self.spatial_gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        x = x * self.channel_gate(self.channel_mlp(x))
        return x * self.spatial_gate(self.spatial(x))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}, k_size={self.k_size}"
