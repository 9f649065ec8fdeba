"""Optional dependencies: which extra provides a package, and a clear error when it is missing.

``pip install yolo-attention`` installs torch, NumPy, Pillow and PyYAML: enough for the modules,
``list``, ``bench``, ``data`` and classic-format ``yaml``. Commands that drive a detector or
draw need an extra; :func:`require` names it instead of failing with ``No module named ...``.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRAS", "MissingExtra", "require", "available"]

# import name -> the extra that installs it
EXTRAS = {
    "ultralytics": "ultralytics",
    "cloudpickle": "ultralytics",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "matplotlib": "plot",
    "yolov5": "classic",
    "openvino": "openvino",
    "ray": "ray",
    "pytorch_grad_cam": "explain",
}


class MissingExtra(ImportError):
    """A command or function needs a package from an optional extra that is not installed."""


def available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, what: str) -> None:
    """Raise :class:`MissingExtra` naming the extra to install if ``module`` cannot be imported."""
    if available(module):
        return
    extra = EXTRAS.get(module)
    how = f"pip install 'yolo-attention[{extra}]'" if extra else f"pip install {module}"
    raise MissingExtra(f"{what} needs the '{module}' package, which is not installed: {how}", name=module)
