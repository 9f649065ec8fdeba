"""`yolo-attention bench` on a tiny configuration: files, columns, errors."""

import json
import subprocess
import sys

import pytest
import torch

from yolo_attention.bench import COLUMNS, _CPUPeakMemory, main, parse_shapes

TINY = ["--modules", "se", "--shapes", "16x8x8", "--repeats", "1", "--warmup", "0"]


def test_tiny_run_writes_json_and_markdown(tmp_path, capsys):
    assert main(TINY + ["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fwd ms" in out and "se" in out

    data = json.loads((tmp_path / "bench_cpu.json").read_text())
    assert set(data) >= {"machine", "config", "rows", "columns", "notes"}
    m = data["machine"]
    for key in ("cpu", "logical_cpus", "torch_threads", "torch", "python", "date_utc"):
        assert m[key], key
    assert data["config"]["modules"] == ["se"] and data["config"]["shapes"] == ["16x8x8"]
    assert data["config"]["repeats"] == 1 and data["config"]["warmup"] == 0

    (row,) = data["rows"]
    for key, _, _ in COLUMNS:
        assert key in row, key
    assert row["module"] == "se" and row["shape"] == "16x8x8" and row["batch"] == 1
    assert "error" not in row
    assert row["params"] == 16 * 8 + 8 + 8 * 16 + 16  # SE(16): hidden width 8, two 1x1 convs with bias
    assert row["flops"] > row["flops_matmul"] > 0
    assert row["flops_train"] > row["flops"]
    assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0
    assert row["peak_fwd_mb"] > 0 and row["peak_fwd_bwd_mb"] > row["peak_fwd_mb"]
    assert 0 < row["other_pct"] < 100

    md = (tmp_path / "bench_cpu.md").read_text()
    for _, header, _ in COLUMNS:
        assert header in md
    assert m["cpu"] in md and "| se | 16x8x8 |" in md


def test_flags_batch_name_and_no_backward(tmp_path):
    args = TINY + ["--out", str(tmp_path), "--batch", "2", "--name", "mine", "--no-backward", "--no-thop"]
    assert main(args) == 0
    (row,) = json.loads((tmp_path / "mine.json").read_text())["rows"]
    assert row["batch"] == 2
    assert row["fwd_bwd_ms"] is None and row["flops_train"] is None and row["flops_thop"] is None
    assert (tmp_path / "mine.md").exists()


def test_unknown_module_fails_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--modules", "se,nope", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--modules" in err and "'nope'" in err and "registered" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad", ["64x80", "64x80x80x2", "axbxc", "0x8x8", "64*80*80", ","])
def test_malformed_shapes_fail_clearly(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as e:
        main(["--modules", "se", "--shapes", bad, "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--shapes" in err and "CxHxW" in err


def test_parse_shapes():
    assert parse_shapes("64x80x80, 128X40X40") == [(64, 80, 80), (128, 40, 40)]


def test_unusable_configuration_is_an_error_row(tmp_path):
    # BRA needs channels divisible by its 8 heads: the row records why, the run goes on
    rc = main(["--modules", "bra,se", "--shapes", "12x8x8", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)])
    assert rc == 1
    rows = json.loads((tmp_path / "bench_cpu.json").read_text())["rows"]
    assert "divisible" in rows[0]["error"] and "error" not in rows[1]


def test_cpu_peak_memory_tracks_live_storages():
    tracker = _CPUPeakMemory()
    with tracker:
        a = torch.ones(1024)  # 4 KiB
        b = a * 2  # 4 KiB more
        del a
        c = b.view(32, 32)  # a view: no new memory
        d = c + 1  # 4 KiB while a is gone
    assert tracker.peak == 2 * 4096
    assert tracker.current == 2 * 4096  # b and d still alive
    del b, c, d
    assert tracker.current == 0


@pytest.mark.slow  # spawns a process
def test_module_entry_point(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "yolo_attention.bench", *TINY, "--no-backward", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "bench_cpu.json").exists()


def test_quick_uses_the_n_width_shapes(tmp_path):
    assert main(["--quick", "--modules", "se", "--no-backward", "--no-thop", "--out", str(tmp_path)]) == 0
    cfg = json.loads((tmp_path / "bench_cpu_quick.json").read_text())["config"]
    assert cfg["shapes"] == ["64x80x80", "128x40x40", "256x20x20"]
    assert (cfg["warmup"], cfg["repeats"]) == (1, 3)


def test_error_rows_in_the_printed_table():
    from yolo_attention.bench import format_table

    text = format_table([{"module": "bra", "shape": "12x8x8", "error": "ValueError: boom"}])
    assert "error: ValueError: boom" in text
