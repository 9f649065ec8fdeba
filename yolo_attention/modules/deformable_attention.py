"""Deformable attention, as in DAT.

Xia, Pan, Song, Li, Huang. "Vision Transformer with Deformable Attention", CVPR 2022,
arXiv:2201.00520.

For x in R^{N x C x H x W}, M heads of width d, G offset groups, downsampling factor r:

    q       = W_q x                                             (1x1 conv)
    p       = reference points: the centres of an H_G x W_G grid, H_G = ceil(H/r), W_G = ceil(W/r),
              in normalised coordinates (p_y = (i + 1/2) / H_G * 2 - 1, likewise p_x)
    dp      = s * tanh(theta_offset(q_g)) * (1/H_G, 1/W_G)       per group g (shared network):
              theta_offset = depthwise k x k conv, stride r -> LayerNorm -> GELU -> 1x1 conv to 2
              (no bias); s = offset range factor
    x~      = phi(x_g; p + dp)                                  bilinear sampling (grid_sample, zeros outside)
    k~, v~  = W_k x~, W_v x~
    z^(m)   = softmax(q^(m) k~^(m)T / sqrt(d) + phi(B^(m); R)) v~^(m)     (Eq. 9)
    y       = W_o concat_m z^(m);   returned as x + y (``residual=True``) or y

R is the displacement of each sampled key from each query, both in normalised coordinates,
halved to [-1, 1]; phi(B; R) samples the relative position bias table B bilinearly there
(the "deformable relative position bias"). grid_sample uses ``align_corners=True`` and the
reference points are the grid-cell centres, exactly as the authors' CVPR 2022 code
(LeapLabTHU/DAT, models/dat_blocks.py, DAttentionBaseline at commit 42b489e; the repository's
main branch has since become DAT++, arXiv:2309.01430).

Any H x W (the authors' code holds position tables for one fixed size):

* The grid is ceil(H / r) x ceil(W / r) (a strided conv with padding k // 2), so no size has to
  be divisible by r, and a 1 x 1 map has one reference point.
* B is one (2S - 1) x (2S - 1) table per head (``rel_pos_size`` S). The authors size it
  (2H - 1) x (2W - 1) for the one map size they train at, but they only ever sample it at
  normalised displacements: it is a bilinear function on [-1, 1]^2. One table therefore
  serves every size and aspect ratio; for an S x S map it is exactly the authors' table.

Defaults. Heads of width 32 and 4 heads per offset group, as DAT-T (12 heads, 3 groups at
C = 384): M = the largest divisor of C not above C / 32 (at least 1), G = the largest divisor
of M not above M / 4. s = 2 as DAT-T. r = 4 and k = 7: DAT-T uses r = 1 at its 14 x 14 and
7 x 7 maps (196 and 49 keys); a YOLO P3 map is 80 x 80 at 640, where r = 1 would be full global
attention with an (HW x HW) position bias per head (6400^2 x 8 heads x 16 images x 4 bytes =
21 GB, and as much again for its sampling grid), while
r = 4 gives 400 keys at P3, 100 at P4 and 25 at P5 (the authors pair r = 4 with k = 7 in DAT++).
S = 14, the size of DAT-T's stage-3 tables. ``stride=1, k_size=5`` is DAT-T's stage-3 setting.

Cost: keys and values are H_G W_G samples, and the attention runs through
``scaled_dot_product_attention`` with the position bias as its additive mask, so the
(HW x H_G W_G) bias per head (and its sampling grid) is the largest tensor; offsets, sampling
and the bias are computed in float32 for float16/bfloat16 inputs.

What differs from the authors' code, and why: W_k has no bias (q . (k + b) adds q . b to
every logit of a query, which the softmax cancels); the tables serve any size (above); the
module may add the residual of the transformer block around it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register_attention
from .helpers import (
    LayerNorm2d,
    check_channels,
    check_input,
    check_odd,
    check_positive,
    largest_divisor,
)

__all__ = ["DeformableAttention"]


def cell_centres(size, dtype, device) -> torch.Tensor:
    """Centres of ``size`` equal cells of [-1, 1]: (i + 1/2) / size * 2 - 1 (sizes may be traced tensors)."""
    return (torch.arange(size, dtype=dtype, device=device) + 0.5) / size * 2 - 1


def _check_divides(module: str, arg: str, value, total: int, what: str) -> int:
    check_positive(module, arg, value)
    if total % value:
        raise ValueError(f"{module}: {what}={total} must be divisible by argument '{arg}' (got {value})")
    return value


@register_attention(
    "dat",
    kind="sparse-attention",
    paper="Vision Transformer with Deformable Attention",
    arxiv="2201.00520",
    aliases=("deformable_attention", "dattention", "deformable_attn"),
    _builtin=True,
)
class DeformableAttention(nn.Module):
    """DAT's deformable multi-head attention, any H x W (arXiv:2201.00520).

    Args:
        channels: input (and output) channels C.
        num_heads: heads M (default: width-32 heads, as DAT); must divide C.
        offset_groups: groups G sharing one set of offsets (default: 4 heads per group); must divide M.
        stride: downsampling factor r of the reference grid (default 4; DAT-T: 1 at 14 x 14).
        k_size: odd kernel of the offset network's depthwise conv (default 7).
        offset_range_factor: s, the largest offset in units of half a grid cell (DAT-T: 2).
        rel_pos_size: S, the position bias table of each head has (2S - 1) x (2S - 1) entries.
        residual: return x + y (default) or the bare layer's output y.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int | None = None,
        offset_groups: int | None = None,
        stride: int = 4,
        k_size: int = 7,
        offset_range_factor: float = 2.0,
        rel_pos_size: int = 14,
        residual: bool = True,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        if num_heads is None:
            num_heads = largest_divisor(channels, max(1, channels // 32))
        self.num_heads = _check_divides(name, "num_heads", num_heads, channels, "channels")
        if offset_groups is None:
            offset_groups = largest_divisor(num_heads, max(1, num_heads // 4))
        self.offset_groups = _check_divides(name, "offset_groups", offset_groups, num_heads, "num_heads")
        self.stride = check_positive(name, "stride", stride)
        self.k_size = check_odd(name, "k_size", k_size)
        self.offset_range_factor = float(check_positive(name, "offset_range_factor", offset_range_factor, integer=False))
        self.rel_pos_size = check_positive(name, "rel_pos_size", rel_pos_size)
        self.residual = bool(residual)
        self.head_dim = channels // num_heads
        group_channels = channels // offset_groups

        self.proj_q = nn.Conv2d(channels, channels, 1)
        self.proj_k = nn.Conv2d(channels, channels, 1, bias=False)  # a bias would cancel in the softmax
        self.proj_v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.conv_offset = nn.Sequential(
            nn.Conv2d(group_channels, group_channels, k_size, stride, k_size // 2, groups=group_channels),
            LayerNorm2d(group_channels),
            nn.GELU(),
            nn.Conv2d(group_channels, 2, 1, bias=False),  # no bias: no shift shared by every point (paper)
        )
        table = 2 * rel_pos_size - 1
        self.rpe_table = nn.Parameter(torch.zeros(num_heads, table, table))
        nn.init.trunc_normal_(self.rpe_table, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        n, c, h, w = x.shape
        groups, heads, d = self.offset_groups, self.num_heads, self.head_dim
        pos_dtype = torch.promote_types(x.dtype, torch.float32)  # positions and bias in >= float32
        q = self.proj_q(x)
        pos_y, pos_x = self._sample_points(q.reshape(n * groups, c // groups, h, w), pos_dtype)
        grid = torch.stack([pos_x, pos_y], dim=-1)  # N*G, H_G, W_G, 2 as (x, y) for grid_sample
        sampled = F.grid_sample(
            x.to(pos_dtype).reshape(n * groups, c // groups, h, w), grid, mode="bilinear", align_corners=True
        )
        keys = pos_y.shape[1] * pos_y.shape[2]
        sampled = sampled.to(x.dtype).reshape(n, c, keys, 1)
        # (N, M, L, d) with unit stride along d, as fused SDPA kernels require
        k = self.proj_k(sampled).reshape(n, heads, d, keys).transpose(-1, -2).contiguous()  # N, M, Ns, d
        v = self.proj_v(sampled).reshape(n, heads, d, keys).transpose(-1, -2).contiguous()
        q = q.reshape(n, heads, d, h * w).transpose(-1, -2).contiguous()  # N, M, HW, d
        bias = self._position_bias(pos_y, pos_x, n, h, w).to(q.dtype)  # N, M, HW, Ns
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=d**-0.5)
        y = self.proj_out(o.transpose(-1, -2).reshape(n, c, h, w))
        return x + y if self.residual else y

    def _sample_points(self, q_groups: torch.Tensor, dtype):
        """Reference points (grid-cell centres) plus bounded offsets: two (N*G, H_G, W_G) maps, y and x."""
        offset = self.conv_offset(q_groups).to(dtype).tanh()  # N*G, 2, H_G, W_G
        hg, wg = offset.shape[2], offset.shape[3]
        s = self.offset_range_factor
        pos_y = cell_centres(hg, dtype, offset.device)[:, None] + offset[:, 0] * (s / hg)
        pos_x = cell_centres(wg, dtype, offset.device)[None, :] + offset[:, 1] * (s / wg)
        return pos_y, pos_x

    def _position_bias(self, pos_y, pos_x, n, h, w) -> torch.Tensor:
        """phi(B; R): each head's table sampled at the halved displacement query - key (normalised)."""
        ng = pos_y.shape[0]
        dy = (cell_centres(h, pos_y.dtype, pos_y.device)[None, :, None, None] - pos_y.reshape(ng, 1, 1, -1)) * 0.5
        dx = (cell_centres(w, pos_x.dtype, pos_x.device)[None, None, :, None] - pos_x.reshape(ng, 1, 1, -1)) * 0.5
        grid = torch.stack(torch.broadcast_tensors(dx, dy), dim=-1).reshape(ng, h * w, -1, 2)  # N*G, HW, Ns, 2
        t = self.rpe_table.shape[-1]
        table = self.rpe_table.to(pos_y.dtype).reshape(1, self.offset_groups, -1, t, t)
        table = table.expand(n, -1, -1, -1, -1).reshape(ng, -1, t, t)  # each image's groups: N*G, M/G, T, T
        bias = F.grid_sample(table, grid, mode="bilinear", align_corners=True)  # N*G, M/G, HW, Ns
        return bias.reshape(n, self.num_heads, h * w, -1)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_heads={self.num_heads}, offset_groups={self.offset_groups}, "
            f"stride={self.stride}, k_size={self.k_size}, offset_range_factor={self.offset_range_factor}, "
            f"rel_pos_size={self.rel_pos_size}, residual={self.residual}"
        )
