"""Bi-level routing attention and the BiFormer block.

Zhu, Wang, Ke, Li, Lau. "BiFormer: Vision Transformer with Bi-Level Routing Attention",
CVPR 2023, arXiv:2303.08810.

For x in R^{N x C x H x W}, S x S regions (``n_win``), k routed regions (``topk``) and h heads:

    q, k, v = W_qkv x                                   (one 1x1 conv, C -> 3C)
    Region routing (no gradient, as in the paper's operator):
        q_r, k_r = region means of q, k                  in R^{N x S^2 x C}
        A_r = q_r k_r^T,  I_r = topk(A_r, k)             (k region indices per query region)
    Token attention, per head, for a query token in region i:
        o = softmax(q k_g^T * s) v_g                      k_g, v_g: tokens of the k regions I_r[i]
    y = W_o (o + LCE(v))                                 LCE: depthwise conv on v ("lepe")

The logit scale is s = C^-0.5 with C the *full* channel count, as the authors' operator
does (not the per-head dimension); pass ``qk_scale`` to change it.

Any H x W (the official operator asserts divisibility or pads the input so that padded
tokens take part in routing and attention). Here the region size is ceil(H / S) x
ceil(W / S), the q/k/v maps are zero-padded at the bottom/right *after* the projection by
less than one region, and padded tokens are excluded from the region means (the sum is
divided by the number of real tokens) and masked out of attention, so the result for real
tokens does not depend on padding. As a consequence no region is ever empty, and a side
that S does not divide well gets fewer, slightly larger regions (H=15, S=7: 5 regions of
3 rows); for sizes divisible by S the grid is exactly the official S x S. Maps smaller
than S along a side use one region per row/column there, and ``topk`` is clamped to the
number of regions.

Fast path: K/V of the routed regions are gathered and each query region attends with
``torch.nn.functional.scaled_dot_product_attention`` (fused kernels that do not keep the
attention matrix for backward). The attention mask is only built when there is padding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register_attention
from .helpers import LayerNorm2d, check_channels, check_input, check_positive, drop_path

__all__ = ["BiLevelRoutingAttention", "BiFormerBlock", "region_grid"]


def _ceil_div(a, b):
    return (a + b - 1) // b


def _clamp_max(a, b: int):
    # works for Python ints (eager) and for traced 0-dim size tensors (ONNX export)
    return a.clamp(max=b) if isinstance(a, torch.Tensor) else min(a, b)


def region_grid(size, n_win: int):
    """Regions along one side of length ``size``: (number of regions, region length, padded length)."""
    length = _ceil_div(size, _clamp_max(size, n_win))
    count = _ceil_div(size, length)
    return count, length, count * length


@register_attention(
    "bra",
    kind="sparse-attention",
    paper="BiFormer: Vision Transformer with Bi-Level Routing Attention",
    arxiv="2303.08810",
    aliases=("bi_level_routing_attention", "bilevel_routing_attention"),
    _builtin=True,
)
class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention (BRA) on NCHW maps (arXiv:2303.08810).

    Args:
        channels: input (and output) channels C; must be divisible by ``num_heads``.
        num_heads: attention heads (paper: 8).
        n_win: regions per side S (paper: 7).
        topk: routed regions per query region (paper: 4); clamped to the number of regions.
        side_dwconv: kernel of the depthwise "lepe" conv on V (official operator: 3; 0 disables).
        qk_scale: logit scale; default C^-0.5 as in the official operator.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        n_win: int = 7,
        topk: int = 4,
        side_dwconv: int = 3,
        qk_scale: float | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_positive(name, "num_heads", num_heads)
        check_positive(name, "n_win", n_win)
        check_positive(name, "topk", topk)
        if channels % num_heads:
            raise ValueError(
                f"{name}: argument 'channels' ({channels}) must be divisible by 'num_heads' ({num_heads}); "
                f"choose num_heads from {[h for h in range(1, min(channels, 64) + 1) if channels % h == 0]}"
            )
        if isinstance(side_dwconv, bool) or not isinstance(side_dwconv, int) or side_dwconv < 0 or (
            side_dwconv and side_dwconv % 2 == 0
        ):
            raise ValueError(f"{name}: argument 'side_dwconv' must be 0 or an odd positive int, got {side_dwconv!r}")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = float(qk_scale) if qk_scale is not None else channels**-0.5
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.lepe = (
            nn.Conv2d(channels, channels, side_dwconv, padding=side_dwconv // 2, groups=channels)
            if side_dwconv
            else None
        )
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        n, c, h, w = x.shape
        nh, rh, hp = region_grid(h, self.n_win)
        nw, rw, wp = region_grid(w, self.n_win)
        tracing = torch.jit.is_tracing()
        padded = tracing or hp != h or wp != w  # a trace must keep the general (padded) path

        qkv = self.qkv(x)
        v_map = qkv[:, 2 * c :]
        if padded:
            qkv = F.pad(qkv, (0, wp - w, 0, hp - h))
        out = self._attend(qkv, n, c, nh, rh, nw, rw, h, w, padded)
        out = out[:, :, :h, :w] if padded else out
        if self.lepe is not None:
            out = out + self.lepe(v_map)
        return self.proj(out)

    def _attend(self, qkv, n, c, nh, rh, nw, rw, h, w, padded):
        regions, tokens = nh * nw, rh * rw
        heads, hd = self.num_heads, self.head_dim
        # (N, 3C, nh*rh, nw*rw) -> (N, R, T, 3C): one row of T tokens per region
        t = qkv.reshape(n, 3 * c, nh, rh, nw, rw).permute(0, 2, 4, 3, 5, 1).reshape(n, regions, tokens, 3 * c)
        q, kv = t[..., :c], t[..., c:]

        if padded:
            valid = self._valid_tokens(h, w, nh, rh, nw, rw, qkv.device)  # (R, T) bool
            count = valid.sum(-1, keepdim=True).to(qkv.dtype)  # every region holds >= 1 real token
            q_r = q.detach().sum(2) / count  # padded tokens are zeros: the sum covers real ones only
            k_r = kv[..., :c].detach().sum(2) / count
        else:
            q_r = q.detach().mean(2)
            k_r = kv[..., :c].detach().mean(2)
        affinity = q_r @ k_r.transpose(1, 2)  # (N, R, R)
        k_top = _clamp_max(regions, self.topk)
        idx = torch.topk(affinity, k_top, dim=-1).indices  # (N, R, k)

        batch = torch.arange(n, device=qkv.device).view(n, 1, 1)
        kv_g = kv[batch, idx]  # (N, R, k, T, 2C): tokens of the routed regions
        kv_g = kv_g.reshape(n * regions, k_top * tokens, 2, heads, hd).permute(2, 0, 3, 1, 4)
        k_g, v_g = kv_g[0], kv_g[1]  # (N*R, heads, k*T, hd)
        q = q.reshape(n * regions, tokens, heads, hd).transpose(1, 2)  # (N*R, heads, T, hd)

        mask = None
        if padded:
            mask = valid[idx].reshape(n * regions, 1, 1, k_top * tokens)  # padded keys never attended
        o = F.scaled_dot_product_attention(q, k_g, v_g, attn_mask=mask, scale=self.scale)
        # (N*R, heads, T, hd) -> (N, C, nh*rh, nw*rw)
        o = o.reshape(n, nh, nw, heads, rh, rw, hd).permute(0, 3, 6, 1, 4, 2, 5)
        return o.reshape(n, c, nh * rh, nw * rw)

    @staticmethod
    def _valid_tokens(h, w, nh, rh, nw, rw, device):
        vh = (torch.arange(nh * rh, device=device) < h).view(nh, 1, rh, 1)
        vw = (torch.arange(nw * rw, device=device) < w).view(1, nw, 1, rw)
        return (vh & vw).reshape(nh * nw, rh * rw)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}"


class _ConvMlp(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@register_attention(
    "biformer",
    kind="sparse-attention",
    paper="BiFormer: Vision Transformer with Bi-Level Routing Attention",
    arxiv="2303.08810",
    aliases=("biformer_block",),
    _builtin=True,
)
class BiFormerBlock(nn.Module):
    """The BiFormer block around BRA (arXiv:2303.08810), on NCHW maps.

        x = x + DWConv3x3(x)                      (position encoding)
        x = x + DropPath(BRA(LN(x)))
        x = x + DropPath(MLP(LN(x)))              (1x1 conv C -> r*C, GELU, 1x1 conv back)

    Args:
        channels: input (and output) channels C; must be divisible by ``num_heads``.
        num_heads, n_win, topk, qk_scale: as in :class:`BiLevelRoutingAttention`.
        side_dwconv: lepe kernel (the BiFormer models use 5).
        mlp_ratio: MLP expansion r (the BiFormer models use 3).
        drop_path: stochastic depth rate.
        layer_scale: initial value of per-channel scales on both residual branches (None: off,
            as in the BiFormer models; a small value such as 1e-6 makes the block start near identity).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        n_win: int = 7,
        topk: int = 4,
        side_dwconv: int = 5,
        mlp_ratio: float = 3.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        qk_scale: float | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_positive(name, "mlp_ratio", mlp_ratio, integer=False)
        if not 0 <= drop_path < 1:
            raise ValueError(f"{name}: argument 'drop_path' must be in [0, 1), got {drop_path!r}")
        self.pos_embed = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm1 = LayerNorm2d(channels, eps=1e-6)
        self.attn = BiLevelRoutingAttention(channels, num_heads, n_win, topk, side_dwconv, qk_scale)
        self.norm2 = LayerNorm2d(channels, eps=1e-6)
        self.mlp = _ConvMlp(channels, max(1, int(round(channels * mlp_ratio))))
        self.drop_path = drop_path
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.full((1, channels, 1, 1), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((1, channels, 1, 1), float(layer_scale)))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        x = x + self.pos_embed(x)
        a = self.attn(self.norm1(x))
        x = x + drop_path(a if self.gamma1 is None else self.gamma1 * a, self.drop_path, self.training)
        m = self.mlp(self.norm2(x))
        return x + drop_path(m if self.gamma2 is None else self.gamma2 * m, self.drop_path, self.training)
