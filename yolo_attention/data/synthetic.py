"""Deterministic synthetic object-detection dataset in YOLO format.

This is the embedded default dataset of ``yolo-attention ablate``: small enough to train
yolov8n variants for a few epochs on a laptop CPU, hard enough that a small detector does
not saturate it after a few epochs, and built so that context can matter:

* **shape, not colour, decides the class.** Every class has a preferred hue, but hues are
  jittered, a quarter of the objects take any hue, and distractors borrow class hues too.
* **hard negatives.** Unlabelled clutter is drawn from shapes that look like the classes
  without being them (elongated ellipses next to circles, long bars next to squares,
  irregular blobs next to stars and hexagons), plus lines, arcs and dot clusters.
* **scale variation.** Object diameters are log-uniform between ``min_size`` and ``max_size``
  of the image side (default 5 % to 45 %, and at least 8 px), so P3, P4 and P5 all get work.
* **partial occlusion.** Objects are painted in z-order and often placed next to an earlier
  object, so later objects and foreground clutter hide parts of earlier ones.
* **textured backgrounds** from gradients, low-frequency noise, stripes, blotches and pixel
  noise, then a global illumination field (a ramp, a vignette and a colour cast) over the
  whole image, so the apparent colour of an object depends on where it is in the scene.

How occluded objects are labelled
---------------------------------
Each object's *visible fraction* is (pixels where it is the top-most layer and inside the
image) / (pixels of its full, unoccluded, untruncated mask). An object is labelled with its
**full (amodal) box**, the tight box of its complete mask, clipped to the image, if its
visible fraction is at least ``min_visible`` (default 0.4). Placement enforces that bound
while painting: a new object or foreground distractor that would push an earlier object
below ``min_visible`` is re-sampled (and finally skipped), and so is an object that would be
truncated by the border below it. So no class-shaped object is left visible but unlabelled,
which would be label noise; a final check that drops anything below the bound is kept as a
safety net.

Determinism
-----------
Image ``i`` of split ``s`` is drawn from its own ``numpy.random.Generator`` seeded with
``SeedSequence([seed, s, i])``, so it does not depend on the order of generation or on the
size of the other split; rasterisation is Pillow's (4x super-sampled, box-filtered), labels
are printed with six decimals and images are written as PNG without metadata. Same seed and
options, same numpy and Pillow, give byte-identical files.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..utils import write_json_atomic

__all__ = [
    "SHAPES",
    "DEFAULT_CLASSES",
    "DEFAULT_N_TRAIN",
    "DEFAULT_N_VAL",
    "DEFAULT_IMGSZ",
    "MANIFEST_NAME",
    "dataset_digest",
    "YAML_NAME",
    "SyntheticConfig",
    "SyntheticObject",
    "SyntheticSample",
    "render_sample",
    "generate_synthetic",
]

#: Bump when the drawing changes, so that an old dataset on disk is not reused.
GENERATOR_VERSION = 1

#: Every shape the generator can draw as a labelled class.
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "hexagon",
    "crescent",
    "heart",
    "arrow",
)
#: The classes of the default dataset (class id = position).
DEFAULT_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")

# Default sizes: 256 + 64 images of 192 px (~1100 train / ~300 val instances). Measured with
# yolov8n from scratch on the 2-core CPU (while the machine was shared, load ~5): one epoch
# over 256 images at 192 px took 20-25 s plus ~2.5 s of validation, so a few variants times
# a few epochs fit in about ten minutes; after 15 epochs mAP50 was only 0.08, far from
# saturated. 64 val images hold ~300 instances, enough that mAP moves by signal rather than
# by one box. 192 px keeps the smallest objects (~10 px) at about the P3 stride, so they
# are small but detectable.
DEFAULT_N_TRAIN = 256
DEFAULT_N_VAL = 64
DEFAULT_IMGSZ = 192

MANIFEST_NAME = "synthetic_manifest.json"
YAML_NAME = "data.yaml"
SPLITS = ("train", "val")
_SPLIT_IDS = {"train": 0, "val": 1}
_MAX_COUNT = 1_000_000  # file names are six digits
_FILE_RE = re.compile(r"^\d{6}\.(png|txt)$")

_SS = 4  # super-sampling factor of the rasteriser
_MIN_IMGSZ = 64
_MAX_IMGSZ = 2048
_EMPTY_IMAGE_P = 0.04  # background-only images
_NEAR_P = 0.45  # chance that an object is placed next to an earlier one (occlusion)
_MIN_CONTRAST = 0.25  # RGB distance between an object's colour and the background under it


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SyntheticConfig:
    """Every option that changes the generated files (recorded in the manifest)."""

    seed: int = 0
    n_train: int = DEFAULT_N_TRAIN
    n_val: int = DEFAULT_N_VAL
    imgsz: int = DEFAULT_IMGSZ
    classes: tuple[str, ...] = DEFAULT_CLASSES
    max_objects: int = 8
    min_visible: float = 0.4
    clutter: float = 1.0
    min_size: float = 0.05  # object diameter range, fraction of the image side (log-uniform)
    max_size: float = 0.45

    def __post_init__(self) -> None:
        classes = self.classes
        if isinstance(classes, str):
            classes = tuple(c for c in re.split(r"[,\s]+", classes) if c)
        object.__setattr__(self, "classes", tuple(classes))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with a clear message for any bad option."""

        def _int(name: str, lo: int, hi: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            if not lo <= v <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")

        _int("seed", 0, 2**63 - 1)
        _int("n_train", 1, _MAX_COUNT - 1)
        _int("n_val", 1, _MAX_COUNT - 1)
        _int("imgsz", _MIN_IMGSZ, _MAX_IMGSZ)
        _int("max_objects", 1, 64)
        ranges = (("min_visible", 0.0, 1.0, True), ("clutter", 0.0, 10.0, False), ("min_size", 0.0, 1.0, True),
                  ("max_size", 0.0, 1.0, True))
        for name, lo, hi, lo_open in ranges:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise ValueError(f"{name} must be a number, got {v!r}")
            if not math.isfinite(v) or not (lo < v <= hi if lo_open else lo <= v <= hi):
                raise ValueError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
        if self.min_size >= self.max_size:
            raise ValueError(f"min_size must be smaller than max_size, got {self.min_size} and {self.max_size}")
        if not self.classes:
            raise ValueError("classes must name at least one shape")
        unknown = [c for c in self.classes if c not in SHAPES]
        if unknown:
            raise ValueError(f"unknown class(es) {', '.join(map(repr, unknown))}; choose from: {', '.join(SHAPES)}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must not repeat: {', '.join(self.classes)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["min_visible"] = float(self.min_visible)
        d["clutter"] = float(self.clutter)
        d["min_size"] = float(self.min_size)
        d["max_size"] = float(self.max_size)
        for k in ("seed", "n_train", "n_val", "imgsz", "max_objects"):
            d[k] = int(d[k])
        return d


@dataclass(frozen=True)
class SyntheticObject:
    """One labelled object: class id, amodal box in pixels (x0, y0, x1, y1) and visibility."""

    cls: int
    box: tuple[float, float, float, float]
    visible: float  # visible fraction of the full mask, in [min_visible, 1]

    def yolo_line(self, imgsz: int) -> str:
        x0, y0, x1, y1 = self.box
        xc, yc, w, h = (x0 + x1) / 2 / imgsz, (y0 + y1) / 2 / imgsz, (x1 - x0) / imgsz, (y1 - y0) / imgsz
        return f"{self.cls} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}"


@dataclass
class SyntheticSample:
    """One rendered image (H, W, 3 uint8 RGB) and its labelled objects."""

    image: np.ndarray
    objects: list[SyntheticObject] = field(default_factory=list)
    n_distractors: int = 0


# --------------------------------------------------------------------------- colours


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _class_hue(cls: int, n_classes: int) -> float:
    return (cls / n_classes + 0.03) % 1.0


def _object_colour(rng: np.random.Generator, cls: int, n_classes: int) -> np.ndarray:
    """Class-correlated but overlapping colour: jittered class hue, or any hue."""
    if rng.random() < 0.75:
        hue = _class_hue(cls, n_classes) + rng.normal(0.0, 0.07)
    else:
        hue = rng.random()
    return _hsv(hue, rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0))


def _distractor_colour(rng: np.random.Generator, n_classes: int) -> np.ndarray:
    if rng.random() < 0.5:  # borrow a class colour so that colour alone cannot tell
        hue = _class_hue(int(rng.integers(n_classes)), n_classes) + rng.normal(0.0, 0.07)
        return _hsv(hue, rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0))
    return _hsv(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.15, 1.0))


