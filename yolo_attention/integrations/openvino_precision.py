"""Run exported OpenVINO models at a chosen floating-point precision, ultralytics' predictor included.

OpenVINO's CPU plugin runs a model at its *default inference precision*: bfloat16 on CPUs with
AVX512-BF16 or AMX (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later), float32
elsewhere. In bfloat16 every operation reads and writes 8-bit-mantissa values, so attention's
matrix products and softmax lose precision (see docs/export.md for what that does to mAP).
OpenVINO lets the caller ask for float32 per compilation::

    core.compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

ultralytics' OpenVINO backend (``YOLO("..._openvino_model").predict/val``) compiles with its own
configuration and offers no argument for the precision on x86 Linux, so :func:`openvino_precision`
sets the hint for every OpenVINO compilation made inside a ``with`` block::

    from yolo_attention.integrations.openvino_precision import openvino_precision

    with openvino_precision("f32"):
        metrics = YOLO("best_openvino_model").val(data="data.yaml")
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

__all__ = ["PRECISIONS", "openvino_precision", "openvino_cpu_config", "compiled_precision"]

PRECISIONS = ("f32", "bf16", "f16")
_LOCK = threading.Lock()  # one patch at a time: nested blocks restore in order


def _openvino():
    try:
        import openvino
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("OpenVINO is not installed: pip install 'yolo-attention[openvino]'") from e
    return openvino


@contextlib.contextmanager
def openvino_cpu_config(config: dict) -> Iterator[None]:
    """Apply ``config`` (OpenVINO CPU properties) to every ``openvino.Core.compile_model`` call in the block.

    The properties are set on the calling ``Core`` for the ``"CPU"`` device just before it
    compiles, so they hold whether the model is compiled for ``"CPU"`` or for ``"AUTO"`` that
    picks the CPU; properties the caller passes to ``compile_model`` itself still win. The patch
    is process-wide while the block runs (it replaces a class attribute) and is removed on exit.
    """
    if not isinstance(config, dict) or not config:
        raise TypeError(f"openvino_cpu_config: argument 'config' must be a non-empty dict, got {config!r}")
    ov = _openvino()
    with _LOCK:
        original = ov.Core.compile_model

        def compile_model(self, *args, **kwargs):
            self.set_property("CPU", dict(config))
            return original(self, *args, **kwargs)

        ov.Core.compile_model = compile_model
    try:
        yield
    finally:
        with _LOCK:
            ov.Core.compile_model = original


def openvino_precision(precision: str = "f32"):
    """Context manager: OpenVINO CPU compilations in the block run at ``precision`` ("f32", "bf16", "f16").

    A CPU without native support for the requested low precision runs float32 whatever is asked
    (OpenVINO's own fallback); :func:`compiled_precision` reports what a compiled model really uses.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"openvino_precision: argument 'precision' must be one of {PRECISIONS}, got {precision!r}")
    return openvino_cpu_config({"INFERENCE_PRECISION_HINT": precision})


def compiled_precision(compiled_model) -> str:
    """The inference precision an ``openvino.CompiledModel`` runs at, e.g. ``"f32"`` or ``"bf16"``."""
    return str(compiled_model.get_property("INFERENCE_PRECISION_HINT").to_string())
