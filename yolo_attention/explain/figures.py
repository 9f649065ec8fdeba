"""Drawing for ``explain``: panels (an image, a heatmap over it, boxes, text) composed into a grid.

Panels are composed with Pillow (its bundled font, OpenCV's JET colour map as in ultralytics'
CAM overlays): tens of pictures per image cost milliseconds, where matplotlib took seconds each.
The channel bar plots, which need axes, use matplotlib's object API (no pyplot state).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["Box", "Panel", "ChannelSeries", "save_grid", "save_channel_plots", "PANEL_WIDTH"]

PANEL_WIDTH = 360  # pixels
_PAD = 6
_BAR = 8  # colour bar height
_HEAT_ALPHA = 0.5


@dataclass(frozen=True)
class Box:
    """A rectangle in image pixels."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str = ""
    color: tuple[int, int, int] = (0, 255, 0)
    dashed: bool = False


@dataclass
class Panel:
    """One picture: an RGB image, optionally a heatmap stretched over it and boxes; or only text."""

    title: str
    image: np.ndarray | None = None  # (H, W, 3) uint8
    heat: np.ndarray | None = None  # (h, w) float, stretched over the whole image
    vmin: float | None = None  # colour scale (None: the heatmap's min / max)
    vmax: float | None = None
    boxes: tuple[Box, ...] = ()
    text: str = ""


@dataclass(frozen=True)
class ChannelSeries:
    """Channel weights of one tap over the image set: ``values`` (images, K), or (images, M, C) for the
    weights of M branches per channel; ``channels`` is the module's C where known (K may differ, e.g. C/2)."""

    title: str
    values: np.ndarray
    channels: int | None = None


@lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable bundled font
    except (TypeError, OSError, AttributeError):
        return ImageFont.load_default()


def _wrap(text: str, size: int, width: int) -> list[str]:
    font = _font(size)
    chars = max(8, int(width / max(font.getlength("n"), 1)))
    lines = []
    for para in text.split("\n"):
        lines += textwrap.wrap(para, chars) or [""]
    return lines


def _text_block(lines: list[str], size: int, width: int, color=(0, 0, 0)):
    from PIL import Image, ImageDraw

    step = size + 3
    im = Image.new("RGB", (width, step * len(lines) + 2), "white")
    draw = ImageDraw.Draw(im)
    for i, line in enumerate(lines):
        draw.text((2, 1 + i * step), line, fill=color, font=_font(size))
    return im


def _flat(vmin: float, vmax: float) -> bool:
    """A range too small to colour: rounding noise would be stretched into a pattern."""
    return vmax - vmin <= 1e-6 * max(abs(vmin), abs(vmax), 1e-30)


def _colored(heat: np.ndarray, vmin: float, vmax: float, size: tuple[int, int]) -> np.ndarray:
    import cv2

    h = cv2.resize(heat.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    norm = np.zeros_like(h) if _flat(vmin, vmax) else np.clip((h - vmin) / (vmax - vmin), 0, 1)
    return cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]


def _colorbar(vmin: float, vmax: float, width: int):
    from PIL import Image, ImageDraw

    ramp = _colored(np.linspace(vmin, vmax, 256)[None], vmin, vmax, (width - 2 * _PAD, _BAR))
    im = Image.new("RGB", (width, _BAR + 16), "white")
    im.paste(Image.fromarray(ramp), (_PAD, 0))
    draw = ImageDraw.Draw(im)
    lo, hi = _labels(vmin, vmax)
    draw.text((_PAD, _BAR + 1), lo, fill=(0, 0, 0), font=_font(11))
    draw.text((width - _PAD - _font(11).getlength(hi), _BAR + 1), hi, fill=(0, 0, 0), font=_font(11))
    if vmin < 0 < vmax:  # a signed map (an unsquashed weight): mark where its sign changes
        x = _PAD + (width - 2 * _PAD) * (-vmin) / (vmax - vmin)
        draw.line([(x, 0), (x, _BAR + 3)], fill=(0, 0, 0), width=1)
        if 50 < x < width - 50:  # clear of the end labels
            draw.text((x - _font(11).getlength("0") / 2, _BAR + 1), "0", fill=(0, 0, 0), font=_font(11))
    if _nearly_uniform(vmin, vmax):  # the colours stretch a tiny range: say so where the eye looks
        mid = f"nearly uniform: spread {vmax - vmin:.2g}"
        draw.text(((width - _font(11).getlength(mid)) / 2, _BAR + 1), mid, fill=(150, 0, 0), font=_font(11))
    return im