# --------------------------------------------------------------------------- geometry


def _ngon(n: int, start: float = 0.0) -> np.ndarray:
    t = start + np.arange(n) * (2 * math.pi / n)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _class_polys(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Polygons in unit coordinates (about the unit disc) with fill 255 (add) or 0 (cut)."""
    if name == "circle":
        return [(_ngon(72), 255)]
    if name == "ring":
        return [(_ngon(72), 255), (_ngon(72) * rng.uniform(0.45, 0.68), 0)]
    if name == "square":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.8, 255)]
    if name == "triangle":
        return [(_ngon(3, -math.pi / 2) + rng.normal(0.0, 0.04, (3, 2)), 255)]
    if name == "hexagon":
        return [(_ngon(6), 255)]
    if name == "star":
        n = 5
        radii = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.38, 0.52))
        return [(_ngon(2 * n, -math.pi / 2) * radii[:, None], 255)]
    if name == "cross":
        w = rng.uniform(0.26, 0.4)
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        return [(np.array(pts, dtype=np.float64), 255)]
    if name == "crescent":
        d, r = rng.uniform(0.35, 0.6), rng.uniform(0.75, 0.95)
        return [(_ngon(72), 255), (_ngon(72) * r + np.array([d, 0.0]), 0)]
    if name == "heart":
        t = np.linspace(0.0, 2 * math.pi, 72, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [(np.stack([x, y + 2.5], axis=1) / 16.5, 255)]
    if name == "arrow":
        s, h = rng.uniform(0.2, 0.32), rng.uniform(0.55, 0.75)
        pts = [(-1, -s), (0.15, -s), (0.15, -h), (1, 0), (0.15, h), (0.15, s), (-1, s)]
        return [(np.array(pts, dtype=np.float64), 255)]
    raise ValueError(f"unknown shape {name!r}")


def _place(pts: np.ndarray, cx: float, cy: float, radius: float, angle: float, aspect: float) -> np.ndarray:
    """Unit polygon -> pixel polygon: anisotropic jitter, rotation, scale, translation."""
    p = pts * np.array([aspect, 1.0 / aspect])
    c, s = math.cos(angle), math.sin(angle)
    x = p[:, 0] * c - p[:, 1] * s
    y = p[:, 0] * s + p[:, 1] * c
    return np.stack([x * radius + cx, y * radius + cy], axis=1)


def _raster(ops: Sequence[tuple]) -> tuple[np.ndarray, int, int]:
    """Rasterise drawing ops into a coverage mask in [0, 1] over their own bounding box.

    ops: ("poly", pts (N, 2), fill) | ("line", pts (N, 2), width) | ("ellipse", (cx, cy, r)).
    Returns (mask float32 (h, w), x0, y0): the mask's top-left pixel in image coordinates.
    """
    xs, ys = [], []
    for op in ops:
        if op[0] == "poly":
            xs += [op[1][:, 0].min(), op[1][:, 0].max()]
            ys += [op[1][:, 1].min(), op[1][:, 1].max()]
        elif op[0] == "line":
            pad = op[2] / 2 + 1
            xs += [op[1][:, 0].min() - pad, op[1][:, 0].max() + pad]
            ys += [op[1][:, 1].min() - pad, op[1][:, 1].max() + pad]
        else:
            cx, cy, r = op[1]
            xs += [cx - r, cx + r]
            ys += [cy - r, cy + r]
    x0, y0 = math.floor(min(xs)) - 1, math.floor(min(ys)) - 1
    x1, y1 = math.ceil(max(xs)) + 1, math.ceil(max(ys)) + 1
    im = Image.new("L", ((x1 - x0) * _SS, (y1 - y0) * _SS), 0)
    draw = ImageDraw.Draw(im)
    off = np.array([x0, y0], dtype=np.float64)

    def sc(pts: np.ndarray) -> list[float]:  # flat [x0, y0, x1, y1, ...] in super-sampled pixels
        return ((pts - off) * _SS).ravel().tolist()

    for op in ops:
        if op[0] == "poly":
            draw.polygon(sc(op[1]), fill=op[2])
        elif op[0] == "line":
            draw.line(sc(op[1]), fill=255, width=max(1, int(round(op[2] * _SS))), joint="curve")
        else:
            cx, cy, r = op[1]
            draw.ellipse(sc(np.array([[cx - r, cy - r], [cx + r, cy + r]])), fill=255)
    mask = np.asarray(im.reduce(_SS), dtype=np.float32) * (1.0 / 255.0)
    return mask, x0, y0


# --------------------------------------------------------------------------- canvas


class _Canvas:
    """The image being painted plus, per pixel, which labelled object is on top."""

    def __init__(self, img: np.ndarray) -> None:
        self.img = img
        self.owner = np.full(img.shape[:2], -1, dtype=np.int32)  # -1 background, -2 clutter
        self.area: list[int] = []  # full mask pixels of each object
        self.visible: list[int] = []  # pixels where the object is on top

    def clip(self, mask: np.ndarray, x0: int, y0: int):
        """(slices into the image, the part of the mask inside the image) or None."""
        H, W = self.owner.shape
        h, w = mask.shape
        ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
        if ax1 <= ax0 or ay1 <= ay0:
            return None
        return (slice(ay0, ay1), slice(ax0, ax1)), mask[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0]

    def _covered(self, sl, m: np.ndarray) -> np.ndarray:
        own = self.owner[sl][m >= 0.5]
        return np.bincount(own[own >= 0], minlength=len(self.area))

    def occlusion_ok(self, sl, m: np.ndarray, min_visible: float) -> bool:
        """Would painting ``m`` keep every earlier object at least ``min_visible`` visible?"""
        if not self.area:
            return True
        hidden = self._covered(sl, m)
        after = np.asarray(self.visible) - hidden
        return bool(np.all((hidden == 0) | (after >= min_visible * np.asarray(self.area))))

    def paint(self, sl, m: np.ndarray, colour: np.ndarray, owner_id: int) -> None:
        a = m[..., None]
        region = self.img[sl]
        region *= 1.0 - a
        region += a * colour
        hit = m >= 0.5
        if self.area:
            hidden = self._covered(sl, m)
            for i in np.flatnonzero(hidden):
                self.visible[i] -= int(hidden[i])
        self.owner[sl][hit] = owner_id


# --------------------------------------------------------------------------- background


def _grid(S: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(S, dtype=np.float32) + 0.5) / S
    return c[None, :].repeat(S, 0), c[:, None].repeat(S, 1)  # x, y in (0, 1)


def _ramp(x: np.ndarray, y: np.ndarray, angle: float) -> np.ndarray:
    """Linear ramp over the image along ``angle``, scaled to [0, 1]."""
    c, s = math.cos(angle), math.sin(angle)
    r = x * np.float32(c) + y * np.float32(s)
    lo = min(0.0, c) + min(0.0, s)  # extremes of r over the unit square
    r -= np.float32(lo)
    r *= np.float32(1.0 / max(abs(c) + abs(s), 1e-6))
    return r


def _upsample(grid: np.ndarray, S: int) -> np.ndarray:
    """Separable bilinear upsampling of a (g, g, C) grid to (S, S, C)."""
    g = grid.shape[0]
    t = np.linspace(0.0, g - 1, S)
    i0 = np.minimum(np.floor(t).astype(np.int64), g - 2)
    f = (t - i0).astype(np.float32)
    rows = grid[i0] * (1 - f)[:, None, None] + grid[i0 + 1] * f[:, None, None]
    return rows[:, i0] * (1 - f)[None, :, None] + rows[:, i0 + 1] * f[None, :, None]


def _blend(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """In place: img <- img * (1 - alpha) + colour * alpha (alpha broadcasts over channels)."""
    img += (colour - img) * alpha


def _background(rng: np.random.Generator, S: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    img = np.empty((S, S, 3), dtype=np.float32)
    img[:] = _hsv(rng.random(), rng.uniform(0.0, 0.55), rng.uniform(0.2, 0.9))
    if rng.random() < 0.6:  # two-colour gradient
        t = _ramp(x, y, rng.uniform(0, 2 * math.pi))
        t *= np.float32(rng.uniform(0.3, 1.0))
        _blend(img, _hsv(rng.random(), rng.uniform(0.0, 0.7), rng.uniform(0.15, 0.95)), t[..., None])
    if rng.random() < 0.55:  # low-frequency value noise
        g = int(rng.integers(3, 11))
        chans = 3 if rng.random() < 0.5 else 1
        noise = _upsample(rng.uniform(-1, 1, (g, g, chans)).astype(np.float32), S)
        noise *= np.float32(rng.uniform(0.05, 0.22))
        img += noise
    if rng.random() < 0.35:  # stripes, soft or hard
        angle, period = rng.uniform(0, math.pi), rng.uniform(4.0, 0.3 * S) / S
        k = 2 * math.pi / period
        wave = np.sin(x * np.float32(k * math.cos(angle)) + (y * np.float32(k * math.sin(angle)) + np.float32(rng.uniform(0, 2 * math.pi))))
        if rng.random() < 0.5:
            a = (wave > 0).astype(np.float32)
        else:
            a = wave
            a += 1.0
            a *= 0.5
        a *= np.float32(rng.uniform(0.12, 0.5))
        _blend(img, _hsv(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.1, 1.0)), a[..., None])
    if rng.random() < 0.5:  # soft blotches, each evaluated within 3 sigma of its centre
        for _ in range(int(rng.integers(1, 6))):
            cx, cy, s = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(0.04, 0.25) * S
            peak, colour = rng.uniform(0.3, 0.8), _hsv(rng.random(), rng.uniform(0, 0.9), rng.uniform(0.1, 1.0))
            x0, x1 = max(int(cx - 3 * s), 0), min(int(cx + 3 * s) + 1, S)
            y0, y1 = max(int(cy - 3 * s), 0), min(int(cy + 3 * s) + 1, S)
            gx = np.exp(-(((np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) / s) ** 2) / 2)
            gy = np.exp(-(((np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) / s) ** 2) / 2)
            a = (gy[:, None] * gx[None, :]) * np.float32(peak)
            _blend(img[y0:y1, x0:x1], colour, a[..., None])
    if rng.random() < 0.6:  # fine texture
        noise = rng.standard_normal((S, S, 1), dtype=np.float32)
        noise *= np.float32(rng.uniform(0.01, 0.06))
        img += noise
    np.clip(img, 0.0, 1.0, out=img)
    return img


def _finish(rng: np.random.Generator, img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Global illumination (ramp, vignette, colour cast), sensor noise, optional blur -> uint8."""
    S = img.shape[0]
    light = _ramp(x, y, rng.uniform(0, 2 * math.pi))
    light *= np.float32(2 * rng.uniform(0.0, 0.35))
    light += np.float32(1.0) - light.mean()  # mean brightness kept
    vignette = (x - 0.5) ** 2 + (y - 0.5) ** 2
    vignette *= np.float32(-2 * rng.uniform(0.0, 0.35))
    vignette += 1.0
    light *= vignette
    cast = (1.0 + rng.normal(0.0, 0.05, 3)).astype(np.float32) * np.float32(255.0)
    img *= light[..., None]
    img *= cast
    noise = rng.standard_normal((S, S, 3), dtype=np.float32)
    noise *= np.float32(255.0 * rng.uniform(0.003, 0.03))
    img += noise
    img += 0.5
    np.clip(img, 0, 255, out=img)
    out = img.astype(np.uint8)
    if rng.random() < 0.2:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.9))))
    return out


