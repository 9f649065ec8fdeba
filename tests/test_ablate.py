"""`yolo-attention ablate`: reports, statistics, costs, resume, failures, determinism and argument checks."""

from __future__ import annotations

import csv
import json
import os
import re
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ultralytics")

from yolo_attention.ablate import main  # noqa: E402

TINY = ["--epochs", "1", "--base-epochs", "0", "--imgsz", "64", "--batch", "4", "--n-train", "8", "--n-val", "4",
        "--device", "cpu", "--cpus-per-run", "1"]

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
    """none and se at the neck, 2 seeds, one epoch each (the Ray tests compare against these runs)."""
    out = tmp_path_factory.mktemp("ablate") / "out"
    rc = main(["--attn", "none,se", "--seeds", "2", "--out", str(out), *TINY])
    return rc, out


def _result(out: Path, run: str, seed: int = 0) -> dict:
    return json.loads((out / "runs" / run / f"seed{seed}" / "result.json").read_text())


@pytest.mark.slow
def test_end_to_end_files_columns_statistics_and_costs(first_run):
    from yolo_attention.ablate.matches import ValMatches, map_scores
    from yolo_attention.ablate.stats import N_BOOT, Replicates

    rc, out = first_run
    assert rc == 0
    for name in ("results.csv", "results.md", "results.json", "results.png", "runs.csv", "ablate.json", "costs.json"):
        assert (out / name).is_file(), name
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["variant"] for r in rows] == ["none", "se@neck"]
    for col in ("params", "gflops", "gflops_ultralytics", "latency_b1_ms", "latency_batch_ms", "train_images_per_s",
                "train_peak_mem_mb", "map50", "map50_95", "delta_map50_95", "delta_map50_95_ci", "verdict"):
        assert col in rows[0], col
    md = (out / "results.md").read_text()
    for head in ("GFLOPs (all ops)", "GFLOPs (ultralytics)", "latency b1 (ms)", "latency b4 (ms)", "train (img/s)",
                 "mAP50-95", "Δ mAP50-95 [95% CI]", "verdict", "(2 seeds)", "(1.00x)"):
        assert head in md, head
    for seed in (0, 1):
        for run in ("none", "se@neck"):
            r = _result(out, run, seed)
            assert r["status"] == "ok" and 0.0 <= r["map50_95"] <= r["map50"] <= 1.0
            assert [p["epoch"] for p in r["curve"]] == [1]
            # the stored per-image matches give ultralytics' own mAP of the final validation
            m = ValMatches.load(out / "runs" / run / f"seed{seed}" / r["matches"])
            assert len(m.images) == 4
            assert map_scores(m) == pytest.approx((r["map50"], r["map50_95"]), abs=1e-12)
            stored = Replicates.load(out / "runs" / run / f"seed{seed}" / r["bootstrap"])  # by the worker
            assert np.array_equal(stored.maps, Replicates.of(m).maps) and stored.n_boot == N_BOOT
    res = json.loads((out / "results.json").read_text())
    se = res["variants"][1]
    assert se["n_seeds"] == 2 and se["interval_covers"] == "seeds and validation sampling"
    low, high = se["delta_map50_95_ci"]
    assert low <= se["delta_map50_95"] <= high
    assert se["verdict"] == se["verdict_map50_95"] in ("better", "worse", "no clear difference")
    assert res["variants"][0]["verdict"] == "baseline"
    assert (low > 0) == (se["verdict_map50_95"] == "better") and (high < 0) == (se["verdict_map50_95"] == "worse")
    assert se["curve"]["epochs"] == [1] and len(se["curve"]["map50_95_mean"]) == 1
    for k in ("latency_b1_ms", "latency_batch_ms", "train_images_per_s", "train_peak_mem_mb", "params", "gflops"):
        assert se["cost_ratios"][k] > 0, k
    costs = json.loads((out / "costs.json").read_text())
    assert costs["device"] and costs["repeats"] >= 2
    base, sec = (next(c for c in costs["variants"] if c["variant"] == n) for n in ("none", "se@neck"))
    for c in (base, sec):
        assert c["latency_b1_ms"] > 0 and c["latency_batch_ms"] > 0 and c["train_images_per_s"] > 0
        assert c["train_peak_mem_mb"] > 0 and c["gflops"] > 0 and c["gflops_ultralytics"] > 0
    assert sec["params"] > base["params"]
    assert se["cost_ratios"]["latency_b1_ms"] == pytest.approx(sec["latency_b1_ms"] / base["latency_b1_ms"])
    # SE's own operations (pooling, sigmoid, the gate's multiply) are counted: the all-ops total grows by more
    # than its matrix products alone, and exceeds ultralytics' (convolutions and matmuls only) figure
    assert sec["gflops"] - base["gflops"] > sec["gflops_matmul"] - base["gflops_matmul"] > 0
    assert sec["gflops"] > sec["gflops_ultralytics"]


