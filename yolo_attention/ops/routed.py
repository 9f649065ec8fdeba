"""Routed token attention of BRA (arXiv:2303.08810) behind one function, :func:`routed_attention`.

For a query region i with routed regions I_i (k region indices from the routing step), per head:

    o_t = softmax(q_t K_g^T * scale) V_g          K_g, V_g: the real tokens of the regions I_i

Backends (all compute the same function and gradients):

* ``"sdpa"``: ``scaled_dot_product_attention`` on the gathered K/V rows of the routed regions
  (:mod:`yolo_attention.ops.sdpa_gather`); in training either the gathered K/V are kept for
  one fused backward (``recompute=False``) or only q, k, v are kept and each chunk is
  re-gathered and recomputed in backward (``recompute=True``; ``None``: True on CUDA).
* ``"triton"``: the Triton kernels (:mod:`yolo_attention.ops.triton_bra`), which never copy
  K/V; a kernel configuration that fails to compile falls back to SDPA with a warning.
* ``"auto"``: Triton where :func:`yolo_attention.ops.trust.auto_trusts` allows it (a recorded
  GPU check on a matching configuration, or ``YOLO_ATTENTION_TRITON=1``), SDPA otherwise.

Tracing (ONNX export) and ``torch.compile`` always use the SDPA formulation.
"""

from __future__ import annotations

import warnings

import torch

from . import triton_bra
from .geometry import RegionGeometry
from .sdpa_gather import RecomputedRoutedAttention, attend_chunked, attend_gathered
from .trust import ENV_VAR, auto_trusts, env_policy

__all__ = ["BACKENDS", "check_backend", "routed_attention"]

BACKENDS = ("auto", "sdpa", "triton")


def _symbolic() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def check_backend(backend: str, t: torch.Tensor, where: str) -> None:
    """Raise for an unknown ``backend``, or for ``"triton"`` where the kernels cannot run on ``t``.

    ``where`` names the setting in the message, e.g. "BiLevelRoutingAttention: attribute 'kernel'".
    """
    if backend not in BACKENDS:
        raise ValueError(f"{where} must be 'auto', 'triton' or 'sdpa', got {backend!r}")
    if backend == "triton" and not _symbolic() and not triton_bra.available(t):
        raise RuntimeError(
            f"{where} = 'triton' needs a CUDA tensor and the triton package "
            "(or TRITON_INTERPRET=1 set before import, for testing on CPU)"
        )


def _uses_triton(backend: str, qkv: torch.Tensor) -> bool:
    if backend == "sdpa" or not triton_bra.available(qkv) or qkv.shape[-1] > triton_bra.MAX_HEAD_DIM:
        return False
    if backend == "auto":
        return auto_trusts(qkv.device, qkv.dtype)
    if env_policy() is False:  # an explicit "triton" overruled by the environment (warned once per place)
        warnings.warn(f"routed attention: {ENV_VAR}=0 forbids the Triton kernels; using the "
                      "scaled_dot_product_attention path", RuntimeWarning, stacklevel=3)  # fmt: skip
        return False
    return True


def _sdpa(qkv, routes, rows, geometry: RegionGeometry, scale: float, recompute: bool | None) -> torch.Tensor:
    q, k, v = qkv.unbind(3)
    # (N*R, T, heads, hd); k and v contiguous, so that whole regions are contiguous rows to gather
    q, k, v = q.flatten(0, 1), k.contiguous().flatten(0, 1), v.contiguous().flatten(0, 1)
    mask = geometry.key_mask(routes)
    grad = torch.is_grad_enabled() and qkv.requires_grad
    if _symbolic():
        return attend_gathered(q, k, v, rows, mask, scale)
    if grad and (qkv.device.type == "cuda" if recompute is None else recompute):
        return RecomputedRoutedAttention.apply(q, k, v, rows, mask, scale)
    if grad:
        return attend_gathered(q, k, v, rows, mask, scale)
    return attend_chunked(q, k, v, rows, mask, scale)


def routed_attention(
    qkv: torch.Tensor,
    routes: torch.Tensor,
    geometry: RegionGeometry,
    scale: float,
    *,
    backend: str = "auto",
    recompute: bool | None = None,
) -> torch.Tensor:
    """Each query region attends to the tokens of its routed regions (padded tokens masked out).

    Args:
        qkv: (N, R, T, 3, heads, head_dim), q | k | v of every token in the region layout
            (:meth:`RegionGeometry.to_regions`), packed as one projection makes them: the Triton
            backward then writes one gradient tensor instead of three to be re-assembled.
        routes: (N, R, k) integer indices in [0, R) of the regions each query region attends to.
        geometry: the region grid (which tokens are padding).
        scale: logit scale.
        backend: "auto", "sdpa" or "triton" (see the module docstring).
        recompute: SDPA training memory mode: True recomputes in backward, False keeps the
            gathered K/V, None: True on CUDA.

    Returns:
        o (N, R, T, heads, head_dim); rows of padded query tokens hold values to be discarded.
    """
    check_backend(backend, qkv, "routed_attention: argument 'backend'")
    # routes as rows of the (N*R)-region batch. The batch size is read from routes: in ONNX export the
    # exporter may fix sizes read from qkv (an unflattened view) to the example's
    n = routes.shape[0]
    rows = (routes + torch.arange(n, device=routes.device).view(n, 1, 1) * geometry.regions).flatten(0, 1)
    o = None
    if not _symbolic() and _uses_triton(backend, qkv):
        qkv5 = qkv.flatten(0, 1)  # a view when the projection kept channels-last
        if qkv5.stride(-1) != 1:
            qkv5 = qkv5.contiguous()
        o = triton_bra.triton_routed_attention(qkv5, rows.to(torch.int32), geometry, scale)
    if o is None:
        o = _sdpa(qkv, routes, rows, geometry, scale, recompute)
    return o.view_as(qkv[:, :, :, 0])
