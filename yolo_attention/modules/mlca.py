"""Mixed Local Channel Attention.

Wan, Lu, Shen, Xu, Lang, Zhu, Zhao, Li, Zhang. "Mixed local channel attention for object
detection", Engineering Applications of Artificial Intelligence 123 (2023) 106442,
DOI 10.1016/j.engappai.2023.106442 (no arXiv version).

For x in R^{N x C x H x W}, a local grid of s x s cells (paper: s = 5) and an ECA kernel k:

    L      = LAP_s(x)                          in R^{N x C x s x s}   local average pooling
    g      = GAP(L)                            in R^{N x C}           global: the mean of the cells
    a_g    = sigmoid(conv1d_k(g))                                     over the C channels (ECA)
    a_l    = sigmoid(reshape(conv1d'_k(seq(L))))                      seq(L) in R^{N x 1 x s*s*C}: the
                                                                      cells' channel vectors, cell after
                                                                      cell (row-major), one sequence
    A      = (1 - lambda) * UNAP_s(a_g) + lambda * a_l                lambda = 0.5 (``local_weight``),
                                                                      a_g broadcast to the s x s grid
    y      = x * UNAP_{H x W}(A)                                      back to H x W

with two different kernels conv1d (global) and conv1d' (local), both 1 -> 1 channel, no bias,
padding (k - 1) / 2, and k from ECA's rule k = t if t is odd else t + 1, t = int(|log2 C + b| / gamma),
gamma = 2, b = 1 (k = 5 at C = 256). The local convolution runs along the single sequence of
s*s*C values, so its window crosses from one cell's last channels into the next cell's first
(as in the paper's figure and the authors' code).

The grid at any H x W (what LAP and UNAP mean exactly): LAP_s is adaptive average pooling,
cell i of an axis of length n covering rows floor(i n / s) .. ceil((i + 1) n / s) - 1; for
n < s (or n not divisible by s) cells overlap and repeat rows, so a 1x1 map gives 25 copies
of its one value and g is the map's value. UNAP is the same adaptive average pooling from s
back to n (output row j averages cells floor(j s / n) .. ceil((j + 1) s / n) - 1: a nearest
upsampling when s divides n, an average of the one or two cells it overlaps otherwise). Both
are PyTorch's ``adaptive_avg_pool2d``, written as two small averaging matrices built from the
input size, so the module exports to ONNX with dynamic H x W (ONNX's adaptive pooling
supports only output sizes that divide the input) and compiles with dynamic shapes. g is the
mean of the s x s cells, as in the paper (GAP applied to the LAP output); it equals the global
mean when s divides H and W.

What differs from common copies, and why: copies of the authors' module call
``adaptive_avg_pool2d`` to 5x5 and back, which does not export to ONNX with dynamic H x W
("input size not accessible", legacy exporter, opset 17), and the authors' alternative ``MLCA_Changed_Option2``
upsamples with a fixed scale factor, right at one input size only. The arithmetic here is the
authors' (wandahangFY/MLCA), checked equal to their code.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import check_channels, check_input, check_odd, check_positive

__all__ = ["MLCA", "eca_kernel_size"]


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """ECA's adaptive kernel (arXiv:1910.03151): t = int(|log2(C) + b| / gamma), made odd upwards."""
    t = int(abs(math.log2(channels) + beta) / gamma)
    return t if t % 2 else t + 1


def adaptive_pool_matrix(n_in, n_out, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in) matrix of ``adaptive_avg_pool1d``: row i averages inputs floor(i n_in / n_out) ..
    ceil((i + 1) n_in / n_out) - 1. Sizes may be symbolic (export, compile): built with tensor ops."""
    i = torch.arange(n_out, device=like.device)
    j = torch.arange(n_in, device=like.device)
    start = torch.div(i * n_in, n_out, rounding_mode="floor")
    end = torch.div((i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    m = ((j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])).to(like.dtype)
    return m / m.sum(1, keepdim=True)


@register_attention(
    "mlca",
    kind="hybrid",
    paper="Mixed local channel attention for object detection",
    arxiv=None,  # Engineering Applications of Artificial Intelligence 2023, DOI 10.1016/j.engappai.2023.106442
    aliases=("mixed_local_channel_attention",),
    taps=(
        AttentionTap("global_gate", "channel", "global channel weights a_g"),
        AttentionTap("local_gate", "spatial", "local channel weights a_l", layout="grid"),
    ),
    _builtin=True,
)
class MLCA(nn.Module):
    """Mixed Local Channel Attention (DOI 10.1016/j.engappai.2023.106442): ECA on a 5x5 grid and globally, mixed.

    Args:
        channels: input (and output) channels C.
        local_size: s, cells per axis of the local grid (paper: 5).
        local_weight: lambda, the weight of the local attention in the mix (paper: 0.5).
        k_size: kernel of both 1D convolutions (odd); default ECA's rule from C, ``gamma`` and ``beta``.
        gamma, beta: ECA's kernel rule parameters (paper: 2 and 1).
    """

    def __init__(
        self,
        channels: int,
        local_size: int = 5,
        local_weight: float = 0.5,
        k_size: int | None = None,
        gamma: float = 2,
        beta: float = 1,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        self.local_size = check_positive(name, "local_size", local_size)
        if isinstance(local_weight, bool) or not isinstance(local_weight, (int, float)) or not 0 <= local_weight <= 1:
            raise ValueError(f"{name}: argument 'local_weight' must be a number in [0, 1], got {local_weight!r}")
        self.local_weight = float(local_weight)
        check_positive(name, "gamma", gamma, integer=False)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise ValueError(f"{name}: argument 'beta' must be a number, got {beta!r}")
        if k_size is None:
            k_size = eca_kernel_size(self.channels, gamma, beta)
        self.k_size = check_odd(name, "k_size", k_size)
        pad = (self.k_size - 1) // 2
        self.conv = nn.Conv1d(1, 1, self.k_size, padding=pad, bias=False)  # global (ECA)
        self.conv_local = nn.Conv1d(1, 1, self.k_size, padding=pad, bias=False)
        self.global_gate = nn.Sigmoid()
        self.local_gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        n, c, h, w = x.shape
        s = self.local_size
        pool_h, pool_w = adaptive_pool_matrix(h, s, x), adaptive_pool_matrix(w, s, x)
        cells = pool_h @ x @ pool_w.T  # N, C, s, s
        a_g = self.global_gate(self.conv(cells.mean((2, 3)).unsqueeze(1)).view(n, c, 1, 1))
        seq = cells.flatten(2).transpose(1, 2).reshape(n, 1, -1)  # cell-major: s*s blocks of C channels
        a_l = self.conv_local(seq).view(n, s * s, c).transpose(1, 2).reshape(n, c, s, s)
        a_l = self.local_gate(a_l)
        att = (1 - self.local_weight) * a_g + self.local_weight * a_l  # N, C, s, s
        unpool_h, unpool_w = adaptive_pool_matrix(s, h, x), adaptive_pool_matrix(s, w, x)
        return x * (unpool_h @ att @ unpool_w.T)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, local_size={self.local_size}, local_weight={self.local_weight}, "
            f"k_size={self.k_size}"
        )
