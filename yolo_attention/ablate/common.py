"""Small helpers shared by the ablation's parts: the usage error, atomic JSON files, durations."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..utils import write_json_atomic

__all__ = ["UsageError", "write_json", "read_json", "fmt_time"]


class UsageError(Exception):
    """A bad argument: reported before any training starts (exit code 2), with what to change."""


write_json = write_json_atomic  # one writer for the package (yolo_attention.utils)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def fmt_time(seconds: float | None) -> str:
    """``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``; ``"?"`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
