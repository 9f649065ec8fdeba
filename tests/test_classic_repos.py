"""The real classic repositories: ultralytics/yolov5, WongKinYiu/yolov7, WongKinYiu/yolov9.

Given checkouts, each seed module is built at the neck and the backbone from the repositories'
own configs (yolov5s; yolov7-tiny and yolov7; gelan-c and yolov9-c) by the repositories' own
``models.yolo``, trained for one tiny epoch by their own ``train.py`` / ``train_dual.py`` through
``python -m yolo_attention.classic``, and the checkpoint reloaded in a fresh process without the
runner (``torch.load`` + a forward pass, then the repository's ``detect.py`` / ``detect_dual.py``).

Skipped unless ``YOLO_ATTENTION_CLASSIC_REPOS`` names a directory holding the checkouts as
``ultralytics+yolov5/``, ``WongKinYiu+yolov7/`` and ``WongKinYiu+yolov9/`` (CI has no GitHub).
Every (config, module) pair trains once, the place alternating so that each module trains at
both places; ``YOLO_ATTENTION_CLASSIC_FULL=1`` trains every (config, module, place).
docs/classic.md records the commits tested and the results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ENV = "YOLO_ATTENTION_CLASSIC_REPOS"
SEED_MODULES = ("se", "a2", "bam", "bra", "biformer")
PLACES = ("neck", "backbone")
REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Recipe:
    """How a repository trains and reloads one of its configs."""

    repo: str  # <owner>+<name> below $YOLO_ATTENTION_CLASSIC_REPOS
    cfg: str  # the repository's own model YAML
    train: str  # training script
    detect: str  # inference script that reloads the checkpoint
    train_args: tuple[str, ...] = ()
    detect_args: tuple[str, ...] = ()
    trust: bool = False  # the repository's torch.load needs full unpickling (torch >= 2.6)
    size_flag: tuple[str, ...] = ("--img", "64")
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.cfg).stem


V5_TRAIN = ("--noplots",)
RECIPES = (
    Recipe("ultralytics+yolov5", "models/yolov5s.yaml", "train.py", "detect.py", V5_TRAIN),
    Recipe("WongKinYiu+yolov7", "cfg/training/yolov7-tiny.yaml", "train.py", "detect.py",
           ("--hyp", "data/hyp.scratch.tiny.yaml"), ("--no-trace",), trust=True, size_flag=("--img-size", "64", "64")),
    Recipe("WongKinYiu+yolov7", "cfg/training/yolov7.yaml", "train.py", "detect.py",
           ("--hyp", "data/hyp.scratch.p5.yaml"), ("--no-trace",), trust=True, size_flag=("--img-size", "64", "64")),
    Recipe("WongKinYiu+yolov9", "models/detect/gelan-c.yaml", "train.py", "detect.py",
           ("--hyp", "data/hyps/hyp.scratch-high.yaml", "--noplots"), trust=True, size_flag=("--imgsz", "64")),
    Recipe("WongKinYiu+yolov9", "models/detect/yolov9-c.yaml", "train_dual.py", "detect_dual.py",
           ("--hyp", "data/hyps/hyp.scratch-high.yaml", "--noplots"), trust=True, size_flag=("--imgsz", "64")),
)  # fmt: skip


def _repos() -> Path:
    base = os.environ.get(ENV)
    if not base:
        pytest.skip(f"classic repositories not available: set {ENV} to a directory holding ultralytics+yolov5/, ...")
    return Path(base)


def _checkout(recipe: Recipe) -> Path:
    root = _repos() / recipe.repo
    if not (root / recipe.cfg).is_file():
        pytest.skip(f"{recipe.repo} checkout not found at {root}")
    return root


def _env(tmp: Path, trust: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env["PYTHONWARNINGS"] = "ignore"
    # YOLOv5/YOLOv9 download Arial.ttf into their config dir when it is missing; offline, give them any TTF
    fonts = tmp / "fonts"
    if not (fonts / "Arial.ttf").exists():
        fonts.mkdir(parents=True, exist_ok=True)
        import matplotlib

        shutil.copy(Path(matplotlib.__file__).parent / "mpl-data/fonts/ttf/DejaVuSans.ttf", fonts / "Arial.ttf")
    env["YOLOV5_CONFIG_DIR"] = str(fonts)
    if trust:
        env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # the repositories' own torch.load of their checkpoints
    return env


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 1800) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    return r


@pytest.fixture
def data(tmp_path):
    """A fresh copy per test: the repositories write label caches of their own formats beside the labels."""
    from yolo_attention.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path / "data", n_train=8, n_val=4, imgsz=64, seed=0, verbose=False)


def _yaml(recipe: Recipe, root: Path, attn: str, at: str, out_dir: Path) -> Path:
    from yolo_attention import make_yaml

    return make_yaml(root / recipe.cfg, attn, at, out=out_dir / f"{recipe.name}-{attn}-{at}.yaml", format="classic")


BUILD = """
import json, sys, torch
sys.path.insert(0, ".")
import models.yolo as yolo
from yolo_attention import get_attention_info, register_classic
register_classic(yolo)
out = {}
for attn, path in json.loads(sys.argv[1]).items():
    cls = get_attention_info(attn).cls
    model = yolo.Model(path, ch=3, nc=4).eval()
    layers = [m for m in model.model if isinstance(m, cls)]
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 64, 96))  # rectangular, as validation batches are
    y = y[0] if isinstance(y, (list, tuple)) else y
    y = y[0] if isinstance(y, (list, tuple)) else y
    out[attn] = {"n": len(layers), "channels": [m.channels for m in layers], "finite": bool(torch.isfinite(y).all())}
