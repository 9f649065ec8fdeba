"""Turn captured attention tensors into panels, one way per tap kind (see ``registry.TAP_KINDS``).

* ``channel`` (N, K, 1, 1) or (N, K): collected over the image set for a sorted bar plot; with layout
  ``branch-major`` (N, M*C, 1, 1), each channel's M branch weights stacked;
* ``spatial`` (N, K, H or 1, W or 1): the mean of the K maps (channels, groups) over the image, on the
  range of its values; with layout ``grid`` (N, K, s, t), the s x t cells spread over the module's input
  as adaptive pooling lays them out, drawn as cells;
* ``maps`` (N, K, H, W) or (N, K, H*W): the most used of the K maps; usage is the mean of a maps tap
  of the same module that sums to one over K (A2's descriptor weights), else the maps' peak;
* ``routing`` (N, R, k) region indices: the query region and the k regions it routes to, and the
  query region's token attention (asked of the module that owns the router);
* ``tokens`` (N, heads, Q, L) or (N, Q, L): the attention of the query position (Q = L = H*W) or the mean
  over queries.

Anything of an unexpected shape becomes a note, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..modules.biformer import region_grid
from .detectors import Placement
from .figures import Box, Panel
from .taps import AttentionLayer, Capture

__all__ = ["ImageView", "layer_panels", "tap_panels", "channel_values", "region_token_attention", "query_region",
           "TOP_MAPS"]

TOP_MAPS = 4  # maps shown per maps tap
QUERY_COLOR, ROUTED_COLOR = (255, 255, 255), (255, 220, 0)


@dataclass(frozen=True)
class ImageView:
    """One image of a batch: its pixels, where it lies in the model input, and the query point."""

    index: int  # position in the batch
    rgb: np.ndarray
    placement: Placement
    query: tuple[float, float]  # image pixels (x, y)
    query_from: str  # where the query point came from, for titles


class Notes(list):
    """Notes about one image's pictures (an unexpected shape, a missing method); kept in order, once each."""

    def add(self, text: str) -> None:
        if text not in self:
            self.append(text)


def map_to_image(m: torch.Tensor, view: ImageView, mode: str = "bilinear") -> np.ndarray:
    """A map (h, w) over the model input -> the part over the image, at input resolution."""
    corners = {"align_corners": False} if mode == "bilinear" else {}
    up = F.interpolate(m[None, None].float(), size=view.placement.input_shape, mode=mode, **corners)
    return view.placement.crop(up[0, 0].numpy())


def grid_to_image(m: torch.Tensor, grid_of: tuple[int, int], view: ImageView) -> np.ndarray:
    """Cells (s, t) over a module input of ``grid_of`` (H, W) -> the part over the image: each input position
    takes the cells adaptive pooling assigns it (as MLCA's UNAP does), then each position is a block of pixels."""
    cells = F.adaptive_avg_pool2d(m[None, None].float(), grid_of)[0, 0]
    return map_to_image(cells, view, mode="nearest")


def query_cell(view: ImageView, h: int, w: int) -> tuple[int, int]:
    """(row, col) of the query point on an (h, w) map covering the model input."""
    xi, yi = view.placement.to_input(*view.query)
    hin, win = view.placement.input_shape
    return min(max(int(yi * h / hin), 0), h - 1), min(max(int(xi * w / win), 0), w - 1)


def _tap_tensor(layer: AttentionLayer, k: int, cap: Capture, notes: Notes) -> torch.Tensor | None:
    tap = layer.info.taps[k]
    t = cap.tensors.get((layer.path, k))
    if t is None:
        notes.add(f"{layer.label}: tap {tap.module!r} produced no tensor in this forward pass")
        return None
    return t


def _as_maps(t: torch.Tensor, shape: tuple[int, ...] | None) -> torch.Tensor | None:
    """(K, H, W) from (K, H, W) or (K, H*W) with the module's input (N, C, H, W)."""
    if t.ndim == 3:
        return t
    if t.ndim == 2 and shape is not None and len(shape) == 4 and t.shape[1] == shape[2] * shape[3]:
        return t.view(t.shape[0], shape[2], shape[3])
    return None


def _usage(layer: AttentionLayer, cap: Capture, n: int) -> torch.Tensor | None:
    """Per-map usage (K,): the mean over positions of a maps tap that is a distribution over K."""
    for k, tap in enumerate(layer.info.taps):
        t = cap.tensors.get((layer.path, k))
        if tap.kind != "maps" or t is None or t.ndim < 3 or t.shape[1] < 2:
            continue
        flat = t[n].flatten(1)
        if torch.allclose(flat.sum(0), torch.ones(()), atol=1e-3):
            return flat.mean(1)
    return None


