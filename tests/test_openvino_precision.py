"""openvino_precision / openvino_cpu_config: OpenVINO CPU properties for compilations we do not control."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from yolo_attention.integrations.openvino_precision import (  # noqa: E402
    compiled_precision,
    openvino_cpu_config,
    openvino_precision,
)


W = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)


def _tiny_model():
    """y = x @ W: one matrix product, the operation bfloat16 changes most."""
    from openvino import opset13 as ops

    x = ops.parameter([2, 8], np.float32, name="x")
    return ov.Model([ops.matmul(x, ops.constant(W), False, False)], [x], "tiny")


def _threads(compiled) -> int:
    return int(compiled.get_property("INFERENCE_NUM_THREADS"))


def test_config_reaches_compilations_in_the_block_only():
    model = _tiny_model()
    original = ov.Core.compile_model
    default = _threads(ov.Core().compile_model(model, "CPU"))
    assert default != 1, "pick another property: 1 thread is already the default here"
    with openvino_cpu_config({"INFERENCE_NUM_THREADS": 1}):
        assert _threads(ov.Core().compile_model(model, "CPU")) == 1
        # what the caller passes to compile_model itself still wins
        assert _threads(ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": default})) == default
    assert ov.Core.compile_model is original
    assert _threads(ov.Core().compile_model(model, "CPU")) == default


def test_patch_is_removed_when_the_block_raises():
    original = ov.Core.compile_model
    with pytest.raises(RuntimeError, match="boom"):
        with openvino_precision("f32"):
            assert ov.Core.compile_model is not original
            raise RuntimeError("boom")
    assert ov.Core.compile_model is original


def test_nested_blocks_apply_both_and_restore_in_order():
    model = _tiny_model()
    original = ov.Core.compile_model
    with openvino_precision("f32"):
        with openvino_cpu_config({"INFERENCE_NUM_THREADS": 1}):
            compiled = ov.Core().compile_model(model, "CPU")
            assert _threads(compiled) == 1 and compiled_precision(compiled) == "f32"
        assert ov.Core.compile_model is not original
    assert ov.Core.compile_model is original


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_requested_precision_or_openvinos_documented_fallback(precision):
    """f32 is always honoured; bf16 only where the CPU supports it (OpenVINO falls back to f32 otherwise)."""
    supports_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    model = _tiny_model()
    with openvino_precision(precision):
        compiled = ov.Core().compile_model(model, "CPU")
    expected = "bf16" if precision == "bf16" and supports_bf16 else "f32"
    assert compiled_precision(compiled) == expected
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    # float32: a few ulps of sums of 8 products of size ~1; bfloat16 inputs: 2**-8 relative each
    atol = 1e-5 if expected == "f32" else 0.1
    np.testing.assert_allclose(compiled(x)[0], x.astype(np.float64) @ W, atol=atol)


def test_bad_arguments_name_the_function_and_argument():
    with pytest.raises(ValueError, match=r"openvino_precision: argument 'precision' must be one of"):
        openvino_precision("fp32")
    with pytest.raises(TypeError, match=r"openvino_cpu_config: argument 'config' must be a non-empty dict"):
        with openvino_cpu_config({}):
            pass