print(json.dumps(out))
"""


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
@pytest.mark.parametrize("at", PLACES)
def test_every_seed_module_builds_from_the_repository_config(tmp_path, recipe, at):
    from yolo_attention.integrations.yaml_gen import insertion_points, load_classic_yaml

    root = _checkout(recipe)
    paths = {attn: str(_yaml(recipe, root, attn, at, tmp_path)) for attn in SEED_MODULES}
    r = _run([sys.executable, "-c", BUILD, json.dumps(paths)], root, _env(tmp_path))
    built = json.loads(r.stdout.strip().splitlines()[-1])
    expected = len(insertion_points(load_classic_yaml(root / recipe.cfg)[0], at))
    for attn, got in built.items():
        assert got["n"] == expected, f"{attn} at {at}: {got['n']} layers, expected {expected}"
        assert min(got["channels"]) > 3, f"{attn} at {at} attends the input image: {got['channels']}"
        assert got["finite"], f"{attn} at {at}: non-finite output"


def _training_cases():
    full = os.environ.get("YOLO_ATTENTION_CLASSIC_FULL", "") not in ("", "0")
    for i, recipe in enumerate(RECIPES):
        for j, attn in enumerate(SEED_MODULES):
            places = PLACES if full else (PLACES[(i + j) % 2],)
            for at in places:
                yield pytest.param(recipe, attn, at, id=f"{recipe.name}-{attn}-{at}")


RELOAD = """
import json, sys, torch
sys.path.insert(0, ".")
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=False)  # what the repositories' loaders do
model = (ckpt.get("ema") or ckpt["model"]).float().eval()
kinds = sorted({type(m).__name__ for m in model.modules()})
with torch.no_grad():
    y = model(torch.zeros(1, 3, 64, 64))
y = y[0] if isinstance(y, (list, tuple)) else y
y = y[0] if isinstance(y, (list, tuple)) else y
print(json.dumps({"kinds": kinds, "yolo_attention_imported_by": "unpickling" if "yolo_attention" in sys.modules else None,
                  "finite": bool(torch.isfinite(y).all())}))
"""


@pytest.mark.parametrize("recipe,attn,at", list(_training_cases()))
def test_trains_one_epoch_and_reloads_without_the_runner(tmp_path, data, recipe, attn, at):
    from yolo_attention import get_attention_info

    root = _checkout(recipe)
    cfg = _yaml(recipe, root, attn, at, tmp_path)
    runner = [sys.executable, "-m", "yolo_attention.classic", *(["--trust-checkpoints"] if recipe.trust else [])]
    train = [
        *runner, recipe.train, "--cfg", str(cfg), "--weights", "", "--data", str(data), *recipe.size_flag,
        "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--project", str(tmp_path),
        "--name", "run", "--exist-ok", *recipe.train_args,
    ]  # fmt: skip
    _run(train, root, _env(tmp_path))
    best = tmp_path / "run" / "weights" / "best.pt"
    assert best.is_file(), f"no checkpoint written: {sorted(p.name for p in (tmp_path / 'run').rglob('*'))}"

    # a fresh process, plain python (no runner, no import of yolo_attention): unpickling imports it
    r = _run([sys.executable, "-c", RELOAD, str(best)], root, _env(tmp_path, trust=recipe.trust))
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert get_attention_info(attn).cls.__name__ in loaded["kinds"], loaded["kinds"]
    assert loaded["yolo_attention_imported_by"] == "unpickling" and loaded["finite"]

    image = next((Path(data).parent / "images" / "val").iterdir())
    size = ["--img-size", "64"] if recipe.size_flag[0] == "--img-size" else ["--imgsz", "64"]
    detect = [sys.executable, recipe.detect, "--weights", str(best), "--source", str(image), *size, "--device", "cpu",
              "--nosave", "--project", str(tmp_path), "--name", "detect", "--exist-ok", *recipe.detect_args]  # fmt: skip
    _run(detect, root, _env(tmp_path, trust=recipe.trust))