@pytest.mark.slow
def test_resume_reruns_nothing(first_run, capsys):
    _, out = first_run
    results = out / "runs" / "se@neck" / "seed0" / "result.json"
    before = (results.stat().st_mtime_ns, results.read_text(), (out / "results.csv").read_text())
    pictures = {p: p.stat().st_mtime_ns for p in (out / "explain").rglob("*.png")}
    rc, stdout, _ = _run(["--attn", "none,se", "--seeds", "2", "--out", str(out), *TINY], capsys)
    assert rc == 0
    assert "skipped none/seed0" in stdout and "skipped se@neck/seed1" in stdout and "0 run(s) to train" in stdout
    assert "measuring costs" not in stdout  # the side-by-side costs of the same variants are kept too
    assert results.stat().st_mtime_ns == before[0] and results.read_text() == before[1]
    assert (out / "results.csv").read_text() == before[2]
    # the pictures of the same checkpoints and images are kept, not drawn again
    assert "se: kept (same checkpoints and images)" in stdout
    assert pictures and {p: p.stat().st_mtime_ns for p in (out / "explain").rglob("*.png")} == pictures


def _md_links(md: str) -> list[str]:
    from urllib.parse import unquote

    return [unquote(t) for t in re.findall(r"\]\(([^)]+)\)", md)]


