"""Honest cost: our FLOPs beside ultralytics' figure, per attention layer."""

from __future__ import annotations

import pytest

pytest.importorskip("ultralytics")

import yolo_attention  # noqa: E402,F401
from yolo_attention.integrations.cost import load_detection_model, main, model_cost, ultralytics_gflops  # noqa: E402
from yolo_attention.integrations.yaml_gen import make_attention_yaml  # noqa: E402


@pytest.fixture(scope="module")
def bra_model(tmp_path_factory):
    path = make_attention_yaml("yolov8n", "bra", "neck", out=tmp_path_factory.mktemp("cfg") / "yolov8n-bra-neck.yaml")
    return load_detection_model(path)


def test_model_cost_reports_attention_ops_that_matmul_counters_miss(bra_model):
    cost = model_cost(bra_model, imgsz=160)
    base = model_cost(load_detection_model("yolov8n"), imgsz=160)
    assert [c.index for c in cost.attention_layers] == [16, 20, 24]
    for layer in cost.attention_layers:
        assert layer.type == "BiLevelRoutingAttention"
        assert layer.flops > layer.flops_matmul > 0  # softmax, top-k, masking are counted on top
        assert layer.params == sum(p.numel() for p in bra_model.model[layer.index].parameters())
    assert cost.flops > cost.flops_matmul
    added = cost.flops - base.flops
    # the whole-model difference is the attention layers' own cost (the rest of the model is identical)
    assert added == sum(c.flops for c in cost.attention_layers)
    assert cost.ultralytics_gflops > 0 and cost.params == sum(p.numel() for p in bra_model.parameters())
    assert "BiLevelRoutingAttention" in cost.table()


def test_ultralytics_figure_is_thop_convention(bra_model):
    value, method = ultralytics_gflops(load_detection_model("yolov8n"), 640)
    assert method in ("get_flops", "thop at full size")
    assert 8.0 < value < 9.5  # yolov8n: ultralytics documents 8.7 GFLOPs at 640


def test_cost_cli(capsys):
    assert main(["yolov8n", "--imgsz", "128"]) == 0
    out = capsys.readouterr().out
    assert "ultralytics' own figure" in out and "parameters" in out
    assert main(["does-not-exist.pt"]) == 2
    assert "does not exist" in capsys.readouterr().err