# --------------------------------------------------------------------------- objects and clutter


def _fill(rng: np.random.Generator, colour: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Solid colour (60 %), a two-shade gradient (25 %) or stripes (15 %) over a crop."""
    u = rng.random()
    if u < 0.6:
        return colour
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    proj = xx * math.cos(angle) + yy * math.sin(angle)
    shade = colour * rng.uniform(0.5, 0.8) if rng.random() < 0.5 else colour + (1 - colour) * rng.uniform(0.3, 0.6)
    if u < 0.85:
        t = ((proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6))[..., None]
    else:
        t = (np.sin(proj * (2 * math.pi / rng.uniform(3.0, 8.0))) > 0).astype(np.float32)[..., None]
    return colour * (1 - t) + shade * t


def _size_range(cfg: SyntheticConfig) -> tuple[float, float]:
    """Object radius range in pixels: diameters of ``min_size`` (at least 8 px) to ``max_size`` of the side."""
    S = cfg.imgsz
    return max(4.0, cfg.min_size * S / 2), max(cfg.max_size * S / 2, 4.5)


def _try_object(rng, canvas: _Canvas, cfg: SyntheticConfig, cls: int, centres) -> tuple | None:
    S = cfg.imgsz
    rmin, rmax = _size_range(cfg)
    radius = math.exp(rng.uniform(math.log(rmin), math.log(rmax)))
    if centres and rng.random() < _NEAR_P:  # next to an earlier object: occlusion
        ox, oy, orad = centres[int(rng.integers(len(centres)))]
        d, t = rng.uniform(0.3, 1.0) * (orad + radius), rng.uniform(0, 2 * math.pi)
        cx, cy = ox + d * math.cos(t), oy + d * math.sin(t)
    else:
        cx, cy = rng.uniform(-0.1, 1.1) * S, rng.uniform(-0.1, 1.1) * S
    aspect = rng.uniform(0.87, 1.15)
    polys = _class_polys(cfg.classes[cls], rng)
    angle = rng.uniform(0, 2 * math.pi)
    ops = [("poly", _place(p, cx, cy, radius, angle, aspect), v) for p, v in polys]
    mask, x0, y0 = _raster(ops)
    hit_full = mask >= 0.5
    area = int(hit_full.sum())
    if area < 16:
        return None
    clipped = canvas.clip(mask, x0, y0)
    if clipped is None:
        return None
    sl, m = clipped
    inside = int((m >= 0.5).sum())
    if inside < cfg.min_visible * area:  # truncated too much by the border
        return None
    rows, cols = np.flatnonzero(hit_full.any(1)), np.flatnonzero(hit_full.any(0))
    bx0, bx1 = max(x0 + int(cols[0]), 0), min(x0 + int(cols[-1]) + 1, S)
    by0, by1 = max(y0 + int(rows[0]), 0), min(y0 + int(rows[-1]) + 1, S)
    if bx1 - bx0 < 4 or by1 - by0 < 4:
        return None
    if not canvas.occlusion_ok(sl, m, cfg.min_visible):
        return None
    return sl, m, area, inside, (bx0, by0, bx1, by1), (cx, cy, radius)


def _distractor_ops(rng: np.random.Generator, cfg: SyntheticConfig, foreground: bool) -> list[tuple]:
    S = cfg.imgsz
    rmin, rmax = _size_range(cfg)
    cx, cy = rng.uniform(-0.05, 1.05) * S, rng.uniform(-0.05, 1.05) * S
    kinds = ("line", "line", "arc", "dots", "bar") if foreground else ("blob", "ellipse", "bar", "line", "arc", "dots")
    kind = kinds[int(rng.integers(len(kinds)))]
    width = rng.uniform(1.0, max(2.0, S / 64))
    if kind in ("blob", "ellipse", "bar"):
        radius = math.exp(rng.uniform(math.log(rmin), math.log(rmax * 0.8)))
        if kind == "blob":  # irregular polygon
            n = int(rng.integers(5, 12))
            t = np.sort(rng.uniform(0, 2 * math.pi, n))
            pts = np.stack([np.cos(t), np.sin(t)], 1) * rng.uniform(0.4, 1.0, n)[:, None]
            aspect = rng.uniform(0.7, 1.4)
        elif kind == "ellipse":  # clearly elongated: never a circle
            pts, aspect = _ngon(48), math.sqrt(rng.uniform(2.2, 4.0))
        else:  # long bar: never a square
            k = math.sqrt(rng.uniform(2.5, 7.0))
            pts, aspect = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.8, k
        return [("poly", _place(pts, cx, cy, radius, rng.uniform(0, 2 * math.pi), aspect), 255)]
    if kind == "line":
        n = int(rng.integers(2, 5))
        step = rng.uniform(0.1, 0.45) * S
        pts = [(cx, cy)]
        heading = rng.uniform(0, 2 * math.pi)
        for _ in range(n - 1):
            heading += rng.normal(0, 0.6)
            pts.append((pts[-1][0] + step * math.cos(heading), pts[-1][1] + step * math.sin(heading)))
        return [("line", np.array(pts), width)]
    if kind == "arc":
        r = rng.uniform(0.08, 0.35) * S
        t = rng.uniform(0, 2 * math.pi) + np.linspace(0, rng.uniform(0.5, 1.4) * math.pi, 24)
        return [("line", np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1), width)]
    # a cluster of small dots
    spread = rng.uniform(0.03, 0.12) * S
    return [
        ("ellipse", (cx + rng.normal(0, spread), cy + rng.normal(0, spread), rng.uniform(0.8, max(1.2, S / 100))))
        for _ in range(int(rng.integers(3, 13)))
    ]


def _paint_distractor(rng, canvas: _Canvas, cfg: SyntheticConfig, foreground: bool) -> bool:
    for _ in range(3 if foreground else 1):
        mask, x0, y0 = _raster(_distractor_ops(rng, cfg, foreground))
        colour = _distractor_colour(rng, len(cfg.classes))
        clipped = canvas.clip(mask, x0, y0)
        if clipped is None:
            continue
        sl, m = clipped
        if foreground and not canvas.occlusion_ok(sl, m, cfg.min_visible):
            continue
        canvas.paint(sl, m, _fill(rng, colour, m.shape) if not foreground else colour, -2)
        return True
    return False


def render_sample(config: SyntheticConfig, split: str, index: int) -> SyntheticSample:
    """Render image ``index`` of ``split`` ("train" or "val"): a pure function of its arguments."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cfg, S = config, config.imgsz
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), _SPLIT_IDS[split], int(index)]))
    x, y = _grid(S)
    canvas = _Canvas(_background(rng, S, x, y))

    n_clutter = 0
    for _ in range(min(int(rng.poisson(5.0 * cfg.clutter)), 30)):  # background clutter
        n_clutter += _paint_distractor(rng, canvas, cfg, foreground=False)

    n_obj = 0 if rng.random() < _EMPTY_IMAGE_P else int(rng.integers(1, cfg.max_objects + 1))
    boxes, centres, classes = [], [], []
    for _ in range(n_obj):
        cls = int(rng.integers(len(cfg.classes)))
        for _attempt in range(12):
            placed = _try_object(rng, canvas, cfg, cls, centres)
            if placed is None:
                continue
            sl, m, area, inside, box, centre = placed
            colour = _object_colour(rng, cls, len(cfg.classes))
            under = canvas.img[sl][m >= 0.5].mean(0)
            if float(np.linalg.norm(colour - under)) < _MIN_CONTRAST:  # keep it visible
                colour = colour * 0.35 if float(under.mean()) > 0.5 else 0.55 + 0.45 * colour
            canvas.paint(sl, m, _fill(rng, colour, m.shape), len(canvas.area))
            canvas.area.append(area)
            canvas.visible.append(inside)
            boxes.append(box)
            centres.append(centre)
            classes.append(cls)
            break

    for _ in range(min(int(rng.poisson(1.5 * cfg.clutter)), 10)):  # foreground clutter, may occlude
        n_clutter += _paint_distractor(rng, canvas, cfg, foreground=True)

    image = _finish(rng, canvas.img, x, y)
    objects = []
    for i, (cls, box) in enumerate(zip(classes, boxes)):
        frac = canvas.visible[i] / canvas.area[i]
        if frac >= cfg.min_visible:  # always true by construction; kept as a safety net
            objects.append(SyntheticObject(cls, tuple(float(v) for v in box), round(frac, 4)))
    return SyntheticSample(image=image, objects=objects, n_distractors=n_clutter)


