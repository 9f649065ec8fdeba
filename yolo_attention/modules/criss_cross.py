"""Criss-cross attention (CCNet).

Huang, Wang, Huang, Huang, Wei, Liu. "CCNet: Criss-Cross Attention for Semantic
Segmentation", ICCV 2019 / TPAMI 2020, arXiv:1811.11721.

For x in R^{N x C x H x W}, Q = W_q x and K = W_k x with C' = C/8 channels, V = W_v x with C:
each position u = (i, j) attends to its criss-cross path Omega_u, the H + W - 1 positions in
its column and its row (u itself counted once):

    d_{u,p} = Q_u . K_p                     for p in Omega_u            (no logit scaling)
    A_u     = softmax over the H + W - 1 values d_{u,p}                 (one joint softmax)
    H'_u    = gamma * sum_{p in Omega_u} A_{u,p} V_p + x_u              (gamma: scalar, zero-initialised)

Recurrent criss-cross attention (RCCA) applies the module R = 2 times with shared weights, so
that every position receives information from every other one (Sec. 3.3); ``recurrence``
sets R. gamma = 0 at initialisation makes the module start as the identity (the authors'
code; the paper adds the aggregated features to the input).

The attention tensor is N x H x W x (H + W): a column part and a row part, never an
(HW x HW) matrix. The joint softmax runs in float32 for float16/bfloat16 inputs.

Counting u once: the column part contains u and so does the row part. The authors' CUDA
operator skips u in the column; their pure-PyTorch version (the one widely copied) adds -inf
on the diagonal of the column energies, which is the same thing. Both are right, and so is
this module, which masks the column diagonal; a copy that drops the mask counts u twice
(``test_criss_cross_counts_self_once`` shows the difference).

What differs from common copies, and why:

* The widely copied pure-PyTorch module builds its -inf mask with ``.cuda()`` (it fails on CPU)
  and runs one pass; the recurrence lives in the segmentation head. Here the mask follows the
  input's device and the module applies the R passes itself.
* The key projection has no bias: Q_u . (K_p + b) adds Q_u . b to all H + W - 1 logits of u,
  which the joint softmax cancels (the bias would never train).
* The query/key width is ``make_divisible(C / 8, rd_divisor)``, never below 8 by default
  (the authors' C // 8 is 0 for C < 8); for C >= 64 divisible by 8 both agree.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import register_attention
from .helpers import check_channels, check_input, check_positive, resolve_rd_channels, softmax_fp32

__all__ = ["CrissCrossAttention"]


def criss_cross_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sum over the criss-cross path of softmax(q . k) v, for NCHW q, k (C') and v (C)."""
    h = q.shape[2]
    col = torch.einsum("nchw,ncgw->nhwg", q, k)  # logits of the keys in u's column: N, H, W, H
    row = torch.einsum("nchw,nchv->nhwv", q, k)  # and in u's row: N, H, W, W
    rows = torch.arange(h, device=q.device)
    self_in_col = (rows[:, None] == rows[None, :])[:, None, :]  # (H, 1, H): key row g == query row i
    col = col.masked_fill(self_in_col, float("-inf"))  # u is in both parts: count it in the row only
    attn = softmax_fp32(torch.cat([col, row], dim=-1), dim=-1)  # one softmax over the H + W - 1 positions
    out = torch.einsum("nhwg,ncgw->nchw", attn[..., :h], v)
    return out + torch.einsum("nhwv,nchv->nchw", attn[..., h:], v)


@register_attention(
    "crisscross",
    kind="global-context",
    paper="CCNet: Criss-Cross Attention for Semantic Segmentation",
    arxiv="1811.11721",
    aliases=("criss_cross", "cca", "ccnet", "rcca", "criss_cross_attention"),
    _builtin=True,
)
class CrissCrossAttention(nn.Module):
    """Recurrent criss-cross attention with shared weights (arXiv:1811.11721).

    Args:
        channels: input (and output) channels C.
        rd_ratio: width ratio C'/C of queries and keys (paper: 1/8).
        rd_divisor: the query/key width is rounded to a multiple of this, never below it.
        rd_channels: explicit query/key width C' (overrides ``rd_ratio``/``rd_divisor``).
        recurrence: number R of criss-cross passes with the same weights (paper: 2).
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 8,
        rd_divisor: int = 8,
        rd_channels: int | None = None,
        recurrence: int = 2,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        self.rd_channels = rd_channels = resolve_rd_channels(name, channels, rd_ratio, rd_divisor, rd_channels)
        self.recurrence = check_positive(name, "recurrence", recurrence)
        self.query = nn.Conv2d(channels, rd_channels, 1)
        self.key = nn.Conv2d(channels, rd_channels, 1, bias=False)  # a bias would cancel in the softmax
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.starts_as_identity = True  # read by identity_start: no gate when inserted into a trained detector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        for _ in range(self.recurrence):  # shared weights: the same module R times
            x = x + self.gamma * criss_cross_attend(self.query(x), self.key(x), self.value(x))
        return x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}, recurrence={self.recurrence}"