def _nearly_uniform(vmin: float, vmax: float) -> bool:
    """A range under 0.1% of the values: drawn on its own range (the pattern is real), but flagged."""
    return not _flat(vmin, vmax) and vmax - vmin < 1e-3 * max(abs(vmin), abs(vmax))


def _labels(vmin: float, vmax: float) -> tuple[str, str]:
    """Colour-bar end labels with enough digits to differ (a near-uniform softmax spans 0.01562 to 0.01563)."""
    if _flat(vmin, vmax):
        return f"constant {vmin:.4g}", ""
    for digits in range(3, 9):
        lo, hi = f"{vmin:.{digits}g}", f"{vmax:.{digits}g}"
        if lo != hi:
            break
    return lo, hi


def _rectangle(draw, xy, color, dashed: bool) -> None:
    x0, y0, x1, y1 = xy
    if not dashed:
        draw.rectangle(xy, outline=color, width=2)
        return
    for a, b in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        n = max(int(np.hypot(b[0] - a[0], b[1] - a[1]) // 6), 1)
        for i in range(0, n, 2):  # every other 6-pixel segment
            t0, t1 = i / n, min((i + 1) / n, 1.0)
            draw.line([(a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                       (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)], fill=color, width=2)


def _draw_boxes(im, boxes: tuple[Box, ...], scale: float) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(im)
    font = _font(10)
    for b in boxes:
        xy = (b.x0 * scale, b.y0 * scale, max(b.x1 * scale, b.x0 * scale + 1), max(b.y1 * scale, b.y0 * scale + 1))
        _rectangle(draw, xy, b.color, b.dashed)
        if b.label:
            w = font.getlength(b.label)
            y = max(xy[1] - 12, 0)
            draw.rectangle((xy[0], y, xy[0] + w + 3, y + 12), fill=b.color)
            draw.text((xy[0] + 1, y), b.label, fill=(0, 0, 0), font=font)


def render_panel(p: Panel, width: int = PANEL_WIDTH):
    """One panel as a PIL image: title, picture (with heatmap, boxes, colour bar), or text."""
    from PIL import Image

    parts = [_text_block(_wrap(p.title, 12, width), 12, width)]
    if p.image is not None:
        h, w = p.image.shape[:2]
        scale = width / w
        size = (width, max(round(h * scale), 1))
        base = np.asarray(Image.fromarray(p.image).resize(size, Image.BILINEAR)).astype(np.float32)
        if p.heat is not None:
            vmin = float(np.nanmin(p.heat)) if p.vmin is None else p.vmin
            vmax = float(np.nanmax(p.heat)) if p.vmax is None else p.vmax
            base = (1 - _HEAT_ALPHA) * base + _HEAT_ALPHA * _colored(p.heat, vmin, vmax, size)
        pic = Image.fromarray(base.round().clip(0, 255).astype(np.uint8))
        _draw_boxes(pic, p.boxes, scale)
        parts.append(pic)
        if p.heat is not None:
            parts.append(_colorbar(vmin, vmax, width))
    if p.text:
        parts.append(_text_block(_wrap(p.text, 12, width), 12, width, color=(120, 40, 40)))
    out = Image.new("RGB", (width, sum(q.height for q in parts)), "white")
    y = 0
    for q in parts:
        out.paste(q, (0, y))
        y += q.height
    return out


def save_grid(path: Path, panels: list[Panel], ncols: int, title: str = "") -> Path:
    """Lay ``panels`` out row by row, ``ncols`` to a row (rows as tall as their tallest panel); write a PNG."""
    from PIL import Image

    ncols = max(1, min(ncols, len(panels)))
    tiles = [render_panel(p) for p in panels]
    rows = [tiles[i : i + ncols] for i in range(0, len(tiles), ncols)]
    width = ncols * PANEL_WIDTH + (ncols + 1) * _PAD
    head = _text_block(_wrap(title, 14, width - 2 * _PAD), 14, width - 2 * _PAD) if title else None
    height = (head.height + _PAD if head else 0) + sum(max(t.height for t in r) + _PAD for r in rows) + _PAD
    canvas = Image.new("RGB", (width, height), "white")
    y = _PAD
    if head:
        canvas.paste(head, (_PAD, y))
        y += head.height + _PAD
    for r in rows:
        for j, t in enumerate(r):
            canvas.paste(t, (_PAD + j * (PANEL_WIDTH + _PAD), y))
        y += max(t.height for t in r) + _PAD
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _channel_axes(ax, s: ChannelSeries) -> None:
    if s.values.ndim == 3:
        _branch_axes(ax, s)
        return
    v = s.values
    order = np.argsort(-v.mean(0), kind="stable")
    mean = v.mean(0)[order]
    _bars(ax, mean, np.zeros_like(mean), "C0", "mean over images")
    _spread(ax, v, order)
    k = v.shape[1]
    if s.channels in (None, k):
        what, top = f"C={k}", "top channels"
    else:
        what, top = f"{k} weights, module C={s.channels}", "top entries"
    title = (f"{s.title} ({what}, {len(v)} image(s); means {mean[-1]:.3g} to {mean[0]:.3g}; "
             f"{top} {', '.join(str(int(c)) for c in order[:5])})")
    _decorate(ax, title, "channels, sorted by mean weight", "weight", len(mean))


def _branch_axes(ax, s: ChannelSeries) -> None:
    """Each channel's M branch weights stacked (they sum to one for a selection such as SK's), channels
    sorted by the weight of branch 0, with the spread of that weight over the images."""
    v = s.values
    mean = v.mean(0)  # M, C
    order = np.argsort(-mean[0], kind="stable")
    bottom = np.zeros(mean.shape[1])
    for m in range(mean.shape[0]):
        _bars(ax, mean[m, order], bottom, f"C{0 if m == 0 else m + 1}", f"branch {m}, mean over images")
        bottom = bottom + mean[m, order]
    _spread(ax, v[:, 0], order)
    title = (f"{s.title} (M={mean.shape[0]} branches x C={mean.shape[1]}, {len(v)} image(s); "
             f"most on branch 0: channels {', '.join(str(int(c)) for c in order[:5])})")
    _decorate(ax, title, "channels, sorted by the mean weight of branch 0", "weight, stacked over branches",
              mean.shape[1])


def _bars(ax, heights: np.ndarray, bottom: np.ndarray, color: str, label: str) -> None:
    """Adjacent bars of width 1 centred on 0 .. K-1, drawn as one filled step outline: one artist for
    hundreds of channels, where a patch per bar took seconds."""
    ax.stairs(bottom + heights, np.arange(len(heights) + 1) - 0.5, baseline=bottom, fill=True, color=color,
              label=label)


def _spread(ax, v: np.ndarray, order: np.ndarray) -> None:
    """The 10th-90th percentile band of each channel's weight over the images (images, C)."""
    if len(v) > 1:
        lo, hi = np.percentile(v, [10, 90], axis=0)
        ax.fill_between(np.arange(len(order)), lo[order], hi[order], step="mid", color="C1", alpha=0.5, zorder=3,
                        label="10th-90th percentile over images")
    if len(ax.get_legend_handles_labels()[0]) > 1:  # one series alone needs no legend
        ax.legend(fontsize=6, loc="upper right")


def _decorate(ax, title: str, xlabel: str, ylabel: str, n: int) -> None:
    ax.set_title(textwrap.fill(title, 90), fontsize=7)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.set_xlim(-0.5, n - 0.5)
    ax.tick_params(labelsize=6)
    ax.grid(axis="y", alpha=0.3)


def save_channel_plots(path: Path, series: list[ChannelSeries], title: str = "") -> Path:
    """One sorted bar plot per channel tap, with the spread of each channel's weight across the images."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 1.9 * len(series) + 0.4), dpi=100)
    axes = np.atleast_1d(fig.subplots(len(series), 1, squeeze=False)).ravel()
    for ax, s in zip(axes, series):
        _channel_axes(ax, s)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