class _Page(HTMLParser):
    """The rows of report.html's tables and the sources of its images; fails on a tag closed out of order
    or left open (HTMLParser itself accepts anything)."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.rows, self.images, self._cell, self._open = [], [], None, []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self._open.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        assert self._open and self._open.pop() == tag, f"</{tag}> closes nothing open"
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
            self._cell = None


def _page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert not page._open, f"{path}: tags left open: {page._open}"
    return page


@pytest.mark.slow
def test_pictures_next_to_the_baseline_in_results_md_and_report_html(first_run):
    """--explain (default 4 on the generated data): the baseline's and SE's seed-0 weights side by side on the
    validation images; results.md links every picture; report.html holds the table, the plot and the pictures."""
    import base64
    import hashlib

    _, out = first_run
    folder = out / "explain" / "se@neck"
    record = json.loads((folder / "explain.json").read_text())
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    weights = [out / "runs" / v / "seed0" / "train" / "weights" / "last.pt" for v in ("none", "se@neck")]
    assert record["identity"]["models"] == [["none", sha(weights[0])], ["se", sha(weights[1])]]
    images = sorted((out / "data" / "images" / "val").glob("*.png"))
    assert [name for name, _ in record["identity"]["images"]] == [p.name for p in images]  # 4 of 4
    assert not (out / "explain" / "none").exists()  # the baseline is drawn next to every variant
    pictures = {folder / p["path"] for p in record["pictures"]}
    assert {p.name for p in pictures if p.parent.name == "detections"} == {p.name for p in images}
    assert folder / "attention" / "se" / "channels.png" in pictures
    # explain's own page of the pair lists both models
    assert [r[0] for r in _page(folder / "report.html").rows[1:]] == ["none", "se"]
    md = (out / "results.md").read_text()
    links = _md_links(md[md.index("## Pictures"):])
    assert all((out / link).is_file() for link in links), links
    assert pictures <= {out / link for link in links} and "report.html" in links
    page = _page(out / "report.html")
    table = {r[0]: r for r in page.rows if r and r[0] in ("none", "se")}
    assert set(table) == {"none", "se"} and table["none"][-1] == "baseline"
    assert table["se"][-1].startswith(("better", "worse", "no clear difference"))
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in page.images}
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert (out / "results.png").read_bytes() in embedded
    assert {p.read_bytes() for p in pictures} <= embedded and len(page.images) == len(pictures) + 1


@pytest.mark.slow
def test_other_images_are_drawn_again_and_explain_0_draws_none(first_run, capsys):
    """Other images (--explain 2): drawn again, and only theirs stay; --explain 0 draws nothing and touches
    nothing, and report.html still has the table and the plot."""
    _, out = first_run
    argv = ["--attn", "none,se", "--seeds", "2", "--out", str(out), *TINY]
    rc, stdout, _ = _run(argv + ["--explain", "2"], capsys)
    assert rc == 0 and "se: 3 picture(s)" in stdout
    folder = out / "explain" / "se@neck"
    # evenly spaced over the sorted images: the first and the last
    assert sorted(p.name for p in (folder / "detections").iterdir()) == ["000000.png", "000003.png"]
    md = (out / "results.md").read_text()
    assert "detections and CAMs: [000000](explain/se@neck/detections/000000.png) [000003]" in md
    kept = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    rc, stdout, _ = _run(argv + ["--explain", "0"], capsys)
    assert rc == 0 and "drawing pictures" not in stdout and "## Pictures" not in (out / "results.md").read_text()
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == kept
    page = _page(out / "report.html")
    assert len(page.images) == 1 and [r[0] for r in page.rows].count("se") == 1
    rc, stdout, _ = _run(argv, capsys)  # back to the default 4 images for the tests that follow
    assert rc == 0 and "se: 5 picture(s)" in stdout


@pytest.mark.slow
def test_changed_settings_in_same_out_are_refused(first_run, capsys):
    _, out = first_run
    rc, _, err = _run(["--attn", "none,se", "--out", str(out), *TINY, "lr0=0.03"], capsys)
    assert rc == 2 and "other settings" in err and "train" in err


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
    failed = _result(out2, "failtest@neck")
    assert failed["status"] == "failed" and "injected failure" in failed["error"]
    for v in ("none", "se@neck"):
        a, b = _result(out1, v), _result(out2, v)
        assert b["status"] == "ok"
        assert (a["map50"], a["map50_95"], a["curve"]) == (b["map50"], b["map50_95"], b["curve"])
    rows = {r["variant"]: r for r in csv.DictReader(open(out2 / "results.csv"))}
    assert rows["failtest@neck"]["status"] == "failed" and "injected failure" in rows["failtest@neck"]["error"]
    assert rows["se@neck"]["status"] == "ok"
    # the failed variant gets a note instead of pictures; the others are drawn
    md = (out2 / "results.md").read_text()
    assert "- **failtest**: no pictures: its runs failed" in md and "- **se** next to none:" in md
    assert "failtest: no pictures: its runs failed" in (out2 / "report.html").read_text()
    # with one seed the interval covers validation sampling only, and the report says so
    assert "validation sampling only" in rows["se@neck"]["verdict_text"]
    assert rows["se@neck"]["verdict"] in ("better", "worse", "no clear difference")
    # failed runs are kept on resume (a deterministic failure would only fail again)
    rc, stdout, _ = _run(["--attn", "none,failtest,se", "--import", str(mod), "--out", str(out2), *TINY], capsys)
    assert "skipped failtest@neck/seed0: already finished (failed)" in stdout


@pytest.mark.slow
def test_base_stage_then_fine_tuned_variants(tmp_path, capsys):
    """--base-epochs: the unmodified model trains once per seed; every variant fine-tunes from it with the
    attention inserted as the identity; the base is reused on resume."""
    import torch

    out = tmp_path / "out"
    argv = ["--attn", "se", "--out", str(out), *TINY, "--base-epochs", "1", "--epochs", "2", "--val-every", "2"]
    rc, stdout, _ = _run(argv, capsys)
    assert rc == 0, stdout
    base, se = _result(out, "base"), _result(out, "se@neck")
    assert base["status"] == se["status"] == "ok" and base["stage"] == "base" and se["stage"] == "train"
    ckpt = torch.load(out / "runs" / "se@neck" / "seed0" / se["weights"], weights_only=False)
    assert sum(type(m).__name__ == "GatedAttention" for m in ckpt["model"].modules()) == 3
    res = json.loads((out / "results.json").read_text())
    assert res["base"]["seeds_ok"] == [0] and res["base"]["curve"]["epochs"] == [1]
    assert [p["epoch"] for p in se["curve"]] == [2]  # --val-every 2: validated after epoch 2 only
    assert "fine-tuned from a base" in res["title"]
    # no baseline ('none') in the sweep: the variant is drawn alone, and the reports say so
    assert [r[0] for r in _page(out / "explain" / "se@neck" / "report.html").rows[1:]] == ["se"]
    assert "the sweep has no baseline ('none'): each variant is drawn alone" in (out / "results.md").read_text()
    rc, stdout, _ = _run(argv, capsys)
    assert rc == 0 and "skipped base/seed0" in stdout and "0 run(s) to train" in stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attn", "none,nosuchmodule"], "unknown attention module 'nosuchmodule'"),
        (["--attn", "none,se", "--at", "nowhere"], "unknown place 'nowhere'"),
        (["--attn", "none,se", "--at", "neck", "--at", "nowhere"], "unknown place 'nowhere'"),
        (["--data", "/nonexistent/data.yaml"], "does not exist"),
        (["--attn", "none,bra:num_heads=3"], "must be divisible by 'num_heads'"),
        (["--model", "yolov99z"], "unknown model"),
        (["--attn", "none,se", "epochs=3"], "use --epochs instead"),
        (["--attn", "none,se", "lr00=0.1"], "unknown ultralytics training argument"),
        (["--imgsz", "100"], "multiple of 32"),
        (["--base-epochs", "-1"], "--base-epochs"),
        (["--fetch-weights"], "goes with --ray"),
        (["--attn", "none,se,se"], "given twice"),
        (["--explain", "-1"], "--explain must be 0"),
    ],
)
def test_bad_arguments_fail_before_training(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    rc, _, err = _run(["--out", str(out), *TINY, *extra], capsys)
    assert rc == 2
    assert message in err, err
    assert not out.exists()


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--model", "--attn", "--at", "--data", "--epochs", "--base-epochs", "--val-every", "--imgsz", "--batch",
                "--seeds", "--device", "--out", "--n-train", "--n-val", "--ray", "--cpus-per-run", "--fetch-weights",
                "--explain", "key=value"):
        assert opt in text


def test_places_are_an_axis():
    """Every module at every place as its own row; the baseline once; key=value after --at goes to ultralytics."""
    from yolo_attention.ablate.cli import _fix_greedy_options, build_parser
    from yolo_attention.ablate.spec import parse_variants

    names = [v.name for v in parse_variants("none,se,bam:r=8", ["neck", "backbone"])]
    assert names == ["none", "se@neck", "se@backbone", "bam:r=8@neck", "bam:r=8@backbone"]
    a = build_parser().parse_args(["--at", "neck", "4,6", "--at", "sppf", "lr0=0.01", "--ray", "mosaic=0"])
    _fix_greedy_options(a)
    assert a.at == ["neck", "4,6", "sppf"] and a.train_args == ["mosaic=0", "lr0=0.01"] and a.ray == "local"
    a = build_parser().parse_args([])
    _fix_greedy_options(a)
    assert a.at == ["neck"] and a.ray is None


def test_plan_and_resume_semantics_with_a_fake_backend(tmp_path):
    """The loop every backend shares: parents before children, children of a failed base recorded as failed
    without running, finished runs never repeated, failed ones only with retry_failed."""
    from yolo_attention.ablate.results import RunResult
    from yolo_attention.ablate.spec import DataSpec, Stage, parse_variants
    from yolo_attention.ablate.sweep import Store, Sweep, execute, pending

    sweep = Sweep("yolov8n", tuple(parse_variants("none,se")), (0, 1), DataSpec(synthetic={"n_train": 2}, nc=4),
                  Stage("train", 1, 64, 4), base=Stage("base", 1, 64, 4))
    runs = sweep.plan()
    assert [r.run_id for r in runs] == ["base/seed0", "base/seed1", "none/seed0", "none/seed1", "se@neck/seed0",
                                        "se@neck/seed1"]
    assert runs[4].parent == "base/seed0" and runs[4].parent_fingerprint == runs[0].fingerprint

    class Fake:
        concurrency = 1

        def __init__(self, fail):
            self.fail, self.queue, self.ran = fail, [], []

        def submit(self, spec, parent_weights):
            assert spec.parent is None or parent_weights is not None and parent_weights.name == "last.pt"
            self.queue.append(spec)

        def next_result(self):
            spec = self.queue.pop(0)
            self.ran.append(spec.run_id)
            if spec.run_id in self.fail:
                return spec, RunResult.failed(spec, "boom", "RuntimeError")
            weights = "train/weights/last.pt"
            (store.run_dir(spec.run_id) / weights).parent.mkdir(parents=True, exist_ok=True)
            (store.run_dir(spec.run_id) / weights).write_bytes(b"w")
            return spec, RunResult(spec.run_id, spec.variant.name, spec.seed, spec.stage.name, spec.fingerprint,
                                   "ok", 0.5, 0.3, weights=weights)

    store = Store(tmp_path)
    fake = Fake(fail={"base/seed1"})
    finished, todo = pending(runs, store)
    results = execute(todo, finished, store, fake)
    assert fake.ran == ["base/seed0", "base/seed1", "none/seed0", "se@neck/seed0"]
    for child in ("none/seed1", "se@neck/seed1"):
        assert not results[child].ok and results[child].error_kind == "base run failed"
    again = Fake(fail=set())
    finished, todo = pending(runs, store, log=lambda s: None)
    assert todo == [] and execute(todo, finished, store, again) == finished and again.ran == []
    finished, todo = pending(runs, store, retry_failed=True, log=lambda s: None)
    execute(todo, finished, store, again)
    assert again.ran == ["base/seed1", "none/seed1", "se@neck/seed1"]
    # a changed base (another fingerprint) makes its children unfinished too
    other = Sweep(sweep.model, sweep.variants, sweep.seeds, sweep.data, sweep.train, base=Stage("base", 2, 64, 4))
    assert len(pending(other.plan(), store, log=lambda s: None)[1]) == 6


@pytest.mark.slow
def test_checkpoint_model_builds_gated_variants_up_front(first_run, capsys):
    """A .pt model takes the add_attention (gated) path; its variants are built before any training too."""
    from yolo_attention.ablate.build import build_variant
    from yolo_attention.ablate.spec import Variant

    _, out = first_run
    pt = out / "runs" / "none" / "seed0" / "train" / "weights" / "last.pt"
    _, det, _ = build_variant(str(pt), Variant("se", "se", {}, "neck"), None)
    assert sum(type(m).__name__ == "GatedAttention" for m in det.modules()) == 3
    out2 = out.parent / "pt-bad"
    rc, _, err = _run(["--model", str(pt), "--attn", "none,bra:num_heads=3", "--out", str(out2), *TINY], capsys)
    assert rc == 2 and "num_heads" in err and not (out2 / "runs").exists()


@pytest.mark.parametrize("model", ["yolov8n", "yolov7-tiny"])
def test_every_variant_builds_for_bundled_and_shipped_configs(model, tmp_path):
    """The baseline of a config shipped with yolo-attention (YOLOv7) resolves to our file, not ultralytics'."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_attention.ablate.build import build_variant
    from yolo_attention.ablate.spec import parse_variants

    for v in parse_variants("none,se"):
        _, det, cfg = build_variant(model, v, 4, yaml_out=tmp_path / f"{model}-{v.dirname}.yaml")
        assert isinstance(det, DetectionModel) and det.yaml["nc"] == 4
        assert DetectionModel(cfg, nc=4, verbose=False).yaml["backbone"] == det.yaml["backbone"]


