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
ceil(W / S), the q/k/v maps are zero-padded at the bottom/right by less than one region, and
padded tokens are excluded from the region means (the sum is divided by the number of real
tokens) and masked out of attention, so the result for real tokens does not depend on
padding. As a consequence no region is ever empty, and a side that S does not divide well
gets fewer, slightly larger regions (H=15, S=7: 5 regions of 3 rows); for sizes divisible by
S the grid is exactly the official S x S. Maps smaller than S along a side use one region
per row/column there, and ``topk`` is clamped to the number of regions
(:class:`yolo_attention.ops.RegionGeometry`).

Layout: x is zero-padded and rearranged once into a region layout (N, R, T, C) and the 1x1
q|k|v conv runs on it (as a channels-last map), so no 3C tensor is ever permuted. (Padded
tokens then hold q = k = v = bias instead of zeros; that changes nothing, because they are
excluded from the means and masked out of attention, and lepe runs on the cropped v.)
Routing (:class:`RegionRouter`) uses region means of x over real tokens projected by W_q, W_k
(the mean of W x + b is W mean(x) + b: these are the region means of q and k, at a third of
the cost). The token attention is :func:`yolo_attention.ops.routed_attention` (SDPA on
gathered regions, or Triton kernels that read the routed regions in place).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import RegionGeometry, check_backend, region_grid, routed_attention
from ..registry import AttentionTap, register_attention
from .helpers import LayerNorm2d, check_channels, check_input, check_positive, drop_path

__all__ = ["BiLevelRoutingAttention", "BiFormerBlock", "RegionRouter", "RegionAttention", "region_grid"]


class RegionRouter(nn.Module):
    """Region-level routing of BRA: region means -> affinity -> top-k, without parameters.

    ``forward(x, valid, q_weight, q_bias, k_weight, k_bias, topk)`` returns (N, R, k) int64: the
    indices (row-major over the region grid) of the k regions each query region attends to.
    A forward hook on this submodule therefore reads the routing of every call.

    Args of forward:
        x: (N, R, T, C) the input in region layout, padded tokens zero.
        valid: (R, T) bool, the real tokens; None when nothing is padded.
        q_weight, q_bias, k_weight, k_bias: (C, C) and (C,), the q and k rows of the module's
            q|k|v projection (they stay there; passing them keeps the router parameterless and
            state dicts unchanged).
        topk: regions per query region (at most R).

    The indices carry no gradient; :class:`BiLevelRoutingAttention` passes detached tensors, so
    that no autograd graph is built for routing (as in the paper's operator).
    """

    def forward(self, x, valid, q_weight, q_bias, k_weight, k_bias, topk) -> torch.Tensor:
        # mean of q = W_q x + b_q over a region is W_q (mean of x) + b_q: average C channels, not 2C
        if valid is None:
            x_mean = x.mean(2)
        else:  # padded tokens of x are zeros: divide the sum by the number of real tokens
            x_mean = x.sum(2) / valid.sum(-1, keepdim=True).to(x.dtype)
        q_r = F.linear(x_mean, q_weight, q_bias)
        k_r = F.linear(x_mean, k_weight, k_bias)
        affinity = q_r @ k_r.transpose(1, 2)  # (N, R, R)
        return torch.topk(affinity, topk, dim=-1).indices


class RegionAttention(NamedTuple):
    """Token attention of one query region (:meth:`BiLevelRoutingAttention.region_attention`).

    ``probs[h, i, j]`` is the weight that query token i of the region (row-major inside it)
    gives key j in head h; key j is token ``j % T`` of region ``routes[j // T]``. Padded keys
    get weight 0; rows of padded query tokens (``geometry.valid_tokens()[region]`` False) are
    computed but discarded by the forward pass.
    """

    probs: torch.Tensor  # (heads, T, k*T)
    routes: torch.Tensor  # (k,) the routed regions, in routing order
    geometry: RegionGeometry


def _check_bra_args(name: str, channels, num_heads, n_win, topk, side_dwconv) -> int:
    """Validate BRA's arguments; errors name ``name`` (the module the user built)."""
    check_channels(name, channels)
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
    return channels