def _maps_panels(layer, k, t, cap, view, notes) -> list[Panel]:
    tap = layer.info.taps[k]
    maps = _as_maps(t[view.index], cap.input_shapes.get(layer.path))
    if maps is None:
        notes.add(f"{layer.label}: maps tap {tap.module!r} has shape {tuple(t.shape)}, expected (N, K, H, W) or "
                  f"(N, K, H*W) for input {cap.input_shapes.get(layer.path)}: not visualised")
        return []
    usage = _usage(layer, cap, view.index)
    if usage is not None and len(usage) == len(maps):
        order = torch.argsort(usage, descending=True, stable=True)[:TOP_MAPS].tolist()
        what = [f"used {float(usage[j]):.1%}" for j in order]
    else:
        peak = maps.flatten(1).amax(1)
        order = torch.argsort(peak, descending=True, stable=True)[:TOP_MAPS].tolist()
        what = [f"peak {float(peak[j]):.3g}" for j in order]
    name = tap.name or tap.module
    return [Panel(f"{layer.label}: {name}, map {j} ({u})", view.rgb, map_to_image(maps[j], view))
            for j, u in zip(order, what)]


def _averaged(k: int, channels: int | None) -> str:
    if k == 1:
        return ""
    return f"mean of its {k} per-channel maps, " if k == channels else f"mean of {k} maps, "


def _extent(h: int, w: int, shape: tuple[int, ...] | None, grid: bool) -> str:
    if grid:
        return f"{h}x{w} grid over the {shape[2]}x{shape[3]} input" if shape else f"{h}x{w} grid"
    if w == 1 and h > 1:
        return f"one weight per row, {h} rows"
    if h == 1 and w > 1:
        return f"one weight per column, {w} columns"
    return f"{h}x{w} map"


def _spatial_panels(layer, k, t, cap, view, notes) -> list[Panel]:
    """The mean of the tap's maps, drawn on the range of its values (the colour bar gives the numbers):
    a gate that varies between 0.45 and 0.55 shows where it passes more, not a uniform colour."""
    tap = layer.info.taps[k]
    m = t[view.index]
    if m.ndim != 3:
        notes.add(f"{layer.label}: spatial tap {tap.module!r} has shape {tuple(t.shape)}, expected (N, K, H, W)")
        return []
    shape = cap.input_shapes.get(layer.path)
    grid = tap.layout == "grid"
    mean = m.mean(0)
    heat = grid_to_image(mean, shape[2:], view) if grid and shape else map_to_image(mean, view)
    what = _averaged(m.shape[0], shape[1] if shape else None) + _extent(*m.shape[1:], shape, grid)
    return [Panel(f"{layer.label}: {tap.name or tap.module} ({what})", view.rgb, heat)]


def _tokens_panels(layer, k, t, cap, view, notes) -> list[Panel]:
    tap = layer.info.taps[k]
    shape = cap.input_shapes.get(layer.path)
    a = t[view.index]
    if a.ndim != 3 or shape is None or a.shape[-1] != shape[2] * shape[3]:
        notes.add(f"{layer.label}: tokens tap {tap.module!r} has shape {tuple(t.shape)}, expected (N, heads, Q, H*W)"
                  f" for input {shape}: not visualised")
        return []
    h, w = shape[2:]
    a = a.mean(0)  # over heads (the recorder already averaged them): (Q, L)
    if a.shape[0] == h * w:
        r, c = query_cell(view, h, w)
        m, what = a[r * w + c], f"attention of the query position ({view.query_from})"
    else:
        m, what = a.mean(0), "mean attention over the queries"
    return [Panel(f"{layer.label}: {tap.name or tap.module}; {what}", view.rgb, map_to_image(m.view(h, w), view))]