# --------------------------------------------------------------------------- files


def _yaml_text(root: Path, classes: Iterable[str]) -> str:
    classes = list(classes)
    lines = [
        "# Synthetic shapes detection dataset, generated by `yolo-attention data synthetic`.",
        f"# Options and statistics: {MANIFEST_NAME}",
        f"path: {json.dumps(str(root))}",
        # absolute: YOLOv7's train.py ignores 'path' and resolves relative splits against its working directory
        f"train: {json.dumps(str(root / 'images' / 'train'))}",
        f"val: {json.dumps(str(root / 'images' / 'val'))}",
        f"nc: {len(classes)}  # ultralytics counts the names; YOLOv5/v7/v9's train.py read nc",
        "names:",
    ]
    lines += [f"  {i}: {name}" for i, name in enumerate(classes)]
    return "\n".join(lines) + "\n"


def _expected_files(out: Path, cfg: SyntheticConfig) -> Iterable[Path]:
    for split, n in (("train", cfg.n_train), ("val", cfg.n_val)):
        for i in range(n):
            yield out / "images" / split / f"{i:06d}.png"
            yield out / "labels" / split / f"{i:06d}.txt"


def _files_digest(out: Path, cfg: SyntheticConfig) -> str:
    """SHA-256 over every image and label file (names and bytes), in a fixed order."""
    h = hashlib.sha256()
    for p in _expected_files(out, cfg):
        h.update(p.relative_to(out).as_posix().encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def dataset_digest(out_dir: str | os.PathLike) -> str:
    """The files hash a complete generated dataset records in its manifest (``files_sha256``).

    Same options, same numpy and Pillow: the same hash on every machine, so a copy generated
    elsewhere (e.g. on a cluster worker) is checked against it. Raises ValueError if
    ``out_dir`` holds no complete generated dataset.
    """
    try:
        manifest = json.loads((Path(out_dir) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or not manifest.get("complete") or "files_sha256" not in manifest:
        raise ValueError(f"{out_dir} holds no complete generated dataset (no {MANIFEST_NAME} with files_sha256)")
    return manifest["files_sha256"]


def _reusable(out: Path, cfg: SyntheticConfig) -> bool:
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    if not (
        isinstance(manifest, dict)
        and manifest.get("complete") is True
        and manifest.get("generator_version") == GENERATOR_VERSION
        and manifest.get("options") == cfg.to_dict()
        and "files_sha256" in manifest
    ):
        return False
    for split, n in (("train", cfg.n_train), ("val", cfg.n_val)):  # nothing missing, nothing extra
        for kind, ext in (("images", ".png"), ("labels", ".txt")):
            d = out / kind / split
            if not d.is_dir() or sum(1 for p in d.iterdir() if p.suffix == ext) != n:
                return False
    return all(p.is_file() for p in _expected_files(out, cfg))


def _clear(out: Path) -> None:
    """Remove the files a previous generation wrote; refuse to touch anything else."""
    foreign = []
    for kind in ("images", "labels"):
        for split in SPLITS:
            d = out / kind / split
            if d.is_dir():
                foreign += [p for p in d.iterdir() if not _FILE_RE.match(p.name)]
    if foreign:
        listed = ", ".join(str(p) for p in sorted(foreign)[:5])
        raise FileExistsError(
            f"{out} holds files the synthetic generator did not write ({listed}{', ...' if len(foreign) > 5 else ''}); "
            "choose an empty or new --out directory"
        )
    for kind in ("images", "labels"):
        for split in SPLITS:
            d = out / kind / split
            if d.is_dir():
                for p in d.iterdir():
                    p.unlink()
    for split in SPLITS:  # ultralytics' label caches would describe the old labels
        (out / "labels" / f"{split}.cache").unlink(missing_ok=True)


def generate_synthetic(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    n_train: int = DEFAULT_N_TRAIN,
    n_val: int = DEFAULT_N_VAL,
    imgsz: int = DEFAULT_IMGSZ,
    classes: Sequence[str] | str = DEFAULT_CLASSES,
    max_objects: int = 8,
    min_visible: float = 0.4,
    clutter: float = 1.0,
    min_size: float = 0.05,
    max_size: float = 0.45,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """Write the synthetic dataset under ``out_dir`` and return the path of its data YAML.

    Layout: ``images/{train,val}/NNNNNN.png``, ``labels/{train,val}/NNNNNN.txt`` (YOLO
    ``cls xc yc w h``, normalised; empty file = background image), ``data.yaml`` (``path``,
    ``train``, ``val``, ``names``) and ``synthetic_manifest.json`` (options, statistics).

    A directory that already holds a complete dataset generated with the same options is
    reused as is (``force=True`` regenerates). Bad options raise ValueError; an output
    directory holding image/label files this generator did not write raises FileExistsError.
    """
    cfg = SyntheticConfig(
        seed=seed,
        n_train=n_train,
        n_val=n_val,
        imgsz=imgsz,
        classes=tuple(classes) if not isinstance(classes, str) else classes,
        max_objects=max_objects,
        min_visible=min_visible,
        clutter=clutter,
        min_size=min_size,
        max_size=max_size,
    )
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    yaml_path = out / YAML_NAME
    yaml_text = _yaml_text(out, cfg.classes)

    if not force and _reusable(out, cfg):
        if not yaml_path.is_file() or yaml_path.read_text() != yaml_text:  # e.g. the directory moved
            yaml_path.write_text(yaml_text)
        if verbose:
            print(f"yolo-attention data: reusing the dataset in {out} (same options)", file=sys.stderr)
        return yaml_path

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    manifest = {"generator": "yolo_attention.data.synthetic", "generator_version": GENERATOR_VERSION, "options": cfg.to_dict()}
    write_json_atomic(out / MANIFEST_NAME, {**manifest, "complete": False})

    stats = {}
    for split, n in (("train", cfg.n_train), ("val", cfg.n_val)):
        img_dir, lbl_dir = out / "images" / split, out / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        per_class = [0] * len(cfg.classes)
        occluded = empty = clutter_n = 0
        for i in range(n):
            sample = render_sample(cfg, split, i)
            Image.fromarray(sample.image).save(img_dir / f"{i:06d}.png", format="PNG", compress_level=1)
            (lbl_dir / f"{i:06d}.txt").write_text("".join(o.yolo_line(cfg.imgsz) + "\n" for o in sample.objects))
            for o in sample.objects:
                per_class[o.cls] += 1
                occluded += o.visible < 0.98
            empty += not sample.objects
            clutter_n += sample.n_distractors
        stats[split] = {
            "images": n,
            "instances": sum(per_class),
            "per_class": dict(zip(cfg.classes, per_class)),
            "background_images": empty,
            "partly_hidden_instances": occluded,
            "distractors": clutter_n,
        }

    yaml_path.write_text(yaml_text)
    digest = _files_digest(out, cfg)
    write_json_atomic(out / MANIFEST_NAME, {**manifest, "complete": True, "stats": stats, "files_sha256": digest})
    if verbose:
        n_inst = sum(s["instances"] for s in stats.values())
        print(
            f"yolo-attention data: wrote {cfg.n_train} train + {cfg.n_val} val images "
            f"({n_inst} objects, {cfg.imgsz}px) to {out} in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
    return yaml_path