@register_attention(
    "bra",
    kind="sparse-attention",
    paper="BiFormer: Vision Transformer with Bi-Level Routing Attention",
    arxiv="2303.08810",
    aliases=("bi_level_routing_attention", "bilevel_routing_attention"),
    taps=(AttentionTap("router", "routing", "routed regions"),),
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

    Two attributes (not constructor arguments; all settings compute the same function and
    gradients) select the implementation of the token attention (the ``backend`` and
    ``recompute`` of :func:`yolo_attention.ops.routed_attention`):

    * ``kernel``: ``"auto"`` (default) uses the Triton kernels only where a recorded GPU check
      passed on a matching configuration or ``YOLO_ATTENTION_TRITON=1`` allows them
      (:mod:`yolo_attention.ops.trust`), and ``scaled_dot_product_attention`` on gathered K/V
      otherwise; ``"sdpa"`` always uses SDPA; ``"triton"`` asks for the Triton kernels on CUDA
      tensors (no K/V copies at all; a configuration that fails to compile falls back to SDPA
      with a warning). Tracing (ONNX export) and ``torch.compile`` always use SDPA.
    * ``recompute`` (SDPA backend, training): ``True`` keeps only q, k, v and recomputes each
      chunk of the attention in the backward pass (least memory), ``False`` keeps the gathered
      K/V for one fused backward call (fastest on CPU), ``None`` (default): ``True`` on CUDA.

    The routing of each call is the output of the submodule ``router`` (:class:`RegionRouter`,
    declared as an attention tap); :meth:`region_attention` gives one region's token attention.
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
        self.channels = _check_bra_args(type(self).__name__, channels, num_heads, n_win, topk, side_dwconv)
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = float(qk_scale) if qk_scale is not None else channels**-0.5
        self.router = RegionRouter()
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.lepe = (
            nn.Conv2d(channels, channels, side_dwconv, padding=side_dwconv // 2, groups=channels)
            if side_dwconv
            else None
        )
        self.proj = nn.Conv2d(channels, channels, 1)
        # token attention backend and SDPA training memory mode (see the class docstring)
        self.kernel: str = "auto"
        self.recompute: bool | None = None

    def __setstate__(self, state):
        super().__setstate__(state)
        if "router" not in self._modules:  # pickled before routing was a submodule
            self.router = RegionRouter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        kernel = getattr(self, "kernel", "auto")  # attributes absent in modules pickled before they existed
        check_backend(kernel, x, f"{type(self).__name__}: attribute 'kernel'")
        geometry, routes, qkv = self._route_and_project(x)
        o = routed_attention(
            qkv.unflatten(-1, (3, self.num_heads, self.head_dim)), routes, geometry, self.scale,
            backend=kernel, recompute=getattr(self, "recompute", None),
        )  # fmt: skip
        o = geometry.to_map(o, self.channels)  # NCHW, padding cropped
        if self.lepe is not None:
            # lepe on the real v; contiguous first, so that its memory layout (and rounding) does not
            # depend on the grid (with one-row regions to_map returns a view)
            o = o + self.lepe(geometry.to_map(qkv[..., 2 * self.channels :].contiguous(), self.channels))
        return self.proj(o)

    def _route_and_project(self, x: torch.Tensor):
        """The region grid of x, its routing (N, R, k) and q|k|v in region layout (N, R, T, 3C)."""
        geometry = RegionGeometry.of(x.shape[2], x.shape[3], self.n_win)
        xr = geometry.to_regions(x)  # one copy of the C-channel input instead of the 3C q|k|v
        valid = geometry.valid_tokens(x.device) if geometry.padded else None
        # routing takes no gradient (as the paper's operator): the router gets detached tensors
        c = self.channels
        weight, bias = self.qkv.weight.detach().view(3, c, c), self.qkv.bias.detach().view(3, c)
        routes = self.router(xr.detach(), valid, weight[0], bias[0], weight[1], bias[1], geometry.routed(self.topk))
        # the 1x1 conv on the region layout seen as a channels-last (N, C, R, T) map
        qkv = self.qkv(xr.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return geometry, routes, qkv

    @torch.no_grad()
    def region_attention(self, x: torch.Tensor, region: int, image: int = 0) -> RegionAttention:
        """Token attention probabilities (heads, T, k*T) of query region ``region`` of image ``image``.

        Computed from this module's own q, k and routing of ``x`` as the forward pass uses them
        (o = probs @ V of the routed regions), in at least float32; see :class:`RegionAttention`.
        Regions are numbered row-major over the grid (``geometry.n_h`` x ``geometry.n_w``). Runs
        the router on image ``image`` alone, so forward hooks on ``router`` see that call too.
        """
        check_input(self, x)
        name = type(self).__name__
        if isinstance(image, bool) or not isinstance(image, int) or not 0 <= image < x.shape[0]:
            raise ValueError(f"{name}: argument 'image' must be an int in [0, {x.shape[0]}), got {image!r}")
        geometry, routes, qkv = self._route_and_project(x[image : image + 1])
        if isinstance(region, bool) or not isinstance(region, int) or not 0 <= region < geometry.regions:
            raise ValueError(f"{name}: argument 'region' must be an int in [0, {geometry.regions}), got {region!r}")
        qkv = qkv[0].unflatten(-1, (3, self.num_heads, self.head_dim))  # (R, T, 3, heads, hd)
        keys = routes[0, region]
        dtype = torch.promote_types(qkv.dtype, torch.float32)
        q = qkv[region, :, 0].transpose(0, 1).to(dtype)  # (heads, T, hd)
        k = qkv[keys, :, 1].flatten(0, 1).transpose(0, 1).to(dtype)  # (heads, k*T, hd)
        logits = q @ k.transpose(1, 2) * self.scale
        mask = geometry.key_mask(keys[None])
        if mask is not None:
            logits = logits.masked_fill(~mask[0], float("-inf"))
        return RegionAttention(logits.softmax(-1), keys, geometry)

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
    taps=(AttentionTap("attn.router", "routing", "routed regions"),),
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
        self.channels = _check_bra_args(name, channels, num_heads, n_win, topk, side_dwconv)
        check_positive(name, "mlp_ratio", mlp_ratio, integer=False)
        if isinstance(drop_path, bool) or not isinstance(drop_path, (int, float)) or not 0 <= drop_path < 1:
            raise ValueError(f"{name}: argument 'drop_path' must be a number in [0, 1), got {drop_path!r}")
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
