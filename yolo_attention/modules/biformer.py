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

Fast path (numbers in BENCHMARKS.md): x is zero-padded and rearranged once into a region
layout (N, R, T, C) and the 1x1 q|k|v conv runs on it (as a channels-last map), so no 3C tensor
is ever permuted. (Padded tokens then hold q = k = v = bias instead of zeros; that changes
nothing, because they are excluded from the means and masked out of attention, and lepe runs
on the cropped v.) Routing uses region means of x over real tokens projected by W_q, W_k (the
mean of W x + b is W mean(x) + b: these are the region means of q and k, at a third of the
cost).

Token attention has two backends (attribute ``kernel``, see the class docstring):

* Triton (opt-in, ``kernel="triton"``; experimental): FlashAttention-style kernels
  (arXiv:2205.14135) that read each routed region's K/V tiles in place, by index arithmetic
  from the routing table, so there is no K/V copy and no attention matrix in the forward or
  the backward pass (dk/dv come from an inverse routing table, without atomics). They are
  tested against the SDPA backend in the Triton interpreter on CPU (float32, float16) but
  not yet on a GPU, so they are not the default; ``benchmarks/gpu_biformer.sh`` checks them
  on a GPU (all dtypes) and times them;
* ``scaled_dot_product_attention`` (the default everywhere, and the fallback): the
  K and V rows of the routed regions are gathered with ``index_select`` (whole regions are
  contiguous rows) and each query region attends with one fused SDPA call, which does not
  keep the attention matrix. A key mask is only built when there is padding. Without
  gradients the gather runs in chunks of query regions (bounded transient memory); in
  training, ``recompute=True`` (the default on CUDA) keeps only q, k, v and re-gathers /
  recomputes each chunk in the backward pass instead of keeping the top-k K/V copies.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..registry import register_attention
from .helpers import LayerNorm2d, check_channels, check_input, check_positive, drop_path

__all__ = ["BiLevelRoutingAttention", "BiFormerBlock", "region_grid"]


def _ceil_div(a, b):
    # for a >= 1; written as 1 + ... so that symbolic shapes (torch.compile) see a value >= 1
    return 1 + (a - 1) // b


def _clamp_max(a, b: int):
    # works for Python ints (eager) and for traced 0-dim size tensors (ONNX export)
    return a.clamp(max=b) if isinstance(a, torch.Tensor) else min(a, b)


def region_grid(size, n_win: int):
    """Regions along one side of length ``size``: (number of regions, region length, padded length)."""
    length = _ceil_div(size, _clamp_max(size, n_win))
    count = _ceil_div(size, length)
    return count, length, count * length


def _regions_to_map(t: torch.Tensor, n, c: int, nh, rh, nw, rw) -> torch.Tensor:
    """(N*R, T, ...) with R = nh*nw regions of T = rh*rw tokens -> (N, C, nh*rh, nw*rw)."""
    return t.reshape(n, nh, nw, rh, rw, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, nh * rh, nw * rw)


def _gather_regions(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """t (B, T, heads, hd) contiguous, rows (b, k) region indices -> (b, heads, k*T, hd), a copy."""
    g = t.flatten(1).index_select(0, rows.reshape(-1))
    return g.view(rows.shape[0], -1, t.shape[2], t.shape[3]).transpose(1, 2)


def _attend_gathered(q, k, v, rows, mask, scale: float) -> torch.Tensor:
    """Each query region (q: (B, T, heads, hd)) attends to the tokens of its ``rows`` regions of k, v.

    Returns (B, T, heads, hd). ``mask`` (B, 1, 1, k*T) bool marks real keys (None: all real).
    """
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), _gather_regions(k, rows), _gather_regions(v, rows), attn_mask=mask, scale=scale
    )
    return o.transpose(1, 2)


_CHUNK_ELEMENTS = 1 << 22  # gathered K (or V) elements per chunk below which one chunk is used


