"""`yolo-attention ablate`: reports, FLOPs, resume, failures, determinism and argument checks."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("ultralytics")

from yolo_attention.ablate import main  # noqa: E402

TINY = ["--epochs", "1", "--imgsz", "64", "--batch", "4", "--n-train", "8", "--n-val", "4", "--device", "cpu"]

FAILING_MODULE = '''
import torch.nn as nn
from yolo_attention import register_attention


@register_attention("failtest", kind="custom", override=True)
class FailTest(nn.Module):
    """Identity at build time (eval mode); raises as soon as it is trained."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        if self.training:
            raise RuntimeError("injected failure for the ablation test")
        return x
'''


def _run(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate") / "out"
    rc = main(["--attn", "none,se", "--out", str(out), *TINY])
    return rc, out


def _result(out: Path, variant: str, seed: int = 0) -> dict:
    return json.loads((out / "runs" / variant / f"seed{seed}" / "result.json").read_text())


@pytest.mark.slow
def test_end_to_end_files_columns_and_flops(first_run):
    rc, out = first_run
    assert rc == 0
    for name in ("results.csv", "results.md", "results.json", "results.png", "runs.csv", "ablate.json"):
        assert (out / name).is_file(), name
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["variant"] for r in rows] == ["none", "se"]
    for col in ("params", "gflops", "gflops_ultralytics", "latency_b1_ms", "latency_batch_ms", "train_s",
                "peak_mem_mb", "map50", "map50_95", "delta_map50_95", "verdict"):
        assert col in rows[0], col
    md = (out / "results.md").read_text()
    for head in ("GFLOPs (all ops)", "GFLOPs (ultralytics)", "latency b1 (ms)", "latency b4 (ms)", "mAP50-95",
                 "verdict"):
        assert head in md
    assert "no verdict possible with one seed" in md
    base, se = _result(out, "none"), _result(out, "se")
    for r in (base, se):
        assert r["status"] == "ok"
        assert 0.0 <= r["map50"] <= 1.0 and 0.0 <= r["map50_95"] <= 1.0
        assert r["latency_b1_ms"] > 0 and r["latency_batch_ms"] > 0 and r["peak_mem_mb"] > 50
        assert r["gflops"] > 0 and r["gflops_ultralytics"] > 0
    assert se["params"] > base["params"]
    # SE's own operations (pooling, sigmoid, the gate's multiply) are counted: the all-ops total grows by more
    # than its matrix products alone, and exceeds ultralytics' (convolutions and matmuls only) figure
    assert se["gflops"] - base["gflops"] > se["gflops_matmul"] - base["gflops_matmul"] > 0
    assert se["gflops"] > se["gflops_ultralytics"]


@pytest.mark.slow
def test_resume_reruns_nothing(first_run, capsys):
    _, out = first_run
    results = out / "runs" / "se" / "seed0" / "result.json"
    before = (results.stat().st_mtime_ns, results.read_text(), (out / "results.csv").read_text())
    rc, stdout, _ = _run(["--attn", "none,se", "--out", str(out), *TINY], capsys)
    assert rc == 0
    assert "skipped none seed0" in stdout and "skipped se seed0" in stdout and "0 run(s) to train" in stdout
    assert results.stat().st_mtime_ns == before[0] and results.read_text() == before[1]
    assert (out / "results.csv").read_text() == before[2]


@pytest.mark.slow
def test_changed_settings_in_same_out_are_refused(first_run, capsys):
    _, out = first_run
    rc, _, err = _run(["--attn", "none,se", "--out", str(out), *TINY[:-2], "--device", "cpu", "lr0=0.03"], capsys)
    assert rc == 2 and "other settings" in err and "train_args" in err


@pytest.mark.slow
def test_determinism_and_failing_variant(first_run, tmp_path, capsys):
    """A second --out with the same seed reproduces the numbers; a variant that raises while training is
    recorded with its error and the other variants complete."""
    _, out1 = first_run
    mod = tmp_path / "failing_attention.py"
    mod.write_text(textwrap.dedent(FAILING_MODULE))
    out2 = tmp_path / "out2"
    rc, stdout, err = _run(["--attn", "none,failtest,se", "--import", str(mod), "--out", str(out2), *TINY], capsys)
    assert rc == 1 and "failtest" in err
    failed = _result(out2, "failtest")
    assert failed["status"] == "failed" and "injected failure" in failed["error"]
    for v in ("none", "se"):
        a, b = _result(out1, v), _result(out2, v)
        assert b["status"] == "ok"
        assert (a["map50"], a["map50_95"]) == (b["map50"], b["map50_95"])
        assert a["params"] == b["params"] and a["gflops"] == b["gflops"]
    rows = {r["variant"]: r for r in csv.DictReader(open(out2 / "results.csv"))}
    assert rows["failtest"]["status"] == "failed" and "injected failure" in rows["failtest"]["error"]
    assert rows["se"]["status"] == "ok"
    # failed runs are kept on resume (a deterministic failure would only fail again)
    rc, stdout, _ = _run(["--attn", "none,failtest,se", "--import", str(mod), "--out", str(out2), *TINY], capsys)
    assert "skipped failtest seed0: already finished (failed)" in stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attn", "none,nosuchmodule"], "unknown attention module 'nosuchmodule'"),
        (["--attn", "none,se", "--at", "nowhere"], "unknown place 'nowhere'"),
        (["--data", "/nonexistent/data.yaml"], "does not exist"),
        (["--attn", "none,bra:num_heads=3"], "must be divisible by 'num_heads'"),
        (["--model", "yolov99z"], "unknown model"),
        (["--attn", "none,se", "epochs=3"], "use --epochs instead"),
        (["--attn", "none,se", "lr00=0.1"], "unknown ultralytics training argument"),
        (["--imgsz", "100"], "multiple of 32"),
    ],
)
def test_bad_arguments_fail_before_training(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    rc, _, err = _run(["--out", str(out), *TINY, *extra], capsys)
    assert rc == 2
    assert message in err, err
    assert not (out / "runs").exists() and not (out / "data").exists()


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--model", "--attn", "--at", "--data", "--epochs", "--imgsz", "--batch", "--seeds", "--device", "--out",
                "key=value"):
        assert opt in text


@pytest.mark.slow
def test_checkpoint_model_builds_gated_variants_up_front(first_run, capsys):
    """A .pt model takes the add_attention (gated) path; its variants are built before any training too."""
    from yolo_attention.ablate import Variant, _build_variant

    _, out = first_run
    pt = out / "runs" / "none" / "seed0" / "train" / "weights" / "best.pt"
    _, det, _ = _build_variant(str(pt), Variant("se", "se"), "neck", None)
    assert sum(type(m).__name__ == "GatedAttention" for m in det.modules()) == 3
    out2 = out.parent / "pt-bad"
    rc, _, err = _run(["--model", str(pt), "--attn", "none,bra:num_heads=3", "--out", str(out2), *TINY], capsys)
    assert rc == 2 and "num_heads" in err and not (out2 / "runs").exists()


@pytest.mark.parametrize("model", ["yolov8n", "yolov7-tiny"])
def test_every_variant_builds_for_bundled_and_shipped_configs(model, tmp_path):
    """The baseline of a config shipped with yolo-attention (YOLOv7) resolves to our file, not ultralytics'."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_attention.ablate import _build_variant, parse_variants

    for v in parse_variants("none,se"):
        _, det, cfg = _build_variant(model, v, "neck", nc=4, yaml_out=tmp_path / f"{model}-{v.dirname}.yaml")
        assert isinstance(det, DetectionModel) and det.yaml["nc"] == 4
        assert DetectionModel(cfg, nc=4, verbose=False).yaml["backbone"] == det.yaml["backbone"]
