"""Region geometry of bi-level routing attention (arXiv:2303.08810): the grid and the region layout.

A map of H x W tokens is cut into n_h x n_w regions of region_h x region_w tokens. The region
size is ceil(H / S) x ceil(W / S) for S = ``n_win`` regions per side (fewer regions where S
does not divide well; one region per row/column on sides shorter than S), so the map is
zero-padded at the bottom/right by less than one region and no region is empty.

The *region layout* of an (N, C, H, W) map is (N, R, T, C) with R = n_h * n_w regions
(row-major over the grid) and T = region_h * region_w tokens per region (row-major inside the
region): every region is a contiguous block of rows, which is what the attention backends
gather.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["RegionGeometry", "region_grid"]


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


class RegionGeometry(NamedTuple):
    """The region grid of one map size.

    Sizes are Python ints, or traced 0-dim tensors while exporting (``torch.jit.trace``).
    ``padded`` says whether the grid covers more than the map (always True while tracing, so
    that one exported graph serves every size).
    """

    n_h: int  # regions along H
    n_w: int  # regions along W
    region_h: int  # tokens per region along H
    region_w: int  # tokens per region along W
    height: int  # H of the map (real tokens)
    width: int  # W of the map
    padded: bool

    @classmethod
    def of(cls, height, width, n_win: int) -> RegionGeometry:
        """The grid of an H x W map with ``n_win`` regions per side (see the module docstring)."""
        n_h, region_h, padded_h = region_grid(height, n_win)
        n_w, region_w, padded_w = region_grid(width, n_win)
        if torch.compiler.is_compiling():
            # with dynamic shapes, inductor cannot order strides built from these ceil/min terms;
            # len(range(s)) makes dynamo specialise the grid (sizes sharing a grid share a graph)
            n_h, region_h, n_w, region_w = (len(range(v)) for v in (n_h, region_h, n_w, region_w))
            padded_h, padded_w = n_h * region_h, n_w * region_w
        # traced sizes are tensors: keep one general (padded) graph
        padded = torch.jit.is_tracing() or padded_h != height or padded_w != width
        return cls(n_h, n_w, region_h, region_w, height, width, padded)

    @property
    def regions(self):
        """R, the number of regions."""
        return self.n_h * self.n_w

    @property
    def tokens(self):
        """T, the tokens of one region (padded ones included)."""
        return self.region_h * self.region_w

    def routed(self, topk: int):
        """Regions routed to each query region: ``topk`` clamped to R."""
        return _clamp_max(self.regions, topk)

    def to_regions(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, R, T, C), zero-padded at the bottom/right (one copy)."""
        n = x.shape[0]
        if self.padded:
            x = F.pad(x, (0, self.n_w * self.region_w - self.width, 0, self.n_h * self.region_h - self.height))
        x = x.reshape(n, -1, self.n_h, self.region_h, self.n_w, self.region_w)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(n, self.regions, self.tokens, -1)

    def to_map(self, t: torch.Tensor, channels: int) -> torch.Tensor:
        """(N, R, T, ...) with ``channels`` elements per token -> (N, C, H, W), the padding cropped."""
        # the batch size is left to reshape (-1): read from a traced attention output, ONNX export
        # would fix it to the example's
        nh, nw, rh, rw = self.n_h, self.n_w, self.region_h, self.region_w
        t = t.reshape(-1, nh, nw, rh, rw, channels).permute(0, 5, 1, 3, 2, 4).reshape(-1, channels, nh * rh, nw * rw)
        return t[:, :, : self.height, : self.width] if self.padded else t

    def valid_tokens(self, device=None) -> torch.Tensor:
        """(R, T) bool: True for the tokens of each region that lie on the map (not padding)."""
        vh = (torch.arange(self.n_h * self.region_h, device=device) < self.height).view(self.n_h, 1, self.region_h, 1)
        vw = (torch.arange(self.n_w * self.region_w, device=device) < self.width).view(1, self.n_w, 1, self.region_w)
        return (vh & vw).reshape(self.regions, self.tokens)

    def key_mask(self, routes: torch.Tensor) -> torch.Tensor | None:
        """Mask of the real keys for SDPA: routes (..., k) region indices in [0, R) -> (B, 1, 1, k*T)
        bool, B the product of the leading sizes. None when the grid has no padding (every key is real).
        """
        if not self.padded:
            return None
        return self.valid_tokens(routes.device)[routes].flatten(-2).flatten(0, -2)[:, None, None, :]
