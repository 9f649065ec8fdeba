"""What a bare `pip install yolo-attention` gives: the flat API, and commands that name the extra they need.

The optional packages are hidden in a fresh interpreter (``sys.modules[name] = None`` makes
``import name`` fail as if it were not installed), so these tests see what a user without the
extra sees, on a machine that has every extra.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("ultralytics", "matplotlib", "yolov5", "onnx", "onnxruntime", "cloudpickle", "ray", "openvino")


def _bare(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` with every optional package hidden."""
    prelude = f"import sys\nfor _m in {OPTIONAL!r}:\n    sys.modules[_m] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_flat_api_is_lazy_and_complete():
    code = """
    import sys, json, yolo_attention as ya
    heavy = [m for m in ("ultralytics", "onnx", "matplotlib") if m in sys.modules]
    names = ["add_attention", "make_yaml", "model_cost", "register_classic", "run_script", "generate_synthetic",
             "model_cfg", "create_attention", "list_attention", "register_attention", "AttentionTap",
             "BuilderInternalsChanged", "MissingExtra", "count_flops"]
    missing = [n for n in names if not callable(getattr(ya, n))]
    print(json.dumps({"heavy_at_import": heavy, "missing": missing, "all": sorted(set(names) - set(ya.__all__))}))
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"heavy_at_import": [], "missing": [], "all": []}
    # the deep paths keep working
    from yolo_attention import add_attention, make_yaml, register_classic
    from yolo_attention.integrations.classic import register_classic as deep_register
    from yolo_attention.integrations.insert import add_attention as deep_add
    from yolo_attention.integrations.yaml_gen import make_attention_yaml, make_yaml as deep_make

    assert (add_attention, make_yaml, register_classic) == (deep_add, deep_make, deep_register)
    assert callable(make_attention_yaml)


@pytest.mark.parametrize(
    "argv,extra",
    [
        (["cost", "yolov8n"], "ultralytics"),
        (["ablate", "--epochs", "1"], "ultralytics"),
        (["yolo", "train"], "ultralytics"),
        (["yaml", "yolov8n", "--attn", "se"], "ultralytics"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else v,
)
def test_commands_name_the_extra_they_need(tmp_path, argv, extra):
    r = _bare(f"from yolo_attention.cli import main\nsys.exit(main({argv!r}))", tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"pip install 'yolo-attention[{extra}]'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "No module named" not in r.stderr


def test_core_commands_run_without_any_extra(tmp_path):
    """`list`, `data synthetic` and classic-format `yaml` need only the core dependencies."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "nc: 2\ndepth_multiple: 1.0\nwidth_multiple: 1.0\nanchors: 1\nbackbone:\n  [[-1, 1, Conv, [16, 3, 2]],\n"
        "   [-1, 1, Conv, [32, 3, 2]]]\nhead:\n  [[-1, 1, Conv, [32, 1, 1]],\n   [[2], 1, Detect, [nc, anchors]]]\n"
    )
    code = f"""
    from yolo_attention.cli import main
    assert main(["list"]) == 0
    assert main(["data", "synthetic", "--out", "data", "--train", "2", "--val", "1", "--imgsz", "64", "-q"]) == 0
    assert main(["yaml", {str(cfg)!r}, "--format", "classic", "--attn", "se", "--at", "1", "-o", "out.yaml"]) == 0
    """
    r = _bare(code, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "data" / "data.yaml").is_file()
    text = (tmp_path / "out.yaml").read_text()
    assert "[-1, 1, SE, []]" in text and "--weights ''" in text


def test_core_dependencies_are_declared():
    """Every third-party package the core commands import is a declared dependency."""
    import tomllib

    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in deps}
    assert {"torch", "numpy", "pillow", "pyyaml"} <= names
