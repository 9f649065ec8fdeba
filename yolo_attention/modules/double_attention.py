"""Double attention (A^2) block.

Chen, Kalantidis, Li, Yan, Feng. "A^2-Nets: Double Attention Networks", NeurIPS 2018,
arXiv:1810.11579.

For x in R^{N x C x H x W}, with L = H*W positions and three 1x1 convolutions:

    A = phi(x)   in R^{N x c_m x L}   feature maps
    B = theta(x) in R^{N x c_n x L}   attention maps
    V = rho(x)   in R^{N x c_n x L}   attention vectors

    Feature gathering     G = A . softmax_L(B)^T          in R^{N x c_m x c_n}
                          (each of the c_n attention maps is a distribution over the L positions;
                           G holds c_n global descriptors, second-order attention pooling)
    Feature distribution  Z = G . softmax_{c_n}(V)        in R^{N x c_m x L}
                          (each position mixes the c_n descriptors with weights summing to 1)
    Reconstruction        y = x + W_r Z                   (1x1 conv c_m -> C, residual;
                                                           computed as (W_r G) softmax(V))

All products are per image (batched matmuls over N); no statistic mixes images of a batch.
Softmaxes are computed in float32, so float16/bfloat16 inputs do not overflow. ``W_r`` is
zero-initialised by default, so a freshly inserted residual block is exactly the identity.

The two softmaxes are parameterless submodules (``map_softmax``, ``vector_softmax``) so that
their outputs can be read with forward hooks (``yolo-attention explain`` draws them); they add
nothing to the state dict.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import check_channels, check_input, check_positive, check_ratio, make_divisible

__all__ = ["DoubleAttention"]


class _Softmax32(nn.Module):
    """Softmax along ``dim`` computed in float32 and returned in the input dtype."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=self.dim, dtype=torch.float32).to(x.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


@register_attention(
    "a2",
    kind="global-context",
    paper="A^2-Nets: Double Attention Networks",
    arxiv="1810.11579",
    aliases=("double_attention", "a2net", "a2nets", "a2_nets"),
    taps=(
        AttentionTap("map_softmax", "maps", "gathering map softmax_L(B)"),
        AttentionTap("vector_softmax", "maps", "distribution weights softmax_cn(V)"),
    ),
    _builtin=True,
)
class DoubleAttention(nn.Module):
    """A^2 double attention block (arXiv:1810.11579).

    Args:
        channels: input (and output) channels C.
        c_m: number of feature maps gathered (default ``make_divisible(C * cm_ratio, divisor)``).
        c_n: number of attention maps / global descriptors (default from ``cn_ratio``).
        cm_ratio, cn_ratio: width ratios used when ``c_m``/``c_n`` are not given (default 1/4).
        divisor: rounding of the derived widths (never below it).
        residual: add the input back (the block as used in the paper). With ``residual=False``
            the module returns ``W_r Z`` only.
        zero_init: zero-initialise the reconstruction so the residual block starts as the identity.
    """

    def __init__(
        self,
        channels: int,
        c_m: int | None = None,
        c_n: int | None = None,
        cm_ratio: float = 0.25,
        cn_ratio: float = 0.25,
        divisor: int = 4,
        residual: bool = True,
        zero_init: bool = True,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_positive(name, "divisor", divisor)
        if c_m is None:
            c_m = make_divisible(channels * check_ratio(name, "cm_ratio", cm_ratio), divisor)
        if c_n is None:
            c_n = make_divisible(channels * check_ratio(name, "cn_ratio", cn_ratio), divisor)
        self.c_m = check_positive(name, "c_m", c_m)
        self.c_n = check_positive(name, "c_n", c_n)
        self.residual = bool(residual)
        self.convA = nn.Conv2d(channels, c_m, 1)
        self.convB = nn.Conv2d(channels, c_n, 1)
        self.convV = nn.Conv2d(channels, c_n, 1)
        self.reconstruct = nn.Conv2d(c_m, channels, 1)
        self._add_softmaxes()
        if zero_init:
            nn.init.zeros_(self.reconstruct.weight)
            nn.init.zeros_(self.reconstruct.bias)
        # read by identity_start: inserted into a trained detector, it needs no gate
        self.starts_as_identity = self.residual and bool(zero_init)

    def _add_softmaxes(self) -> None:
        self.map_softmax = _Softmax32(dim=2)  # over the L positions: c_n attention maps
        self.vector_softmax = _Softmax32(dim=1)  # over the c_n descriptors, at each position

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "map_softmax" not in self._modules:  # pickled before the softmaxes were submodules
            self._add_softmaxes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        n, _, h, w = x.shape
        a = self.convA(x).flatten(2)  # N, c_m, L
        b = self.convB(x).flatten(2)  # N, c_n, L
        v = self.convV(x).flatten(2)  # N, c_n, L
        attn_maps = self.map_softmax(b)  # N, c_n, L: each map a distribution over the positions
        attn_vecs = self.vector_softmax(v)  # N, c_n, L: at each position, weights over the descriptors
        g = torch.bmm(a, attn_maps.transpose(1, 2))  # N, c_m, c_n  (gathering)
        # Distribution and reconstruction, W_r (G softmax(V)) + b_r, associated as (W_r G) softmax(V) + b_r:
        # the 1x1 conv is a matrix product, so this is the same map with fewer multiply-adds when L > C,
        # and it avoids a conv on a reshaped bmm output, which torch.compile (inductor, dynamic shapes)
        # fails to compile ("cannot determine truth value of Relational").
        w_r = self.reconstruct.weight.flatten(1).to(g.dtype)  # C, c_m
        g = torch.matmul(w_r, g)  # N, C, c_n
        bias = self.reconstruct.bias
        if bias is None:
            out = torch.bmm(g, attn_vecs)
        else:
            out = torch.baddbmm(bias.to(g.dtype).view(1, -1, 1), g, attn_vecs)  # N, C, L
        out = out.reshape(n, self.channels, h, w)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, c_m={self.c_m}, c_n={self.c_n}, residual={self.residual}"