def test_validate_every_n_epochs():
    from types import SimpleNamespace

    from yolo_attention.ablate.worker import _validate_every

    trainer = SimpleNamespace(args=SimpleNamespace(val=True), epoch=0)
    seen = []
    for epoch in range(6):
        trainer.epoch = epoch
        _validate_every(3)(trainer)
        seen.append(trainer.args.val)
    assert seen == [False, False, True, False, False, True]


def test_cost_spec_and_run_spec_roundtrip():
    from yolo_attention.ablate.spec import CostSpec, DataSpec, RunSpec, Stage, parse_variants

    v = parse_variants("none,bra:num_heads=4")
    run = RunSpec(v[1], 2, Stage("train", 3, 64, 4, {"lr0": 0.01}), "yolov8n", DataSpec(yaml="/d.yaml", nc=3),
                  parent="base/seed2", parent_fingerprint="abc", imports=("x.py",))
    back = RunSpec.from_dict(json.loads(json.dumps(run.to_dict())))
    assert back == run and back.fingerprint == run.fingerprint and back.variant.kwargs == {"num_heads": 4}
    assert RunSpec.from_dict({**run.to_dict(), "threads": 7, "imports": []}).fingerprint == run.fingerprint
    assert RunSpec.from_dict({**run.to_dict(), "seed": 3}).fingerprint != run.fingerprint
    cost = CostSpec(tuple(v), "yolov8n", True, DataSpec(nc=3), 64, 4)
    assert CostSpec.from_dict(json.loads(json.dumps(cost.to_dict()))).fingerprint == cost.fingerprint
    assert CostSpec.from_dict({**cost.to_dict(), "imgsz": 128}).fingerprint != cost.fingerprint


