"""Deployment: ONNX export as ultralytics does it, and torch.compile(fullgraph=True) on CPU."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch

from _helpers import _registry_does_not_leak, assert_finite, attn_name, make  # noqa: F401

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

C = 16
EXPORT_SIZES = [(14, 14), (5, 7)]
# sizes run through the exported file: the export size, odd, rectangular, 1x1, larger than exported
RUN_SHAPES = [(1, 14, 14), (2, 5, 7), (1, 1, 1), (3, 33, 47), (1, 20, 15), (2, 1, 9), (1, 64, 64)]


def _export(m: torch.nn.Module, x: torch.Tensor) -> bytes:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ints are expected and harmless here
        torch.onnx.export(
            m,
            x,
            f,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
        )
    return f.getvalue()


def _session(model_bytes: bytes):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _check_against_torch(m, sess, shapes, what):
    for n, h, w in shapes:
        x = torch.randn(n, C, h, w)
        with torch.no_grad():
            ref = m(x).numpy()
        out = sess.run(None, {"x": x.numpy()})[0]
        assert out.shape == ref.shape, f"{what}: ONNX output {out.shape} != torch {ref.shape} at {(n, C, h, w)}"
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4, err_msg=f"{what} at {(n, C, h, w)}")


@pytest.mark.parametrize("export_size", EXPORT_SIZES, ids=[f"export{h}x{w}" for h, w in EXPORT_SIZES])
def test_onnx_legacy_export_dynamic_hw(attn_name, export_size):
    m = make(attn_name, C).eval()
    model_bytes = _export(m, torch.randn(1, C, *export_size))

    model = onnx.load_from_string(model_bytes)
    onnx.checker.check_model(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["n", C, "h", "w"]

    _check_against_torch(m, _session(model_bytes), RUN_SHAPES, f"{attn_name} exported at {export_size}")


def test_onnxslim_keeps_dynamic_shapes(attn_name):
    """ultralytics simplifies exported models with onnxslim: the slimmed graph must stay shape-agnostic."""
    onnxslim = pytest.importorskip("onnxslim")
    m = make(attn_name, C).eval()
    model = onnx.load_from_string(_export(m, torch.randn(1, C, 14, 14)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slim = onnxslim.slim(model)
    onnx.checker.check_model(slim)
    _check_against_torch(m, _session(slim.SerializeToString()), [(1, 14, 14), (2, 5, 7), (1, 1, 1), (1, 33, 47)],
                         f"{attn_name} slimmed")


def test_onnx_export_leaves_module_unchanged(attn_name):
    """Exporting must not change the module (no BatchNorm statistics updated, mode restored)."""
    m = make(attn_name, C).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    _export(m, torch.randn(2, C, 9, 9))
    assert not m.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), f"export changed {k}"


# --------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------


@pytest.fixture
def dynamo_reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_compile_fullgraph_captures_whole_module(attn_name, mode, dynamo_reset):
    """fullgraph=True raises on any graph break; the eager backend makes this check cheap (no codegen).
    Dynamic shapes and a second size exercise the symbolic-shape path of every module."""
    m = make(attn_name, C).train(mode == "train")
    ref_m = copy.deepcopy(m)
    cm = torch.compile(m, fullgraph=True, backend="eager", dynamic=True)
    shapes = [(2, 14, 14), (3, 33, 47)] if mode == "train" else [(2, 20, 15), (1, 1, 1)]
    for n, h, w in shapes:
        x = torch.randn(n, C, h, w, requires_grad=mode == "train")
        y = cm(x)
        ref = ref_m(x)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
        if mode == "train":
            y.sum().backward()
            assert_finite(x.grad)


@pytest.mark.slow
def test_compile_inductor_fullgraph_dynamic_shapes(attn_name, dynamo_reset):
    """The real thing: inductor code generation with dynamic H, W (as after a multi-scale or
    rectangular-validation size change), fullgraph, eval mode, matching eager."""
    m = make(attn_name, C).eval()
    cm = torch.compile(m, fullgraph=True, dynamic=True)
    with torch.no_grad():
        # sizes that no region grid divides: one dynamic graph serves both (one compilation)
        for n, h, w in [(3, 33, 47), (2, 20, 15)]:
            x = torch.randn(n, C, h, w)
            torch.testing.assert_close(cm(x), m(x), rtol=1e-4, atol=1e-5)
