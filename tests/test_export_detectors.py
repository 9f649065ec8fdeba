"""Export parity as users deploy: every registered module inside yolov8n, through ``model.export``.

The modules of the registry (read at collection time) are taken three at a time, one after each
of yolov8n's neck outputs (P3, P4, P5; a covering design: every module is exported inside yolov8n
in every format, for a third of the exports). Each such yolov8n is exported by ultralytics to
TorchScript, ONNX and OpenVINO with ``dynamic=True``, loaded
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

from _helpers import BUILTIN_NAMES, _registry_does_not_leak, activate, neck_groups, neck_mix_yaml  # noqa: F401
from yolo_attention.registry import create_attention, get_attention_info

pytestmark = pytest.mark.slow
pytest.importorskip("ultralytics")

IMGSZ = 64
SIZES = [(1, IMGSZ, IMGSZ), (2, 96, 128)]  # (batch, H, W): the export size, then another batch and both sides
BOX_ATOL_PER_PX = 2e-6  # box tolerance per pixel of the largest reference coordinate
SCORE_ATOL = 1e-5
GROUPS = neck_groups(BUILTIN_NAMES)


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


def _model_with(names: tuple[str, ...], tmp_path):
    """yolov8n with ``names[i]`` after the i-th neck output, every one of them activated."""
    from ultralytics import YOLO

    model = YOLO(str(neck_mix_yaml("yolov8n", names, tmp_path)))
    for name in names:
        cls = get_attention_info(name).cls
        layers = [m for m in model.model.modules() if type(m) is cls]
        assert len(layers) == 1, f"{len(layers)} {name} layers, expected 1"
        activate(layers[0])  # zero-initialised projections and gates would hide the module from the comparison
    return model


def _runtime(path: str, fmt: str):
    """ultralytics' AutoBackend for the exported file. OpenVINO: the one ultralytics' predictor
    compiles on its first ``predict``, inside ``openvino_precision("f32")`` (the recipe of
    docs/export.md). One thread is requested too: unlike the precision (float32 is the default
    anyway on CPUs without bfloat16) the thread count is visible everywhere, so it proves that
    the properties reach the model ultralytics compiles."""
    from ultralytics import YOLO
    from ultralytics.nn.autobackend import AutoBackend

    if fmt != "openvino":
        return AutoBackend(path, device=torch.device("cpu"), verbose=False)
    from yolo_attention.integrations.openvino_precision import (
        compiled_precision,
        openvino_cpu_config,
        openvino_precision,
    )

    model = YOLO(path, task="detect")
    with openvino_precision("f32"), openvino_cpu_config({"INFERENCE_NUM_THREADS": 1}):
        model.predict(np.zeros((IMGSZ, IMGSZ, 3), dtype=np.uint8), imgsz=IMGSZ, device="cpu", verbose=False)
    backend = model.predictor.model
    compiled = getattr(getattr(backend, "backend", None), "ov_compiled_model", None)
    assert compiled is not None, "ultralytics' AutoBackend no longer exposes backend.ov_compiled_model"
    assert compiled_precision(compiled) == "f32"
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    return backend


def _as_array(y) -> np.ndarray:
    y = y[0] if isinstance(y, (list, tuple)) else y
    return y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)


def _check_parity(where: str, got: np.ndarray, ref: np.ndarray, box_atol_per_px: float, score_atol: float):
    assert got.shape == ref.shape, f"{where}: exported {got.shape} vs PyTorch {ref.shape}"
    box_err = float(np.abs(got[:, :4] - ref[:, :4]).max())
    score_err = float(np.abs(got[:, 4:] - ref[:, 4:]).max())
    box_max = float(np.abs(ref[:, :4]).max())
    print(f"parity {where}: box {box_err:.3g} (max |box| {box_max:.4g}) score {score_err:.3g}")
    assert box_err <= box_atol_per_px * max(1.0, box_max), f"{where}: boxes differ by {box_err}"
    assert score_err <= score_atol, f"{where}: scores differ by {score_err}"


def _compare(what: str, model, run, sizes, box_atol_per_px: float, score_atol: float):
    """Run the exported model (``run``: CPU input tensor -> array) and PyTorch on random inputs of ``sizes``."""
    net = model.model.eval()
    gen = torch.Generator().manual_seed(0)
    for n, h, w in sizes:
        x = torch.rand(n, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = net(x)[0].numpy()
            got = run(x)
        _check_parity(f"{what} at {(n, 3, h, w)}", got, ref, box_atol_per_px, score_atol)


def _export(model, fmt: str, **kwargs) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes are expected here
        return model.export(format=fmt, imgsz=IMGSZ, verbose=False, **kwargs)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("names", GROUPS, ids="+".join)
def test_exported_yolov8n_matches_pytorch(names, fmt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ultralytics writes exports beside the YAML's bare name, i.e. in the cwd
    spec = FORMATS[fmt]
    for package in spec.requires:
        pytest.importorskip(package)
    model = _model_with(names, tmp_path)
    runtime = _runtime(_export(model, fmt, dynamic=True, device="cpu", **spec.kwargs), fmt)
    _compare(f"{'+'.join(names)} {fmt}", model, lambda x: _as_array(runtime(x)), SIZES, BOX_ATOL_PER_PX, SCORE_ATOL)


def test_static_onnx_for_tensorrt_has_constant_topk():
    """TensorRT needs TopK's k as a constant. ultralytics' TensorRT export goes through a static
    (``dynamic=False``), simplified ONNX graph; in it every TopK of every module must read a
    constant k (with dynamic H and W, k = min(regions, topk) is computed from the shape)."""
    onnx = pytest.importorskip("onnx")
    onnxslim = pytest.importorskip("onnxslim")
    import io

    with_topk = []
    for attn in BUILTIN_NAMES:
        m = activate(create_attention(attn, 32)).eval()
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, torch.randn(1, 32, 8, 12), f, dynamo=False, opset_version=17)
            graph = onnxslim.slim(onnx.load_from_string(f.getvalue())).graph
        constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        topks = [n for n in graph.node if n.op_type == "TopK"]
        assert all(n.input[1] in constants for n in topks), f"{attn}: a TopK takes a computed k in the static graph"
        with_topk += [attn] * bool(topks)
    assert with_topk, "no registered module has a TopK: this test checks nothing any more"


# ---------------------------------------------------------------------------------------- GPU runtimes
# Not measured on a GPU yet (benchmarks/gpu_export.sh runs them): the tolerances are set from
# float32 arithmetic with TF32 switched off (ONNX Runtime) and from TF32's 10-bit mantissa
# (TensorRT builds float32 engines with TF32 allowed and ultralytics does not switch it off).

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_FP32_BOX_ATOL_PER_PX, GPU_FP32_SCORE_ATOL = 1e-5, 1e-4
TF32_BOX_ATOL_PER_PX, TF32_SCORE_ATOL = 5e-3, 5e-3


@needs_cuda
@pytest.mark.parametrize("names", GROUPS, ids="+".join)
def test_onnxruntime_cuda_matches_pytorch(names, tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without CUDAExecutionProvider (install onnxruntime-gpu)")
    monkeypatch.chdir(tmp_path)
    model = _model_with(names, tmp_path)
    path = _export(model, "onnx", dynamic=True, device="cpu", simplify=False)
    sess = ort.InferenceSession(path, providers=[("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"])
    assert sess.get_providers()[0] == "CUDAExecutionProvider"
    name = sess.get_inputs()[0].name
    _compare(f"{'+'.join(names)} onnxruntime-cuda", model, lambda x: sess.run(None, {name: x.numpy()})[0], SIZES,
             GPU_FP32_BOX_ATOL_PER_PX, GPU_FP32_SCORE_ATOL)


@needs_cuda
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("names", GROUPS, ids="+".join)
def test_tensorrt_engine_matches_pytorch(names, dynamic, tmp_path, monkeypatch):
    pytest.importorskip("tensorrt")
    from ultralytics.nn.autobackend import AutoBackend

    monkeypatch.chdir(tmp_path)
    model = _model_with(names, tmp_path)
    kwargs = {"batch": 2} if dynamic else {}  # a dynamic engine needs its largest batch
    path = _export(model, "engine", dynamic=dynamic, device=0, **kwargs)  # float32 engine: the default
    runtime = AutoBackend(path, device=torch.device("cuda:0"), verbose=False)
    _compare(f"{'+'.join(names)} tensorrt", model, lambda x: _as_array(runtime(x.cuda())), SIZES if dynamic else SIZES[:1],
             TF32_BOX_ATOL_PER_PX, TF32_SCORE_ATOL)
