"""Export parity as users deploy: every registered module inside yolov8n, through ``model.export``.

For each module in the registry (read at collection time) yolov8n is built with the module at
the neck, exported by ultralytics to TorchScript, ONNX and OpenVINO with ``dynamic=True``, loaded
back with ultralytics' own runtime for the format (``AutoBackend``, what ``YOLO(exported)``
predicts and validates with) and compared with the PyTorch model on the same input: at the
export size, and at a second size with another batch and both sides changed.

* TorchScript: ultralytics traces the model. Without ``dynamic=True`` the Detect head's anchor
  grid is frozen at the export size, so the file runs at that size only, with or without
  attention; with ``dynamic=True`` the head recomputes its grid and the traced attention
  modules follow the input size, which the second size checks.
* OpenVINO runs at float32 here (``openvino_precision("f32")``): its CPU plugin would otherwise
  use bfloat16 on CPUs that support it. ``docs/export.md`` measures what bfloat16 does.

Tolerances (absolute, on ultralytics' decoded output): box coordinates are pixels of the input
(up to about 8x the image side for an untrained head), class scores are sigmoids in [0, 1].
Measured for se, a2, bam, bra and biformer at both sizes (random weights, 64 px), the largest
differences were 1.2e-4 px on boxes of magnitude up to 481 (2.5e-7 relative: float32 rounding
of BatchNorm folding and operation order; ONNX Runtime and OpenVINO alike, TorchScript 9.2e-5)
and 1.2e-7 on scores. The bounds below leave a factor of 8 on boxes and about 80 on scores.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from _helpers import BUILTIN_NAMES, _registry_does_not_leak, activate  # noqa: F401
from yolo_attention.registry import get_attention_info

pytestmark = pytest.mark.slow
pytest.importorskip("ultralytics")

IMGSZ = 64
SIZES = [(1, IMGSZ, IMGSZ), (2, 96, 128)]  # (batch, H, W): the export size, then another batch and both sides
BOX_ATOL_PER_PX = 2e-6  # box tolerance per pixel of the largest reference coordinate
SCORE_ATOL = 1e-5


@dataclass(frozen=True)
class ExportFormat:
    """One of ultralytics' export formats as this test drives it."""

    name: str
    requires: tuple[str, ...]  # importable packages the export and runtime need
    kwargs: dict = field(default_factory=dict)  # extra model.export arguments


FORMATS = {
    "torchscript": ExportFormat("torchscript", ()),
    # simplify=False: onnxslim's handling of these graphs (dynamic shapes kept) is tested per
    # module in test_export.py; slimming a whole detector triples the ONNX export time.
    "onnx": ExportFormat("onnx", ("onnx", "onnxruntime"), {"simplify": False}),
    "openvino": ExportFormat("openvino", ("openvino",)),
}


def _model_with(attn: str, tmp_path):
    from ultralytics import YOLO

    from yolo_attention.integrations.yaml_gen import make_attention_yaml

    model = YOLO(str(make_attention_yaml("yolov8n", attn, "neck", out=tmp_path / f"yolov8n-{attn}-neck.yaml")))
    cls = get_attention_info(attn).cls
    layers = [m for m in model.model.modules() if type(m) is cls]
    assert len(layers) == 3
    for m in layers:  # zero-initialised projections and gates would hide the module from the comparison
        activate(m)
    return model


def _runtime(path: str, fmt: str):
    """ultralytics' AutoBackend for the exported file; OpenVINO compiled at float32.

    For OpenVINO one thread is requested too: unlike the precision (float32 is this CPU's default
    anyway where it lacks bfloat16) the thread count is visible everywhere, so it proves that the
    properties reach the model ultralytics compiles."""
    from ultralytics.nn.autobackend import AutoBackend

    if fmt != "openvino":
        return AutoBackend(path, device=torch.device("cpu"), verbose=False)
    from yolo_attention.integrations.openvino_precision import (
        compiled_precision,
        openvino_cpu_config,
        openvino_precision,
    )

    with openvino_precision("f32"), openvino_cpu_config({"INFERENCE_NUM_THREADS": 1}):
        backend = AutoBackend(path, device=torch.device("cpu"), verbose=False)
    compiled = getattr(getattr(backend, "backend", None), "ov_compiled_model", None)
    assert compiled is not None, "ultralytics' AutoBackend no longer exposes backend.ov_compiled_model"
    assert compiled_precision(compiled) == "f32"
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    return backend


def _as_array(y) -> np.ndarray:
    y = y[0] if isinstance(y, (list, tuple)) else y
    return y.detach().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("attn", BUILTIN_NAMES)
def test_exported_yolov8n_matches_pytorch(attn, fmt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ultralytics writes exports beside the YAML's bare name, i.e. in the cwd
    spec = FORMATS[fmt]
    for package in spec.requires:
        pytest.importorskip(package)
    model = _model_with(attn, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes are expected here
        path = model.export(format=fmt, imgsz=IMGSZ, dynamic=True, device="cpu", verbose=False, **spec.kwargs)
    runtime = _runtime(path, fmt)
    net = model.model.eval()
    gen = torch.Generator().manual_seed(0)
    for n, h, w in SIZES:
        x = torch.rand(n, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = net(x)[0].numpy()
            got = _as_array(runtime(x))
        where = f"{attn} {fmt} at {(n, 3, h, w)}"
        assert got.shape == ref.shape, f"{where}: exported {got.shape} vs PyTorch {ref.shape}"
        box_err = float(np.abs(got[:, :4] - ref[:, :4]).max())
        score_err = float(np.abs(got[:, 4:] - ref[:, 4:]).max())
        print(f"parity {where}: box {box_err:.3g} (max |box| {np.abs(ref[:, :4]).max():.4g}) score {score_err:.3g}")
        assert box_err <= BOX_ATOL_PER_PX * max(1.0, float(np.abs(ref[:, :4]).max())), f"{where}: boxes differ by {box_err}"
        assert score_err <= SCORE_ATOL, f"{where}: scores differ by {score_err}"
