"""Routed attention with ``scaled_dot_product_attention`` on gathered regions (the default backend).

Each query region attends to the tokens of its k routed regions: their K and V rows are
gathered with ``index_select`` (whole regions are contiguous rows of the region layout) and
one fused SDPA call per batch of query regions computes the attention without keeping the
attention matrix. Without gradients the gather runs in chunks of query regions, so the
transient top-k copies of K/V stay bounded. For training, :class:`RecomputedRoutedAttention`
keeps only q, k, v and re-gathers / recomputes each chunk in the backward pass.

Shapes: q, k, v are (B, T, heads, head_dim) with B = N * R regions of T tokens; ``rows``
(B, k) holds the indices in [0, B) of the key regions of each query region; ``mask`` is None
or (B, 1, 1, k*T) bool marking the real (not padded) keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["attend_gathered", "attend_chunked", "recomputed_grads", "RecomputedRoutedAttention"]

CHUNK_ELEMENTS = 1 << 22  # gathered K (or V) elements per chunk below which one chunk is used


def gather_regions(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """t (B, T, heads, hd) contiguous, rows (b, k) region indices -> (b, heads, k*T, hd), a copy."""
    g = t.flatten(1).index_select(0, rows.reshape(-1))
    return g.view(rows.shape[0], -1, t.shape[2], t.shape[3]).transpose(1, 2)


def attend_gathered(q, k, v, rows, mask, scale: float) -> torch.Tensor:
    """Each query region (q: (B, T, heads, hd)) attends to the tokens of its ``rows`` regions of k, v.

    Returns (B, T, heads, hd).
    """
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), gather_regions(k, rows), gather_regions(v, rows), attn_mask=mask, scale=scale
    )
    return o.transpose(1, 2)


def chunk_bounds(q: torch.Tensor, rows: torch.Tensor, fraction: float = 1.0):
    """Split the B query regions so that a chunk's gathered K holds about
    max(CHUNK_ELEMENTS, fraction * |q|) elements (all top-k copies together hold topk * |q|)."""
    b, k_top = rows.shape
    per_row = k_top * q[0].numel()
    step = max(1, max(CHUNK_ELEMENTS, int(fraction * q.numel())) // per_row)
    return [(i, min(b, i + step)) for i in range(0, b, step)]


def attend_chunked(q, k, v, rows, mask, scale: float) -> torch.Tensor:
    """:func:`attend_gathered` over chunks of query regions (bounded transient memory)."""
    bounds = chunk_bounds(q, rows)
    if len(bounds) == 1:
        return attend_gathered(q, k, v, rows, mask, scale)
    o = q.new_empty(q.shape)
    for i, j in bounds:
        o[i:j] = attend_gathered(q[i:j], k, v, rows[i:j], None if mask is None else mask[i:j], scale)
    return o


def recomputed_grads(q, k, v, rows, mask, scale: float, grad, dq, dk, dv) -> None:
    """Gradients of :func:`attend_gathered` into dq, dk, dv (dk, dv zeroed), chunk by chunk:
    each chunk's K/V regions are re-gathered and its attention recomputed; gradients of the
    gathered K/V are accumulated with ``index_add_``."""
    k, v = k.contiguous(), v.contiguous()
    # half of |q| per chunk: gathered K, V and their gradients hold about 2 |q| at a time
    for i, j in chunk_bounds(q, rows, 0.5):
        r = rows[i:j]
        with torch.enable_grad():
            qc = q[i:j].detach().requires_grad_()
            kg = gather_regions(k, r).requires_grad_()
            vg = gather_regions(v, r).requires_grad_()
            o = F.scaled_dot_product_attention(
                qc.transpose(1, 2), kg, vg, attn_mask=None if mask is None else mask[i:j], scale=scale
            )
            gq, gk, gv = torch.autograd.grad(o, (qc, kg, vg), grad[i:j].transpose(1, 2))
        dq[i:j] = gq
        flat = r.reshape(-1)
        dk.index_add_(0, flat, gk.transpose(1, 2).reshape(-1, *k.shape[1:]))
        dv.index_add_(0, flat, gv.transpose(1, 2).reshape(-1, *v.shape[1:]))


class RecomputedRoutedAttention(torch.autograd.Function):
    """Routed attention that saves only q, k, v (and the routing) for backward.

    The backward pass re-gathers each chunk's K/V regions and recomputes its attention, so the
    top-k copies of K/V and the attention state live for one chunk at a time.
    """

    @staticmethod
    def forward(ctx, q, k, v, rows, mask, scale: float):
        q = q.contiguous()
        ctx.save_for_backward(q, k, v, rows, mask)
        ctx.scale = scale
        return attend_chunked(q, k, v, rows, mask, scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, rows, mask = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        recomputed_grads(q, k, v, rows, mask, ctx.scale, grad, dq, dk, dv)
        return dq, dk, dv, None, None, None
