"""Operators behind the attention modules, kept apart from the modules (as BiFormer keeps its ``ops/``).

Routed attention of BRA (Zhu et al., BiFormer, arXiv:2303.08810):

* :func:`routed_attention`: the one entry point (backends "auto", "sdpa", "triton");
* :class:`RegionGeometry` / :func:`region_grid`: the region grid and the region layout;
* :mod:`~yolo_attention.ops.trust`: when "auto" trusts the Triton kernels (a recorded GPU
  check in ``triton_verified.json``, or ``YOLO_ATTENTION_TRITON``);
* :mod:`~yolo_attention.ops.sdpa_gather` and :mod:`~yolo_attention.ops.triton_bra`: the backends.
"""

from .geometry import RegionGeometry, region_grid
from .routed import BACKENDS, check_backend, routed_attention

__all__ = ["routed_attention", "check_backend", "BACKENDS", "RegionGeometry", "region_grid"]
