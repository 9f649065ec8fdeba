"""Multi-head self-attention with 2D relative position logits, as in BoTNet.

Srinivas, Lin, Parmar, Shlens, Abbeel, Vaswani. "Bottleneck Transformers for Visual
Recognition", CVPR 2021, arXiv:2101.11605.

For x in R^{N x C x H x W}, h heads of width d = C/h (paper: h = 4) and positions
i = (y, x) (queries), j = (y', x') (keys):

    q, k, v = W_q x, W_k x, W_v x                         (1x1 convs without bias, split into heads)
    l_ij    = s q_i . k_j + s q_i . (R^H[y' - y] + R^W[x' - x])      s = d^-1/2
    o_i     = sum_j softmax_j(l_ij) v_j                   (per head; heads concatenated)
    y       = x + o                                       (``residual=True``; the bare layer: o)

R^H, R^W hold one d-vector per relative offset along each axis, shared by the heads and
initialised N(0, d^-1), as in the authors' TensorFlow reference code (a gist; there is no
official PyTorch code), which also scales q before both the content and the position
logits. BoTNet places the layer inside a residual bottleneck block; used on its own after a
YOLO layer the module keeps that residual (``residual=False`` returns o alone).

Any H x W. The authors' code, and the copies of it, hold tables for one fixed map (the gist
hard-codes 32 x 32: 2*32 - 1 offsets per axis) and fail at any other size. Here the tables
hold the offsets -D..D (``max_rel_pos`` D, default 31: the gist's table) and a larger offset
uses the embedding of +-D (clipping, as in Shaw et al., arXiv:1803.02155). So for maps up to
(D+1) x (D+1) every offset has its own embedding and the module computes exactly the paper's
function, at any size and aspect ratio (rectangular validation batches included), and beyond
that distant positions share one position embedding. Resizing the tables by interpolation
(the other common fix) would change what an offset of k pixels means with the map size, so
the same object at the same distance would get different position logits at a different
input size; clipping keeps offsets in pixels.

Cost: the position logits are never formed as an (HW x HW) matrix. s q_i . R^H[y' - y]
depends only on (i, y') and s q_i . R^W[x' - x] only on (i, x'): an N x h x HW x (H + W)
tensor. Appending these H + W values to q_i and the one-hot row and column indicators of
j to k_j makes their dot product l_ij, so one ``scaled_dot_product_attention`` call (scale
1) computes the attention without keeping the attention matrix where a fused kernel exists.
The fused (flash) kernels want q, k and v of one width E = d + H + W (padded to a multiple of
8), so v gets zero columns that are sliced off the output: the attention then costs about
E / d times the multiply-adds of content-only attention (at a YOLO P3 map of 80 x 80 with
d = 16: 11x), but its memory stays linear in HW. An additive (HW x HW) bias, the usual form,
costs fewer multiply-adds but HW^2 memory per head and image (at P3, 4 heads, batch 16:
10 GB in float32).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register_attention
from .helpers import check_channels, check_input, check_positive

__all__ = ["MHSA"]


def relative_index(size, max_rel_pos: int, device) -> torch.Tensor:
    """(size, size) table index of the offset key - query, clipped to [-D, D] and shifted to [0, 2D]."""
    pos = torch.arange(size, device=device)
    return (pos[None, :] - pos[:, None]).clamp(-max_rel_pos, max_rel_pos) + max_rel_pos


def _one_hot_positions(h, w, dtype, device) -> torch.Tensor:
    """(HW, H + W): for every position (y, x) in raster order, the one-hot rows of y and x."""
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    row_hot = (rows[:, None, None] == rows[None, None, :]).expand(h, w, h)
    col_hot = (cols[None, :, None] == cols[None, None, :]).expand(h, w, w)
    return torch.cat([row_hot, col_hot], dim=-1).reshape(h * w, -1).to(dtype)


@register_attention(
    "mhsa",
    kind="global-context",
    paper="Bottleneck Transformers for Visual Recognition",
    arxiv="2101.11605",
    aliases=("botnet", "botnet_mhsa", "bot_mhsa", "relpos_mhsa"),
    _builtin=True,
)
class MHSA(nn.Module):
    """BoTNet's multi-head self-attention with 2D relative position logits, any H x W (arXiv:2101.11605).

    Args:
        channels: input (and output) channels C; must be divisible by ``num_heads``.
        num_heads: attention heads h (paper: 4).
        max_rel_pos: largest offset D with its own embedding per axis (default 31, the authors'
            32 x 32 table); larger offsets share the embedding of +-D.
        residual: return x + MHSA(x) (default) or the bare layer's output.
    """

    def __init__(self, channels: int, num_heads: int = 4, max_rel_pos: int = 31, residual: bool = True):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_positive(name, "num_heads", num_heads)
        if channels % num_heads:
            raise ValueError(f"{name}: channels={channels} must be divisible by argument 'num_heads' (got {num_heads})")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.max_rel_pos = check_positive(name, "max_rel_pos", max_rel_pos)
        self.residual = bool(residual)
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        std = self.head_dim**-0.5
        self.rel_h = nn.Parameter(torch.randn(2 * max_rel_pos + 1, self.head_dim) * std)
        self.rel_w = nn.Parameter(torch.randn(2 * max_rel_pos + 1, self.head_dim) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        n, _, h, w = x.shape
        heads, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(n, 3, heads, d, h * w).transpose(-1, -2).unbind(1)  # N, heads, HW, d
        q = q * self.scale
        q_aug, k_aug = self._append_positions(q, k, h, w)
        # fused kernels (flash on CPU and CUDA) want v as wide as q and k: zero columns, sliced off after
        # (not when tracing for export, where the width would be frozen for the traced size)
        v = v if torch.jit.is_tracing() else F.pad(v, (0, q_aug.shape[-1] - d))
        o = F.scaled_dot_product_attention(q_aug, k_aug, v, scale=1.0)[..., :d]  # N, heads, HW, d
        o = o.transpose(-1, -2).reshape(n, self.channels, h, w)
        return x + o if self.residual else o

    def _append_positions(self, q: torch.Tensor, k: torch.Tensor, h, w):
        """q_i | q_i.R^H[y'-y] for every key row y' | q_i.R^W[x'-x] for every key column x', and
        k_j | one-hot(y'_j) | one-hot(x'_j): their dot product is q.k plus the two position logits."""
        n, heads, _, d = q.shape
        emb_h = self.rel_h[relative_index(h, self.max_rel_pos, q.device)].to(q.dtype)  # H (query), H (key), d
        emb_w = self.rel_w[relative_index(w, self.max_rel_pos, q.device)].to(q.dtype)  # W, W, d
        q5 = q.reshape(n, heads, h, w, d)
        pos_h = torch.einsum("nayxd,yud->nayxu", q5, emb_h).reshape(n, heads, h * w, h)
        pos_w = torch.einsum("nayxd,xvd->nayxv", q5, emb_w).reshape(n, heads, h * w, w)
        hot = _one_hot_positions(h, w, k.dtype, k.device).expand(n, heads, -1, -1)
        # zero columns up to a multiple of 8 (as fused attention kernels want): dot products unchanged.
        # Not when tracing for export, where the padding would be frozen for the traced size.
        pad = 0 if torch.jit.is_tracing() else (-(d + h + w)) % 8
        q_aug = F.pad(torch.cat([q, pos_h, pos_w], dim=-1), (0, pad))  # contiguous (N, heads, HW, E)
        k_aug = F.pad(torch.cat([k, hot], dim=-1), (0, pad))
        return q_aug, k_aug

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_heads={self.num_heads}, max_rel_pos={self.max_rel_pos}, "
            f"residual={self.residual}"
        )