def query_region(view: ImageView, h: int, w: int, n_win: int) -> tuple[int, tuple[int, int, int, int]]:
    """The region holding the query point, and the region grid (nh, rh, nw, rw) of an (h, w) map."""
    nh, rh, _ = region_grid(h, n_win)
    nw, rw, _ = region_grid(w, n_win)
    r, c = query_cell(view, h, w)
    return (r // rh) * nw + c // rw, (nh, rh, nw, rw)


def region_box(region: int, grid, h: int, w: int, view: ImageView, label: str, color, dashed=False) -> Box:
    """A region of an (h, w) map as a rectangle in image pixels (clipped to the image)."""
    _, rh, nw, rw = grid
    ri, rj = divmod(region, nw)
    hin, win = view.placement.input_shape
    sy, sx = hin / h, win / w
    b = torch.tensor([[rj * rw * sx, ri * rh * sy, min((rj + 1) * rw, w) * sx, min((ri + 1) * rh, h) * sy]])
    x0, y0, x1, y1 = view.placement.boxes_to_image(b)[0].tolist()
    return Box(x0, y0, x1, y1, label, color, dashed)


def region_token_attention(owner, x: torch.Tensor, region: int) -> torch.Tensor | None:
    """The token attention of one query region, as a map (N=1, H, W) over the owner's input grid.

    The one call into the module's own method, ``region_attention(x, region)`` (the probabilities
    the forward pass uses, heads x query tokens x routed keys): averaged over heads and the region's
    real query tokens, and placed at the keys' positions. None when the module has no such method.
    """
    fn = getattr(owner, "region_attention", None)
    if fn is None:
        return None
    with torch.no_grad():
        ra = fn(x, region)
    geo = ra.geometry
    queries = geo.valid_tokens(ra.probs.device)[region]
    weights = ra.probs.float().mean(0)[queries].mean(0)  # (k*T,): what the region's queries attend to
    grid = weights.new_zeros(geo.regions, geo.tokens)
    grid.index_add_(0, ra.routes.long(), weights.view(-1, geo.tokens))
    return geo.to_map(grid.view(1, geo.regions, geo.tokens, 1), 1)[:, 0]


def _routing_panels(layer, k, t, cap, view, notes) -> list[Panel]:
    tap = layer.info.taps[k]
    owner = layer.module.get_submodule(tap.module.rpartition(".")[0])
    x = cap.owner_inputs.get((layer.path, k))
    n_win = getattr(owner, "n_win", None)
    if x is None or n_win is None or t.ndim != 3:
        notes.add(f"{layer.label}: routing tap {tap.module!r}: needs (N, R, k) indices, the owner's input and its "
                  f"n_win (got shape {tuple(t.shape)}, n_win {n_win}): not visualised")
        return []
    h, w = x.shape[-2:]
    q, grid = query_region(view, h, w, n_win)
    if t.shape[1] != grid[0] * grid[2]:
        notes.add(f"{layer.label}: {t.shape[1]} routed query regions, but an {h}x{w} map with n_win={n_win} has "
                  f"{grid[0] * grid[2]}: not visualised")
        return []
    routed = t[view.index, q].tolist()
    qbox = region_box(q, grid, h, w, view, f"query region {q}", QUERY_COLOR, dashed=True)
    boxes = tuple(region_box(r, grid, h, w, view, f"routed region {r}", ROUTED_COLOR) for r in routed) + (qbox,)
    title = f"{layer.label}: query region {q} ({view.query_from}) routes to regions {routed}"
    panels = [Panel(title, view.rgb, boxes=boxes)]
    a = region_token_attention(owner, x[view.index : view.index + 1], q)
    if a is None or tuple(a.shape) != (1, h, w):
        got = "no region_attention method" if a is None else f"region_attention gave a {tuple(a.shape)} map"
        notes.add(f"{layer.label}: token attention not drawn ({got}; expected a (1, {h}, {w}) map)")
    else:
        panels.append(Panel(f"{layer.label}: token attention of query region {q}", view.rgb,
                            map_to_image(a[0].float().cpu(), view), boxes=(qbox,)))
    return panels


_PANELS = {"spatial": _spatial_panels, "maps": _maps_panels, "routing": _routing_panels, "tokens": _tokens_panels}


def tap_panels(layer: AttentionLayer, k: int, cap: Capture, view: ImageView, notes: Notes) -> list[Panel]:
    """The per-image pictures of tap ``k`` of one attention layer (none for a channel tap: see channel_values)."""
    tap = layer.info.taps[k]
    if tap.kind == "channel":
        return []
    t = _tap_tensor(layer, k, cap, notes)
    return [] if t is None else _PANELS[tap.kind](layer, k, t, cap, view, notes)


def layer_panels(layer: AttentionLayer, cap: Capture, view: ImageView, notes: Notes) -> list[Panel]:
    """The per-image pictures of one attention layer (channel taps are drawn over the image set instead)."""
    return [p for k in range(len(layer.info.taps)) for p in tap_panels(layer, k, cap, view, notes)]


def channel_values(layer: AttentionLayer, cap: Capture, notes: Notes) -> dict[int, np.ndarray]:
    """Channel weights of each channel tap (by tap number) in one forward pass: (N, K), or (N, M, C) for a
    ``branch-major`` tap (M branches of the module's C channels)."""
    out = {}
    for k, tap in enumerate(layer.info.taps):
        if tap.kind != "channel":
            continue
        t = _tap_tensor(layer, k, cap, notes)
        if t is None:
            continue
        if not (t.ndim == 2 or (t.ndim == 4 and t.shape[2:] == (1, 1))):
            notes.add(f"{layer.label}: channel tap {tap.module!r} has shape {tuple(t.shape)}, expected (N, C, 1, 1)")
            continue
        v = t.reshape(t.shape[0], -1).numpy()
        if tap.layout == "branch-major":
            c = cap.input_shapes.get(layer.path, (0, 0))[1]
            if not c or v.shape[1] % c:
                notes.add(f"{layer.label}: branch-major tap {tap.module!r} holds {v.shape[1]} weights, not a multiple "
                          f"of the module's {c} input channels: not visualised")
                continue
            v = v.reshape(v.shape[0], -1, c)
        out[k] = v
    return out
