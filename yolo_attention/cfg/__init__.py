"""Model configs shipped with yolo-attention (ultralytics format)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CFG_DIR", "model_cfg", "available_cfgs"]

CFG_DIR = Path(__file__).parent


def available_cfgs() -> list[str]:
    return sorted(p.stem for p in CFG_DIR.glob("*.yaml"))


def model_cfg(name: str) -> Path:
    """Path of a shipped config, e.g. ``model_cfg("yolov7")`` for ``YOLO(model_cfg("yolov7"))``."""
    path = CFG_DIR / f"{Path(name).stem}.yaml"
    if not path.exists():
        raise ValueError(f"no shipped config {name!r}; available: {available_cfgs()}")
    return path