# ----------------------------------------------------------------------------- Ray backend

KILLING_MODULE = '''
import os
import signal
import sys

import torch.nn as nn
from yolo_attention import register_attention

ATTEMPTS = {attempts!r}


@register_attention("killtest", kind="custom", override=True)
class KillTest(nn.Module):
    """Identity at build time; once trained (not in the cost measurement) it kills the Ray worker running it."""

    def __init__(self, channels: int):
        super().__init__()

    def forward(self, x):
        if self.training and "costs" not in sys.argv[-1]:
            with open(ATTEMPTS, "a") as f:
                f.write("attempt\\n")
            os.kill(os.getppid(), signal.SIGKILL)  # the Ray worker process that runs this task
            os.kill(os.getpid(), signal.SIGKILL)
        return x
'''


def test_ray_unreachable_address_fails_fast_and_touches_nothing(tmp_path, capsys):
    import time

    pytest.importorskip("ray")
    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        out = tmp_path / "out"
        t0 = time.time()
        rc, _, err = _run(["--attn", "none,se", "--out", str(out), "--ray", address, *TINY], capsys)
        assert rc == 2 and "cannot reach a Ray cluster" in err and address in err
        assert time.time() - t0 < 15 and not out.exists()


def test_ray_without_the_extra_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray -> ImportError
    rc, _, err = _run(["--attn", "none", "--out", str(tmp_path / "out"), "--ray", *TINY], capsys)
    assert rc == 2 and "yolo-attention[ray]" in err and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_ray_backend_matches_sequential_records_a_killed_task_and_resumes(first_run, tmp_path, capsys):
    """On a local Ray instance with 2 CPUs: 2 variants x 2 seeds give the sequential backend's numbers; a task
    whose worker is killed is retried, then recorded as failed while the others complete; a second call
    resumes without re-running; a data path the workers cannot read fails naming the node."""
    ray = pytest.importorskip("ray")
    import numpy as np

    from yolo_attention.ablate.matches import ValMatches

    _, seq = first_run
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        out = tmp_path / "ray"
        rc, stdout, _ = _run(["--attn", "none,se", "--seeds", "2", "--out", str(out), "--ray", *TINY], capsys)
        assert rc == 0 and "up to 2 at once" in stdout
        for run in ("none", "se@neck"):
            for seed in (0, 1):
                a, b = _result(seq, run, seed), _result(out, run, seed)
                assert b["status"] == "ok" and b["node"]
                assert (a["map50"], a["map50_95"], a["curve"]) == (b["map50"], b["map50_95"], b["curve"])
                ma = ValMatches.load(seq / "runs" / run / f"seed{seed}" / "matches.npz")
                mb = ValMatches.load(out / "runs" / run / f"seed{seed}" / "matches.npz")
                assert np.array_equal(ma.tp, mb.tp) and np.array_equal(ma.conf, mb.conf)
                assert (out / "runs" / run / f"seed{seed}" / "train.log").is_file()  # (empty: conftest quiets YOLO)
                # without --fetch-weights only the weights --explain draws come back: seed 0's
                assert (out / "runs" / run / f"seed{seed}" / "train" / "weights" / "last.pt").is_file() == (seed == 0)
        assert json.loads((out / "costs.json").read_text())["variants"][1]["latency_b1_ms"] > 0
        assert "- **se** next to none:" in (out / "results.md").read_text()

        attempts = tmp_path / "attempts.txt"
        mod = tmp_path / "killing_attention.py"
        mod.write_text(textwrap.dedent(KILLING_MODULE.format(attempts=str(attempts))))
        argv = ["--attn", "none,se,killtest", "--import", str(mod), "--out", str(out), "--ray", "--ray-retries", "1",
                *TINY]
        rc, stdout, err = _run(argv, capsys)
        assert rc == 1 and "killtest" in err
        assert "skipped none/seed0" in stdout and "skipped se@neck/seed0" in stdout and "1 run(s) to train" in stdout
        killed = _result(out, "killtest@neck")
        assert killed["status"] == "failed" and "Ray task failed" in killed["error"]
        assert attempts.read_text().count("attempt") == 2  # Ray's retry, then recorded
        rc, stdout, _ = _run(argv, capsys)
        assert "0 run(s) to train" in stdout and attempts.read_text().count("attempt") == 2

        missing = tmp_path / "nowhere" / "data.yaml"
        rc, _, _ = _run(["--attn", "none", "--data", str(missing), "--out", str(tmp_path / "nodata"), "--ray", *TINY],
                        capsys)
        failed = _result(tmp_path / "nodata", "none")
        assert rc == 1 and failed["status"] == "failed" and "not readable on node" in failed["error"]
        assert str(missing) in failed["error"]
    finally:
        ray.shutdown()


