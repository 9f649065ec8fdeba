"""Triplet attention.

Misra, Nalamada, Arasanipalai, Hou. "Rotate to Attend: Convolutional Triplet Attention Module",
WACV 2021, arXiv:2010.03045.

Three branches, each attending over a pair of the three axes (C, H, W) of x in R^{N x C x H x W}
after reducing the third with Z-pool, the concatenation of max and mean along one axis:

    Z-pool_d(x) = [ max_d(x); mean_d(x) ]                           (2 maps, axis d removed)
    branch (C, W): a_cw = sigmoid( BN( conv_kxk( Z-pool_H(x) ) ) )  over the C x W plane
    branch (H, C): a_hc = sigmoid( BN( conv_kxk( Z-pool_W(x) ) ) )  over the H x C plane
    branch (H, W): a_hw = sigmoid( BN( conv_kxk( Z-pool_C(x) ) ) )  over the H x W plane
    y = (1/3) (x * a_cw + x * a_hc + x * a_hw) = x * (a_cw + a_hc + a_hw) / 3

with k = 7, padding 3, one output map per branch and no bias (BatchNorm follows). The paper
obtains the first two branches by rotating x (permuting C with H, and C with W) so that a 2-D
convolution runs over the plane of interest; the convolution planes here are the same ((C, W) and
(H, C), in that order of the kernel's rows and columns), but only the small pooled tensors are
permuted, never x, and the three gates are broadcast and summed before a single multiplication.

What differs from common copies, and why: the authors' code (landskape-ai/triplet-attention)
and its copies permute and copy the whole input twice (``permute(...).contiguous()``) and apply
three separate multiplications; the numbers are the same, the memory traffic higher. Their
BatchNorm is plain ``nn.BatchNorm2d`` (momentum 0.01): the (H, W) branch has N*H*W values, one at
batch 1 on a 1x1 map, where training raises; :class:`SafeBatchNorm2d` keeps the paper's
BatchNorm and trains there. Pass ``norm_layer=partial(SafeBatchNorm2d, momentum=0.01)`` for their
running-statistics momentum.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import SafeBatchNorm2d, check_channels, check_input, check_odd, resolve_layer

__all__ = ["TripletAttention"]


def z_pool(x: torch.Tensor, dim: int) -> torch.Tensor:
    """[max; mean] along ``dim``, stacked in ``dim`` (size 2 there)."""
    return torch.cat([x.amax(dim, keepdim=True), x.mean(dim, keepdim=True)], dim=dim)


@register_attention(
    "triplet",
    kind="hybrid",
    paper="Rotate to Attend: Convolutional Triplet Attention Module",
    arxiv="2010.03045",
    aliases=("triplet_attention_module", "rotate_to_attend"),
    taps=(
        AttentionTap("gate_cw", "spatial", "channel-width attention a_cw (N, C, 1, W)"),
        AttentionTap("gate_hc", "spatial", "height-channel attention a_hc (N, C, H, 1)"),
        AttentionTap("gate_hw", "spatial", "spatial attention a_hw (N, 1, H, W)"),
    ),
    _builtin=True,
)
class TripletAttention(nn.Module):
    """Convolutional triplet attention (arXiv:2010.03045).

    Args:
        channels: input (and output) channels C (no parameter depends on it; inputs are checked against it).
        k_size: kernel size of the three convolutions (paper: 7), odd.
        gate_layer: gating function (paper: sigmoid).
        norm_layer: normalisation after each convolution (paper: BatchNorm).
    """

    def __init__(
        self,
        channels: int,
        k_size: int = 7,
        gate_layer: type[nn.Module] | str = nn.Sigmoid,
        norm_layer: type[nn.Module] = SafeBatchNorm2d,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        self.k_size = check_odd(name, "k_size", k_size)
        gate = resolve_layer(name, "gate_layer", gate_layer)
        for branch in ("cw", "hc", "hw"):
            conv = nn.Conv2d(2, 1, k_size, padding=k_size // 2, bias=False)
            setattr(self, f"conv_{branch}", nn.Sequential(conv, norm_layer(1)))
            setattr(self, f"gate_{branch}", gate())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        # (C, W) plane: pool over H -> N, C, 2, W -> N, 2, C, W; the map back to N, C, 1, W
        a_cw = self.gate_cw(self.conv_cw(z_pool(x, 2).transpose(1, 2)).transpose(1, 2))
        # (H, C) plane: pool over W -> N, C, H, 2 -> N, 2, H, C; the map back to N, C, H, 1
        a_hc = self.gate_hc(self.conv_hc(z_pool(x, 3).permute(0, 3, 2, 1)).permute(0, 3, 2, 1))
        a_hw = self.gate_hw(self.conv_hw(z_pool(x, 1)))  # N, 1, H, W
        return x * ((a_cw + a_hc + a_hw) / 3)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k_size={self.k_size}"
