"""Small helpers shared across the package: atomic JSON files and thop's FLOP figure."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ["write_json_atomic", "thop_flops"]


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON so that a reader never sees half a file, also after a crash."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def thop_flops(module: nn.Module, *inputs: torch.Tensor) -> int | None:
    """2 x thop's multiply-accumulates of ``module`` (in eval mode, on a copy) for ``inputs``: the method
    behind ultralytics' GFLOPs figure. None when thop is not installed or fails on the module."""
    try:
        import thop
    except ImportError:
        return None
    m = copy.deepcopy(module).eval()
    try:
        with torch.no_grad():
            macs = thop.profile(m, inputs=inputs, verbose=False)[0]
    except Exception:  # noqa: BLE001 - as ultralytics' get_flops: a thop failure gives no figure
        return None
    return int(round(2 * float(macs)))