def test_validation_images_from_folders_and_lists_picked_evenly(tmp_path):
    """The images --explain draws: a data YAML's 'val' folders (recursive) and .txt lists, sorted, then N evenly
    spaced from the first to the last; a missing 'val' entry is named."""
    from yolo_attention.ablate.pictures import PicturesUnavailable, pick_images, val_images

    root = tmp_path / "ds"
    for rel in ("val/a/1.png", "val/a/sub/2.jpg", "val/a/notes.txt", "extra/3.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    (root / "more.txt").write_text("./extra/3.png\n")
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {root}\ntrain: val/a\nval: [val/a, more.txt]\nnames: [x]\n")
    files = val_images(data)
    assert files == sorted([root / "val/a/1.png", root / "val/a/sub/2.jpg", root / "extra/3.png"])
    assert pick_images(files, 2) == [files[0], files[2]] and pick_images(files, 3) == files
    assert pick_images(files, 1) == [files[0]] and pick_images(files, 9) == files
    data.write_text(f"path: {root}\ntrain: val/a\nval: val/missing\nnames: [x]\n")
    with pytest.raises(PicturesUnavailable, match="images not found.*val/missing"):
        val_images(data)


def test_damaged_record_is_drawn_again_and_a_failing_pictures_step_is_a_note(tmp_path, monkeypatch, capsys):
    """An unreadable explain.json means 'draw again', not a crash; an unexpected error anywhere in the pictures
    step becomes a note in results.md (and a warning), never a failed sweep."""
    from yolo_attention.ablate import cli, pictures
    from yolo_attention.ablate.spec import parse_variants

    se = parse_variants("se")[0]
    folder = tmp_path / "explain" / se.dirname
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"")
    for damaged in ("{not json", '{"identity": {}}', '{"identity": {}, "pictures": [3]}'):
        (folder / pictures.RECORD).write_text(damaged)
        assert pictures._kept(folder, {}, se, "se") is None

    def broken(*args, **kwargs):
        raise RuntimeError("drawing broke")

    monkeypatch.setattr(pictures, "draw_pictures", broken)
    (tmp_path / "results.md").write_text("# Ablation\n")
    pics = cli._pictures(tmp_path, None, {}, None, "data.yaml", 4)
    assert pics.variants == [] and pics.notes == ["no pictures: RuntimeError: drawing broke"]
    assert "- no pictures: RuntimeError: drawing broke" in (tmp_path / "results.md").read_text()
    assert "warning: no pictures" in capsys.readouterr().err
    assert cli._pictures(tmp_path, None, {}, None, "data.yaml", 0) is None  # --explain 0: not even called