def _chunk_bounds(q: torch.Tensor, rows: torch.Tensor, fraction: float = 1.0):
    """Split the B query regions so that a chunk's gathered K holds about
    max(2^22, fraction * |q|) elements (all top-k copies together hold topk * |q|)."""
    b, k_top = rows.shape
    per_row = k_top * q[0].numel()
    step = max(1, max(_CHUNK_ELEMENTS, int(fraction * q.numel())) // per_row)
    return [(i, min(b, i + step)) for i in range(0, b, step)]


def _attend_chunked(q, k, v, rows, mask, scale: float) -> torch.Tensor:
    """:func:`_attend_gathered` over chunks of query regions (bounded transient memory)."""
    bounds = _chunk_bounds(q, rows)
    if len(bounds) == 1:
        return _attend_gathered(q, k, v, rows, mask, scale)
    o = q.new_empty(q.shape)
    for i, j in bounds:
        o[i:j] = _attend_gathered(q[i:j], k, v, rows[i:j], None if mask is None else mask[i:j], scale)
    return o


def _recomputed_grads(q, k, v, rows, mask, scale: float, grad, dq, dk, dv) -> None:
    """Gradients of :func:`_attend_gathered` into dq, dk, dv (dk, dv zeroed), chunk by chunk:
    each chunk's K/V regions are re-gathered and its attention recomputed; gradients of the
    gathered K/V are accumulated with ``index_add_``."""
    k, v = k.contiguous(), v.contiguous()
    # half of |q| per chunk: gathered K, V and their gradients hold about 2 |q| at a time
    for i, j in _chunk_bounds(q, rows, 0.5):
        r = rows[i:j]
        with torch.enable_grad():
            qc = q[i:j].detach().requires_grad_()
            kg = _gather_regions(k, r).requires_grad_()
            vg = _gather_regions(v, r).requires_grad_()
            o = F.scaled_dot_product_attention(
                qc.transpose(1, 2), kg, vg, attn_mask=None if mask is None else mask[i:j], scale=scale
            )
            gq, gk, gv = torch.autograd.grad(o, (qc, kg, vg), grad[i:j].transpose(1, 2))
        dq[i:j] = gq
        flat = r.reshape(-1)
        dk.index_add_(0, flat, gk.transpose(1, 2).reshape(-1, *k.shape[1:]))
        dv.index_add_(0, flat, gv.transpose(1, 2).reshape(-1, *v.shape[1:]))


class _RecomputedRoutedAttention(torch.autograd.Function):
    """Routed attention that saves only q, k, v (and the routing) for backward.

    The backward pass re-gathers each chunk's K/V regions and recomputes its attention, so the
    top-k copies of K/V and the attention state live for one chunk at a time.
    """

    @staticmethod
    def forward(ctx, q, k, v, rows, mask, scale: float):
        q = q.contiguous()
        ctx.save_for_backward(q, k, v, rows, mask)
        ctx.scale = scale
        return _attend_chunked(q, k, v, rows, mask, scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, rows, mask = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        _recomputed_grads(q, k, v, rows, mask, ctx.scale, grad, dq, dk, dv)
        return dq, dk, dv, None, None, None


# ----------------------------------------------------------------------------- Triton kernels
#
# Routed attention without any copy of K/V: each program owns a block of query tokens of one
# query region and one head, reads the routed regions' K/V tiles in place (region index from
# the routing table, token offsets by index arithmetic, padded keys masked from the region's
# position in the grid) and keeps an online softmax (as FlashAttention, arXiv:2205.14135), so
# neither gathered K/V nor the attention matrix exist. Backward: one kernel for dq (same loop)
# and one for dk/dv per key region over the query regions routed to it (an inverse routing
# table built with a sort), so no atomics. Defined only where they can run (CUDA, or the
# Triton interpreter with TRITON_INTERPRET=1, which the tests use on CPU).

_bra_fwd = _bra_bwd_dq = _bra_bwd_dkdv = None
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Set to True once benchmarks/gpu_biformer.sh has checked the Triton kernels on a GPU in every dtype.
_TRITON_VERIFIED_ON_GPU = False
try:
    if _TRITON_INTERPRET or torch.cuda.is_available():
        import triton
        import triton.language as tl
    else:
        triton = None
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

if triton is not None:

    @triton.jit
    def _tile(X, row, s_row, offs_t, s_t, hh, s_h, offs_d):
        """Pointers to a (tokens x head_dim) tile: region ``row``, tokens ``offs_t``, head ``hh``."""
        return X + row * s_row + offs_t[:, None] * s_t + hh * s_h + offs_d[None, :]

    @triton.jit
    def _key_mask(offs_n, r, T, R, NW, RH, RW, H, W, PADDED: tl.constexpr):
        nmask = offs_n < T
        if PADDED:  # key token t of region r lies at row (r // NW) * RH + t // RW, col (r % NW) * RW + t % RW
            rr = r % R
            nmask = nmask & ((rr // NW) * RH + offs_n // RW < H) & ((rr % NW) * RW + offs_n % RW < W)
        return nmask

    @triton.jit
    def _bra_fwd(
        Q, K, V, O, LSE, ROWS,
        sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
        T, KT, R, NW, RH, RW, H, W, scale,
        HD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PADDED: tl.constexpr, PREC: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0).to(tl.int64)
        hh = tl.program_id(1)
        heads = tl.num_programs(1)
        offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < HD
        mmask = offs_m < T
        qmask = mmask[:, None] & dmask[None, :]
        q = tl.load(_tile(Q, b, sqb, offs_m, sqt, hh, sqh, offs_d), mask=qmask, other=0.0)
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for j in range(KT):
            r = tl.load(ROWS + b * KT + j).to(tl.int64)
            for n0 in range(0, T, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                nmask = _key_mask(offs_n, r, T, R, NW, RH, RW, H, W, PADDED)
                kvmask = nmask[:, None] & dmask[None, :]
                k = tl.load(_tile(K, r, skb, offs_n, skt, hh, skh, offs_d), mask=kvmask, other=0.0)
                v = tl.load(_tile(V, r, svb, offs_n, svt, hh, svh, offs_d), mask=kvmask, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
                s = tl.where(nmask[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                alpha = tl.exp(m_i - m_new)
                p = tl.exp(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
                m_i = m_new
        o = acc / l_i[:, None]  # every region holds a real token: l_i > 0
        tl.store(_tile(O, b, sob, offs_m, sot, hh, soh, offs_d), o.to(O.dtype.element_ty), mask=qmask)
        tl.store(LSE + (b * heads + hh) * T + offs_m, m_i + tl.log(l_i), mask=mmask)

    @triton.jit
    def _bra_bwd_dq(
        Q, K, V, DO, DQ, LSE, DELTA, ROWS,
        sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, sgb, sgt, sgh,
        T, KT, R, NW, RH, RW, H, W, scale,
        HD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PADDED: tl.constexpr, PREC: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0).to(tl.int64)
        hh = tl.program_id(1)
        heads = tl.num_programs(1)
        offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < HD
        mmask = offs_m < T
        qmask = mmask[:, None] & dmask[None, :]
        q = tl.load(_tile(Q, b, sqb, offs_m, sqt, hh, sqh, offs_d), mask=qmask, other=0.0)
        do = tl.load(_tile(DO, b, sdb, offs_m, sdt, hh, sdh, offs_d), mask=qmask, other=0.0)
        lse = tl.load(LSE + (b * heads + hh) * T + offs_m, mask=mmask, other=0.0)
        delta = tl.load(DELTA + (b * heads + hh) * T + offs_m, mask=mmask, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for j in range(KT):
            r = tl.load(ROWS + b * KT + j).to(tl.int64)
            for n0 in range(0, T, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                nmask = _key_mask(offs_n, r, T, R, NW, RH, RW, H, W, PADDED)
                kvmask = nmask[:, None] & dmask[None, :]
                k = tl.load(_tile(K, r, skb, offs_n, skt, hh, skh, offs_d), mask=kvmask, other=0.0)
                v = tl.load(_tile(V, r, svb, offs_n, svt, hh, svh, offs_d), mask=kvmask, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
                p = tl.where(nmask[None, :], tl.exp(s - lse[:, None]), 0.0)
                dp = tl.dot(do, tl.trans(v), input_precision=PREC)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
        dq = dq * scale
        tl.store(_tile(DQ, b, sgb, offs_m, sgt, hh, sgh, offs_d), dq.to(DQ.dtype.element_ty), mask=qmask)

    @triton.jit
    def _bra_bwd_dkdv(
        Q, K, V, DO, DK, DV, LSE, DELTA, PTR, QIDX,
        sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, sgb, sgt, sgh,
        T, KT, R, NW, RH, RW, H, W, scale,
        HD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PADDED: tl.constexpr, PREC: tl.constexpr,
    ):  # fmt: skip
        r = tl.program_id(0).to(tl.int64)
        hh = tl.program_id(1)
        heads = tl.num_programs(1)
        offs_n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < HD
        nmask = _key_mask(offs_n, r, T, R, NW, RH, RW, H, W, PADDED)
        kvmask = nmask[:, None] & dmask[None, :]
        k = tl.load(_tile(K, r, skb, offs_n, skt, hh, skh, offs_d), mask=kvmask, other=0.0)
        v = tl.load(_tile(V, r, svb, offs_n, svt, hh, svh, offs_d), mask=kvmask, other=0.0)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for e in range(tl.load(PTR + r), tl.load(PTR + r + 1)):
            b = tl.load(QIDX + e).to(tl.int64)  # a query region routed to key region r
            for m0 in range(0, T, BLOCK_M):
                offs_m = m0 + tl.arange(0, BLOCK_M)
                mmask = offs_m < T
                qmask = mmask[:, None] & dmask[None, :]
                q = tl.load(_tile(Q, b, sqb, offs_m, sqt, hh, sqh, offs_d), mask=qmask, other=0.0)
                do = tl.load(_tile(DO, b, sdb, offs_m, sdt, hh, sdh, offs_d), mask=qmask, other=0.0)
                lse = tl.load(LSE + (b * heads + hh) * T + offs_m, mask=mmask, other=0.0)
                delta = tl.load(DELTA + (b * heads + hh) * T + offs_m, mask=mmask, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
                p = tl.where(mmask[:, None] & nmask[None, :], tl.exp(s - lse[:, None]), 0.0)
                dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PREC)
                dp = tl.dot(do, tl.trans(v), input_precision=PREC)
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PREC)
        dk = dk * scale
        omask = (offs_n < T)[:, None] & dmask[None, :]  # padded keys get zero gradients
        tl.store(_tile(DK, r, sgb, offs_n, sgt, hh, sgh, offs_d), dk.to(DK.dtype.element_ty), mask=omask)
        tl.store(_tile(DV, r, sgb, offs_n, sgt, hh, sgh, offs_d), dv.to(DV.dtype.element_ty), mask=omask)


def _triton_blocks(tokens: int, head_dim: int):
    """(BLOCK_M, BLOCK_N, BLOCK_D): the largest of 16/32/64 that wastes <= 1/8 of a region's tokens."""
    block = 16
    for b in (32, 64):
        if (-(-tokens // b) * b - tokens) * 8 <= tokens:
            block = b
    return block, block, max(16, 1 << (head_dim - 1).bit_length())


def _triton_launch_args(qkv: torch.Tensor, geom):
    tokens, head_dim = qkv.shape[1], qkv.shape[4]
    bm, bn, bd = _triton_blocks(tokens, head_dim)
    regions, nw, rh, rw, h, w, padded = geom
    fp32_prec = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"  # as torch's fp32 matmuls
    meta = dict(
        HD=head_dim, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, PADDED=bool(padded),
        PREC=fp32_prec if qkv.dtype == torch.float32 else "tf32", num_warps=4 if bm * bn >= 2048 else 2,
    )  # fmt: skip
    return (tokens, regions, nw, rh, rw, h, w), meta


def _strides(t: torch.Tensor):
    return t.stride(0), t.stride(1), t.stride(2)


def _triton_forward(qkv: torch.Tensor, rows: torch.Tensor, geom, scale: float):
    """qkv (B, T, 3, heads, hd) with unit last stride, rows (B, k) int32 -> o (B, T, heads, hd), lse."""
    q, k, v = qkv.unbind(2)
    b, t, heads, hd = q.shape
    (tokens, regions, nw, rh, rw, h, w), meta = _triton_launch_args(qkv, geom)
    o = qkv.new_empty((b, t, heads, hd))
    lse = torch.empty((b, heads, t), dtype=torch.float32, device=qkv.device)
    grid = (b, heads, triton.cdiv(t, meta["BLOCK_M"]))
    _bra_fwd[grid](
        q, k, v, o, lse, rows, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        tokens, rows.shape[1], regions, nw, rh, rw, h, w, scale, **meta,
    )  # fmt: skip
    return o, lse


def _triton_backward(qkv, rows, geom, scale: float, o, lse, grad):
    """Gradient (B, T, 3, heads, hd) of :func:`_triton_forward` with respect to qkv."""
    q, k, v = qkv.unbind(2)
    b, t, heads, hd = q.shape
    (tokens, regions, nw, rh, rw, h, w), meta = _triton_launch_args(qkv, geom)
    k_top = rows.shape[1]
    if grad.stride(-1) != 1:
        grad = grad.contiguous()
    delta = (grad.float() * o.float()).sum(-1).transpose(1, 2).contiguous()  # (B, heads, T)
    # inverse routing: the query regions routed to each key region, grouped by key region
    flat = rows.reshape(-1).long()
    query_of = (torch.argsort(flat, stable=True) // k_top).to(torch.int32)
    ptr = torch.zeros(b + 1, dtype=torch.int32, device=qkv.device)
    ptr[1:] = torch.cumsum(torch.bincount(flat, minlength=b), 0)
    dqkv = qkv.new_empty((b, t, 3, heads, hd))
    dq, dk, dv = dqkv.unbind(2)
    common = (
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad), *_strides(dq),
        tokens, k_top, regions, nw, rh, rw, h, w, scale,
    )  # fmt: skip
    _bra_bwd_dq[(b, heads, triton.cdiv(t, meta["BLOCK_M"]))](q, k, v, grad, dq, lse, delta, rows, *common, **meta)
    _bra_bwd_dkdv[(b, heads, triton.cdiv(t, meta["BLOCK_N"]))](
        q, k, v, grad, dk, dv, lse, delta, ptr, query_of, *common, **meta
    )
    return dqkv


# kernel configurations (device, dtype, padded, blocks) that compiled and ran; a configuration that
# fails on its first use makes the module fall back to the SDPA path with a warning
_TRITON_OK: set = set()
_TRITON_FAILED: set = set()


def _triton_config(qkv, geom):
    return (qkv.device.type, qkv.dtype, bool(geom[-1]), _triton_blocks(qkv.shape[1], qkv.shape[4]))


def _triton_guarded(fn, config, *args):
    """Run ``fn``; if a configuration fails the first time it is used, remember it and return None."""
    if config in _TRITON_OK:
        return fn(*args)
    try:
        out = fn(*args)
    except Exception as err:  # noqa: BLE001  (compilation / launch errors of an untried configuration)
        _TRITON_FAILED.add(config)
        warnings.warn(f"BiLevelRoutingAttention: Triton kernel failed ({type(err).__name__}: {err}); "
                      "using the scaled_dot_product_attention path", RuntimeWarning, stacklevel=3)  # fmt: skip
        return None
    _TRITON_OK.add(config)
    return out


def _sdpa_mask(rows, geom, tokens: int):
    regions, nw, rh, rw, h, w, padded = geom
    if not padded:
        return None
    valid = BiLevelRoutingAttention._valid_tokens(h, w, regions // nw, rh, nw, rw, rows.device)
    return valid[rows.long() % regions].reshape(rows.shape[0], 1, 1, -1)


class _TritonRoutedAttention(torch.autograd.Function):
    """Routed attention with the Triton kernels; saves q|k|v (views of the projection), o and lse."""

    @staticmethod
    def forward(ctx, qkv, rows, geom, scale: float):
        o, lse = _triton_forward(qkv, rows, geom, scale)
        ctx.save_for_backward(qkv, rows, o, lse)
        ctx.geom, ctx.scale = geom, scale
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        qkv, rows, o, lse = ctx.saved_tensors
        config = ("backward",) + _triton_config(qkv, ctx.geom)
        dqkv = None
        if config not in _TRITON_FAILED:
            dqkv = _triton_guarded(_triton_backward, config, qkv, rows, ctx.geom, ctx.scale, o, lse, grad)
        if dqkv is None:  # fallback: recompute with SDPA
            q, k, v = qkv.unbind(2)
            dqkv = qkv.new_empty(qkv.shape)
            dq, dk, dv = dqkv.unbind(2)
            dk.zero_()
            dv.zero_()
            mask = _sdpa_mask(rows, ctx.geom, qkv.shape[1])
            _recomputed_grads(q, k, v, rows.long(), mask, ctx.scale, grad, dq, dk, dv)
        return dqkv, None, None, None


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
    gradients) select the implementation of the token attention:

    * ``kernel``: ``"auto"`` (default) and ``"sdpa"`` use ``scaled_dot_product_attention`` on
      gathered K/V; ``"triton"`` opts into the experimental Triton kernels for CUDA tensors (no
      K/V copies at all; a configuration that fails to compile falls back to SDPA with a
      warning). They have been verified only in the Triton interpreter on CPU; ``"auto"`` will
      select them once a GPU run (``benchmarks/gpu_biformer.sh``) has verified them. Tracing
      (ONNX export) and ``torch.compile`` always use the SDPA formulation.
    * ``recompute`` (SDPA backend, training): ``True`` keeps only q, k, v and recomputes each
      chunk of the attention in the backward pass (least memory), ``False`` keeps the gathered
      K/V for one fused backward call (fastest on CPU), ``None`` (default): ``True`` on CUDA.
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
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.lepe = (
            nn.Conv2d(channels, channels, side_dwconv, padding=side_dwconv // 2, groups=channels)
            if side_dwconv
            else None
        )
        self.proj = nn.Conv2d(channels, channels, 1)
        # attention backend ("auto"/"sdpa": SDPA; "triton": experimental Triton kernels on CUDA) and,
        # for the SDPA backend, the training memory mode (None: recompute on CUDA only); see the docstring
        self.kernel: str = "auto"
        self.recompute: bool | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        n, _, h, w = x.shape
        c, heads, hd = self.channels, self.num_heads, self.head_dim
        nh, rh, hp = region_grid(h, self.n_win)
        nw, rw, wp = region_grid(w, self.n_win)
        compiling = torch.compiler.is_compiling()
        if compiling:
            # with dynamic shapes, inductor cannot order strides built from these ceil/min terms;
            # len(range(s)) makes dynamo specialise the grid (sizes sharing a grid share a graph)
            nh, rh, nw, rw = (len(range(v)) for v in (nh, rh, nw, rw))
            hp, wp = nh * rh, nw * rw
        regions, tokens = nh * nw, rh * rw
        symbolic = torch.jit.is_tracing()  # sizes are traced tensors: keep one general graph
        padded = symbolic or hp != h or wp != w

        # x in region layout (N, R, T, C): one copy of the C-channel input instead of the 3C q|k|v
        xp = F.pad(x, (0, wp - w, 0, hp - h)) if padded else x
        xr = xp.reshape(n, c, nh, rh, nw, rw).permute(0, 2, 4, 3, 5, 1).reshape(n, regions, tokens, c)
        valid = self._valid_tokens(h, w, nh, rh, nw, rw, x.device) if padded else None

        idx = self._route(xr.detach(), valid)  # (N, R, k) routed regions, no gradient
        k_top = idx.shape[-1]

        # q | k | v with the 1x1 conv, run on the region layout seen as a channels-last (N, C, R, T) map
        qkv = self.qkv(xr.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (N, R, T, 3C)
        rows = (idx + torch.arange(n, device=x.device).view(n, 1, 1) * regions).reshape(n * regions, k_top)
        kernel = getattr(self, "kernel", "auto")  # attributes absent in modules pickled before they existed
        recompute = getattr(self, "recompute", None)
        grad = torch.is_grad_enabled() and qkv.requires_grad
        o = None
        if not (symbolic or compiling) and self.head_dim <= 128 and self._triton_wanted(kernel, qkv):
            qkv5 = qkv.reshape(n * regions, tokens, 3, heads, hd)  # a view when the conv kept channels-last
            if qkv5.stride(-1) != 1:
                qkv5 = qkv5.contiguous()
            geom = (regions, nw, rh, rw, h, w, padded)
            rows32 = rows.to(torch.int32)
            config = _triton_config(qkv5, geom)
            if config in _TRITON_FAILED:
                pass
            elif grad:
                o = _triton_guarded(_TritonRoutedAttention.apply, config, qkv5, rows32, geom, self.scale)
            else:
                o = _triton_guarded(lambda *a: _triton_forward(*a)[0], config, qkv5, rows32, geom, self.scale)
            v = qkv[..., 2 * c :]
        if o is None:
            q, k, v = qkv.unflatten(-1, (3, c)).unbind(-2)
            k, v = k.contiguous(), v.contiguous()  # (N, R, T, C) each: whole regions are contiguous rows
            mask = valid[idx].reshape(n * regions, 1, 1, k_top * tokens) if padded else None
            q = q.reshape(n * regions, tokens, heads, hd)
            k = k.view(n * regions, tokens, heads, hd)
            if symbolic or compiling:
                o = _attend_gathered(q, k, v.view_as(k), rows, mask, self.scale)
            elif grad and (x.device.type == "cuda" if recompute is None else recompute):
                o = _RecomputedRoutedAttention.apply(q, k, v.view_as(k), rows, mask, self.scale)
            elif grad:
                o = _attend_gathered(q, k, v.view_as(k), rows, mask, self.scale)
            else:
                o = _attend_chunked(q, k, v.view_as(k), rows, mask, self.scale)

        # (N*R, T, heads, hd) -> NCHW, then lepe on the real (unpadded) v and the output projection
        o = _regions_to_map(o, n, c, nh, rh, nw, rw)
        if self.lepe is not None:
            v = _regions_to_map(v, n, c, nh, rh, nw, rw)
            if padded:
                o, v = o[:, :, :h, :w], v[:, :, :h, :w]
            return self.proj(o + self.lepe(v))
        return self.proj(o[:, :, :h, :w] if padded else o)

    @staticmethod
    def _triton_wanted(kernel: str, qkv: torch.Tensor) -> bool:
        if kernel == "sdpa":
            return False
        if kernel == "triton":
            if _bra_fwd is None or not (qkv.is_cuda or _TRITON_INTERPRET):
                raise RuntimeError(
                    "BiLevelRoutingAttention: kernel='triton' needs a CUDA tensor and the triton package "
                    "(or TRITON_INTERPRET=1 set before import, for testing on CPU)"
                )
            return True
        if kernel != "auto":
            raise ValueError(f"BiLevelRoutingAttention: attribute 'kernel' must be 'auto', 'triton' or 'sdpa', got {kernel!r}")
        # "auto": SDPA until the Triton kernels have been verified on a real GPU (see the class docstring)
        return _TRITON_VERIFIED_ON_GPU and _bra_fwd is not None and qkv.is_cuda

    def _route(self, xr: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Top-k region indices (N, R, k) from region means of q and k over real tokens.

        The region mean of q = W_q x + b_q is W_q (mean of x) + b_q, so the means are taken of
        x (C channels instead of 2C) and projected; padded x tokens are zeros and the sum is
        divided by the number of real tokens.
        """
        c = self.channels
        if valid is None:
            x_mean = xr.mean(2)
        else:
            x_mean = xr.sum(2) / valid.sum(-1, keepdim=True).to(xr.dtype)
        weight = self.qkv.weight.detach().view(3, c, c)
        bias = self.qkv.bias.detach().view(3, c)
        q_r = F.linear(x_mean, weight[0], bias[0])
        k_r = F.linear(x_mean, weight[1], bias[1])
        affinity = q_r @ k_r.transpose(1, 2)  # (N, R, R)
        return torch.topk(affinity, _clamp_max(affinity.shape[-1], self.topk), dim=-1).indices

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
