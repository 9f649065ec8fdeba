"""Routed attention in Triton: no copy of K/V and no attention matrix, forward or backward.

Each program of the forward kernel owns a block of query tokens of one query region and one
head, reads the routed regions' K/V tiles in place (region index from the routing table,
token offsets by index arithmetic, padded keys masked from the region's position in the grid)
and keeps an online softmax, as FlashAttention (Dao et al., arXiv:2205.14135). Backward: one
kernel for dq (the same loop over the routed regions) and one for dk/dv per key region over
the query regions routed to it (an inverse routing table built with a sort), so no atomics.

The kernels are defined only where they can run: with a CUDA device, or in the Triton
interpreter (``TRITON_INTERPRET=1`` set before import), which the tests use on CPU. Whether
``backend="auto"`` uses them is decided in :mod:`yolo_attention.ops.trust`.

Process-wide state: :data:`OK_CONFIGS` and :data:`FAILED_CONFIGS` hold the kernel
configurations (device type, dtype, padding, block sizes) that ran or failed in this
process. A configuration that fails the first time it is used (compilation or launch error)
is remembered with a warning, and every later call with it takes the SDPA path instead.

Layout: ``qkv`` (B, T, 3, heads, head_dim) with unit last stride, B = N * R regions of T
tokens; ``rows`` (B, k) int32, the key regions (indices in [0, B)) of each query region.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch.autograd.function import once_differentiable

from .geometry import RegionGeometry
from .sdpa_gather import recomputed_grads

__all__ = ["available", "triton_routed_attention", "OK_CONFIGS", "FAILED_CONFIGS", "MAX_HEAD_DIM"]

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_HEAD_DIM = 128  # one (BLOCK, head_dim) tile per operand must fit the kernels' registers/shared memory
OK_CONFIGS: set = set()
FAILED_CONFIGS: set = set()

_bra_fwd = _bra_bwd_dq = _bra_bwd_dkdv = None
try:
    if INTERPRET or torch.cuda.is_available():
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
    def _row_stats(b, hh, T, offs_m):
        """Offsets of the per-query-token statistics (LSE, delta), laid out (B, heads, T)."""
        return (b * tl.num_programs(1) + hh) * T + offs_m

    @triton.jit
    def _key_mask(offs_n, r, T, R, NW, RH, RW, H, W, PADDED: tl.constexpr):
        nmask = offs_n < T
        if PADDED:  # key token t of region r lies at row (r // NW) * RH + t // RW, col (r % NW) * RW + t % RW
            rr = r % R
            nmask = nmask & ((rr // NW) * RH + offs_n // RW < H) & ((rr % NW) * RW + offs_n % RW < W)
        return nmask

    @triton.jit
    def _kv_tiles(
        K, V, r, offs_n, hh, offs_d, dmask, skb, skt, skh, svb, svt, svh,
        T, R, NW, RH, RW, H, W, PADDED: tl.constexpr,
    ):  # fmt: skip
        """Key region ``r``, tokens ``offs_n``, head ``hh``: the real-key mask and the K, V tiles (zero elsewhere)."""
        nmask = _key_mask(offs_n, r, T, R, NW, RH, RW, H, W, PADDED)
        kvmask = nmask[:, None] & dmask[None, :]
        k = tl.load(_tile(K, r, skb, offs_n, skt, hh, skh, offs_d), mask=kvmask, other=0.0)
        v = tl.load(_tile(V, r, svb, offs_n, svt, hh, svh, offs_d), mask=kvmask, other=0.0)
        return nmask, k, v

    @triton.jit
    def _routed_kv_tiles(
        K, V, ROWS, b, KT, it, hh, offs_d, dmask, skb, skt, skh, svb, svt, svh,
        T, R, NW, RH, RW, H, W, PADDED: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """Key tile ``it`` of query region ``b``: token block it % n of routed region it // n (n blocks a region)."""
        n_blocks = tl.cdiv(T, BLOCK_N)
        r = tl.load(ROWS + b * KT + it // n_blocks).to(tl.int64)
        offs_n = (it % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        return _kv_tiles(K, V, r, offs_n, hh, offs_d, dmask, skb, skt, skh, svb, svt, svh, T, R, NW, RH, RW, H, W, PADDED)

    @triton.jit
    def _query_block(Q, sqb, sqt, sqh, T, HD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
        """The forward and dq kernels' program: query region, head, its query tokens, masks and q tile."""
        b = tl.program_id(0).to(tl.int64)
        hh = tl.program_id(1)
        offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < HD
        mmask = offs_m < T
        qmask = mmask[:, None] & dmask[None, :]
        q = tl.load(_tile(Q, b, sqb, offs_m, sqt, hh, sqh, offs_d), mask=qmask, other=0.0)
        return b, hh, offs_m, offs_d, dmask, mmask, qmask, q

    @triton.jit
    def _grad_inputs(DO, LSE, DELTA, b, sdb, sdt, sdh, hh, offs_m, offs_d, T, mmask, qmask):
        """The output gradient tile of a query block and its rows' LSE and delta (sum of dO * O)."""
        do = tl.load(_tile(DO, b, sdb, offs_m, sdt, hh, sdh, offs_d), mask=qmask, other=0.0)
        stats = _row_stats(b, hh, T, offs_m)
        lse = tl.load(LSE + stats, mask=mmask, other=0.0)
        delta = tl.load(DELTA + stats, mask=mmask, other=0.0)
        return do, lse, delta

    @triton.jit
    def _probs_and_dscores(q, k, v, do, lse, delta, mask, scale, PREC: tl.constexpr):
        """Recomputed probabilities p (zero where ``mask`` is False) and the logit gradients p (dO V^T - delta)."""
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
        p = tl.where(mask, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        return p, p * (dp - delta[:, None])

    @triton.jit
    def _bra_fwd(
        Q, K, V, O, LSE, ROWS,
        sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
        T, KT, R, NW, RH, RW, H, W, scale,
        HD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PADDED: tl.constexpr, PREC: tl.constexpr,
    ):  # fmt: skip
        b, hh, offs_m, offs_d, dmask, mmask, qmask, q = _query_block(Q, sqb, sqt, sqh, T, HD, BLOCK_M, BLOCK_D)
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for it in range(KT * tl.cdiv(T, BLOCK_N)):  # key tiles of the routed regions, region after region
            nmask, k, v = _routed_kv_tiles(
                K, V, ROWS, b, KT, it, hh, offs_d, dmask, skb, skt, skh, svb, svt, svh,
                T, R, NW, RH, RW, H, W, PADDED, BLOCK_N,
            )  # fmt: skip
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
        tl.store(LSE + _row_stats(b, hh, T, offs_m), m_i + tl.log(l_i), mask=mmask)

    @triton.jit
    def _bra_bwd_dq(
        Q, K, V, DO, DQ, LSE, DELTA, ROWS,
        sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, sgb, sgt, sgh,
        T, KT, R, NW, RH, RW, H, W, scale,
        HD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PADDED: tl.constexpr, PREC: tl.constexpr,
    ):  # fmt: skip
        b, hh, offs_m, offs_d, dmask, mmask, qmask, q = _query_block(Q, sqb, sqt, sqh, T, HD, BLOCK_M, BLOCK_D)
        do, lse, delta = _grad_inputs(DO, LSE, DELTA, b, sdb, sdt, sdh, hh, offs_m, offs_d, T, mmask, qmask)
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for it in range(KT * tl.cdiv(T, BLOCK_N)):  # key tiles of the routed regions, region after region
            nmask, k, v = _routed_kv_tiles(
                K, V, ROWS, b, KT, it, hh, offs_d, dmask, skb, skt, skh, svb, svt, svh,
                T, R, NW, RH, RW, H, W, PADDED, BLOCK_N,
            )  # fmt: skip
            p, ds = _probs_and_dscores(q, k, v, do, lse, delta, nmask[None, :], scale, PREC)
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
        offs_n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < HD
        nmask, k, v = _kv_tiles(
            K, V, r, offs_n, hh, offs_d, dmask, skb, skt, skh, svb, svt, svh, T, R, NW, RH, RW, H, W, PADDED
        )
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for e in range(tl.load(PTR + r), tl.load(PTR + r + 1)):
            b = tl.load(QIDX + e).to(tl.int64)  # a query region routed to key region r
            for m0 in range(0, T, BLOCK_M):
                offs_m = m0 + tl.arange(0, BLOCK_M)
                mmask = offs_m < T
                qmask = mmask[:, None] & dmask[None, :]
                q = tl.load(_tile(Q, b, sqb, offs_m, sqt, hh, sqh, offs_d), mask=qmask, other=0.0)
                do, lse, delta = _grad_inputs(DO, LSE, DELTA, b, sdb, sdt, sdh, hh, offs_m, offs_d, T, mmask, qmask)
                p, ds = _probs_and_dscores(q, k, v, do, lse, delta, mmask[:, None] & nmask[None, :], scale, PREC)
                dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PREC)
                dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PREC)
        dk = dk * scale
        omask = (offs_n < T)[:, None] & dmask[None, :]  # padded keys get zero gradients
        tl.store(_tile(DK, r, sgb, offs_n, sgt, hh, sgh, offs_d), dk.to(DK.dtype.element_ty), mask=omask)
        tl.store(_tile(DV, r, sgb, offs_n, sgt, hh, sgh, offs_d), dv.to(DV.dtype.element_ty), mask=omask)


def available(t: torch.Tensor) -> bool:
    """Whether the kernels can run on ``t``'s device (CUDA with triton installed, or the interpreter)."""
    return _bra_fwd is not None and (t.is_cuda or INTERPRET)


# ----------------------------------------------------------------------------- launch


def _blocks(tokens: int, head_dim: int):
    """(BLOCK_M, BLOCK_N, BLOCK_D): the largest of 16/32/64 that wastes <= 1/8 of a region's tokens."""
    block = 16
    for b in (32, 64):
        if (-(-tokens // b) * b - tokens) * 8 <= tokens:
            block = b
    return block, block, max(16, 1 << (head_dim - 1).bit_length())


def _launch_args(qkv: torch.Tensor, geom: RegionGeometry):
    """The kernels' size arguments (T, R, NW, RH, RW, H, W) and compile-time settings."""
    tokens, head_dim = qkv.shape[1], qkv.shape[4]
    bm, bn, bd = _blocks(tokens, head_dim)
    fp32_prec = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"  # as torch's fp32 matmuls
    meta = dict(
        HD=head_dim, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, PADDED=bool(geom.padded),
        PREC=fp32_prec if qkv.dtype == torch.float32 else "tf32", num_warps=4 if bm * bn >= 2048 else 2,
    )  # fmt: skip
    sizes = (tokens, geom.regions, geom.n_w, geom.region_h, geom.region_w, geom.height, geom.width)
    return sizes, meta


def _strides(t: torch.Tensor):
    return t.stride(0), t.stride(1), t.stride(2)


def _forward(qkv: torch.Tensor, rows: torch.Tensor, geom: RegionGeometry, scale: float):
    """qkv (B, T, 3, heads, hd), rows (B, k) int32 -> o (B, T, heads, hd) and the rows' log-sum-exp."""
    q, k, v = qkv.unbind(2)
    b, t, heads, hd = q.shape
    sizes, meta = _launch_args(qkv, geom)
    o = qkv.new_empty((b, t, heads, hd))
    lse = torch.empty((b, heads, t), dtype=torch.float32, device=qkv.device)
    grid = (b, heads, triton.cdiv(t, meta["BLOCK_M"]))
    _bra_fwd[grid](
        q, k, v, o, lse, rows, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        sizes[0], rows.shape[1], *sizes[1:], scale, **meta,
    )  # fmt: skip
    return o, lse


def _backward(qkv, rows, geom: RegionGeometry, scale: float, o, lse, grad):
    """Gradient (B, T, 3, heads, hd) of :func:`_forward` with respect to qkv."""
    q, k, v = qkv.unbind(2)
    b, t, heads, hd = q.shape
    sizes, meta = _launch_args(qkv, geom)
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
        sizes[0], k_top, *sizes[1:], scale,
    )  # fmt: skip
    _bra_bwd_dq[(b, heads, triton.cdiv(t, meta["BLOCK_M"]))](q, k, v, grad, dq, lse, delta, rows, *common, **meta)
    _bra_bwd_dkdv[(b, heads, triton.cdiv(t, meta["BLOCK_N"]))](
        q, k, v, grad, dk, dv, lse, delta, ptr, query_of, *common, **meta
    )
    return dqkv


# ----------------------------------------------------------------------------- fallback and autograd


def _config(qkv: torch.Tensor, geom: RegionGeometry):
    return (qkv.device.type, qkv.dtype, bool(geom.padded), _blocks(qkv.shape[1], qkv.shape[4]))


def _guarded(fn, config, *args):
    """Run ``fn``; if a configuration fails the first time it is used, remember it and return None."""
    if config in OK_CONFIGS:
        return fn(*args)
    try:
        out = fn(*args)
    except Exception as err:  # noqa: BLE001  (compilation / launch errors of an untried configuration)
        FAILED_CONFIGS.add(config)
        warnings.warn(f"routed attention: Triton kernel failed ({type(err).__name__}: {err}); "
                      "using the scaled_dot_product_attention path", RuntimeWarning, stacklevel=4)  # fmt: skip
        return None
    OK_CONFIGS.add(config)
    return out


class _TritonRoutedAttention(torch.autograd.Function):
    """Routed attention with the Triton kernels; saves q|k|v (views of the projection), o and lse."""

    @staticmethod
    def forward(ctx, qkv, rows, geom, scale: float):
        o, lse = _forward(qkv, rows, geom, scale)
        ctx.save_for_backward(qkv, rows, o, lse)
        ctx.geom, ctx.scale = geom, scale
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        qkv, rows, o, lse = ctx.saved_tensors
        config = ("backward",) + _config(qkv, ctx.geom)
        dqkv = None
        if config not in FAILED_CONFIGS:
            dqkv = _guarded(_backward, config, qkv, rows, ctx.geom, ctx.scale, o, lse, grad)
        if dqkv is None:  # fallback: recompute with SDPA
            q, k, v = qkv.unbind(2)
            dqkv = qkv.new_empty(qkv.shape)
            dq, dk, dv = dqkv.unbind(2)
            dk.zero_()
            dv.zero_()
            mask = ctx.geom.key_mask(rows.long() % ctx.geom.regions)
            recomputed_grads(q, k, v, rows.long(), mask, ctx.scale, grad, dq, dk, dv)
        return dqkv, None, None, None


def triton_routed_attention(qkv: torch.Tensor, rows: torch.Tensor, geom: RegionGeometry, scale: float):
    """o (B, T, heads, hd) from the Triton kernels, or None where this configuration failed (use SDPA).

    ``qkv`` (B, T, 3, heads, hd) with unit last stride, ``rows`` (B, k) int32. Differentiable
    when ``qkv`` requires gradients (and grad mode is on).
    """
    config = _config(qkv, geom)
    if config in FAILED_CONFIGS:
        return None
    if torch.is_grad_enabled() and qkv.requires_grad:
        return _guarded(_TritonRoutedAttention.apply, config, qkv, rows, geom, scale)
    return _guarded(lambda *a: _forward(*a)[0], config, qkv, rows, geom, scale)