def test_presets_fill_what_the_user_left_out(tmp_path):
    """No --data: a base stage on the generated data, then short fine-tunes; --data: ultralytics' own defaults.
    An option given on the command line always wins; a scratch sweep never gets the fine-tuning arguments."""
    from yolo_attention.ablate.cli import DEFAULTS, _fix_greedy_options, build_parser, prepare

    def sweep(*argv):
        a = build_parser().parse_args(["--attn", "none,se", "--out", str(tmp_path / "o"), *argv])
        _fix_greedy_options(a)
        return prepare(a)[0]

    g = sweep()
    assert (g.base.epochs, g.train.epochs, g.train.imgsz, g.train.batch) == (4, 2, 128, 8)
    assert g.train.train_args["fraction"] == 200 and "fraction" not in g.base.train_args and g.gated
    assert g.data.synthetic["min_size"] == 0.15 and g.data.synthetic["n_train"] == DEFAULTS.n_train
    assert g.threads == os.cpu_count()  # one local run at a time on the CPU: every core (ultralytics leaves one idle)
    scratch = sweep("--base-epochs", "0", "--imgsz", "64", "lr0=0.01")
    assert scratch.base is None and not scratch.gated and "fraction" not in scratch.train.train_args
    assert scratch.train.train_args["lr0"] == 0.01 and scratch.train.imgsz == 64
    assert sweep("--cpus-per-run", "1").threads == 1
    data = tmp_path / "d.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: images\nval: images\nnames: [a, b]\n")
    u = sweep("--data", str(data))
    assert (u.base, u.train.epochs, u.train.imgsz, u.train.batch, u.train.train_args) == (None, 25, 640, 16, {})
