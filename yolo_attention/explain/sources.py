"""Images for ``explain``: a directory, a file or a glob; unreadable files are skipped and listed."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ExplainError", "ImageItem", "Skipped", "IMAGE_SUFFIXES", "find_images", "read_image", "scan_images",
           "unique_stems"]

# what OpenCV decodes without extra plugins (ultralytics' IMG_FORMATS also lists heic, avif, ...)
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp", ".pbm", ".pgm", ".ppm", ".jp2")


class ExplainError(Exception):
    """Bad input to ``explain``: the message says what was wrong and what to do."""


@dataclass(frozen=True)
class ImageItem:
    """One readable image; pixels are read again when its batch runs, so many images fit in memory."""

    path: Path
    name: str  # unique file stem, names the pictures
    shape: tuple[int, int]  # (H, W)

    def load(self) -> np.ndarray:
        rgb = read_image(self.path)
        if rgb is None or rgb.shape[:2] != self.shape:
            raise ExplainError(f"{self.path} changed or became unreadable while explain was running")
        return rgb


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


def find_images(source: str | Path) -> list[Path]:
    """Image files of a directory (not recursive), a single file, or a glob pattern, sorted."""
    text = str(source)
    p = Path(text).expanduser()
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        where = f"directory {p} (suffixes {', '.join(IMAGE_SUFFIXES)})"
    elif p.is_file():
        files, where = [p], str(p)
    elif glob.has_magic(text):
        files = [Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file()]
        where = f"pattern {text!r}"
    else:
        raise ExplainError(f"--source {text}: no such file or directory")
    if not files:
        raise ExplainError(f"no images found in {where}")
    return sorted(files)


def read_image(path: Path) -> np.ndarray | None:
    """(H, W, 3) RGB uint8, or None if the file is not an image OpenCV can decode."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)  # fromfile + imdecode also reads non-ASCII paths
    im = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if im is None else np.ascontiguousarray(im[..., ::-1])


def unique_stems(paths: list[Path]) -> list[str]:
    """File stems, made unique with ``-2``, ``-3``, ... (a glob over several folders repeats stems)."""
    used: set[str] = set()
    names = []
    for p in paths:
        name, k = p.stem, 1
        while name in used:
            k += 1
            name = f"{p.stem}-{k}"
        used.add(name)
        names.append(name)
    return names


def scan_images(source: str | Path | list[Path]) -> tuple[list[ImageItem], list[Skipped]]:
    """Check that every image of ``source`` decodes; the ones that do not are returned as skipped."""
    paths = [Path(p) for p in source] if isinstance(source, list) else find_images(source)
    items, skipped = [], []
    for path, name in zip(paths, unique_stems(paths)):
        try:
            rgb, why = read_image(path), "not an image OpenCV can decode"
        except OSError as e:
            rgb, why = None, str(e)
        if rgb is None:
            skipped.append(Skipped(path, why))
        else:
            items.append(ImageItem(path, name, rgb.shape[:2]))
    if not items:
        listed = "; ".join(f"{s.path} ({s.reason})" for s in skipped)
        raise ExplainError(f"none of the {len(paths)} image file(s) could be read: {listed}")
    return items, skipped
