"""Run one training recipe for ``yolo-attention ablate`` and record its learning curve and CPU time.

A recipe (:class:`Recipe`) is: a generated dataset, a model, an image size and batch, one
*pretraining* stage of the baseline, and optionally a *fine-tuning* stage run once per
variant from the pretrained checkpoint, with the attention inserted as the identity
(``add_attention(yolo, name, at=..., gated=True)``), the baseline fine-tuned the same way.

Time is measured as CPU seconds (user + system of this process and its children,
``resource.getrusage``), not wall time: the machine these recipes were found on is shared
with other jobs, so wall time says little, while the CPU seconds a run needs are close to
what it needs on an idle machine. Every epoch is validated to draw the learning curve; the
validation CPU is recorded apart from the training CPU, so a recipe's cost without
per-epoch validation (``val=False``, as ablate trains) is the training CPU plus one final
validation per stage.

    python benchmarks/recipe/harness.py NAME   # a recipe from recipes.py

writes ``benchmarks/results/recipe/NAME.json``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "recipe"
WORK = Path(os.environ.get("RECIPE_WORK", "/tmp/recipe-work"))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its (waited-for) children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


@dataclass(frozen=True)
class Stage:
    """One call of ultralytics' train: epochs and the train arguments besides data/model/imgsz/batch."""

    epochs: int
    args: dict = field(default_factory=dict)
    new_lr_mult: float = 1.0  # learning-rate multiplier of the inserted (gated) attention's parameters


@dataclass(frozen=True)
class Recipe:
    name: str
    note: str
    data: dict  # generate_synthetic options (n_train, n_val, imgsz, classes, ...)
    pretrain: Stage
    finetune: Stage | None = None
    variants: tuple[str, ...] = ("none",)
    model: str = "yolov8n.yaml"
    imgsz: int = 128
    batch: int = 16
    at: str = "neck"
    threads: int = 1
    seed: int = 0
    init: str | None = None  # fine-tune from this recipe's pretrained checkpoint instead of pretraining
    measure_cost: bool = False  # time ablate's cost measurement (FLOPs, latency) of every fine-tuned variant


def _set_threads(n: int):
    import torch

    def cb(_obj) -> None:  # ultralytics' select_device resets torch to cpu_count - 1 threads
        torch.set_num_threads(n)

    return cb


def boosted_trainer(mult: float):
    """A DetectionTrainer whose optimizer gives the inserted attention (GatedAttention) ``mult`` x the lr.

    New, randomly initialised layers next to pretrained ones commonly train at a higher rate; the gate
    gamma starts at 0 and moves by about lr per Adam step, so at the fine-tuning lr the attention would
    barely be used in a short fine-tune (measured: |gamma| ~ 0.001 after 100 steps at lr 2e-4).
    """
    from ultralytics.models.yolo.detect import DetectionTrainer

    from yolo_attention.modules.gated import GatedAttention

    class BoostedTrainer(DetectionTrainer):
        def build_optimizer(self, model, *args, **kwargs):
            opt = super().build_optimizer(model, *args, **kwargs)
            new = {id(p) for m in model.modules() if isinstance(m, GatedAttention) for p in m.parameters()}
            groups = []
            for g in opt.param_groups:
                rest = {k: v for k, v in g.items() if k != "params"}
                groups.append({**rest, "params": [p for p in g["params"] if id(p) not in new]})
                boosted = [p for p in g["params"] if id(p) in new]
                if boosted:
                    groups.append({**rest, "params": boosted, "lr": g["lr"] * mult})
            return type(opt)(groups)

    return BoostedTrainer


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"a2:zero_init=False"`` -> ("a2", {"zero_init": False})."""
    import yaml

    name, *pairs = spec.split(":")
    return name, {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


def gate_stats(model) -> dict:
    """Mean and max |gamma| of every inserted gate: how much the attention is used."""
    from yolo_attention.modules.gated import GatedAttention

    gam = [m.gamma.detach().abs().float() for m in model.modules() if isinstance(m, GatedAttention)]
    if not gam:
        return {}
    return {"gamma_abs_mean": [float(g.mean()) for g in gam], "gamma_abs_max": [float(g.max()) for g in gam]}


def train_stage(model, recipe: Recipe, stage: Stage, data_yaml: str, out: Path, name: str) -> dict:
    """Train ``model`` (a YOLO object) for one stage; return its curve and CPU split."""
    curve: list[dict] = []
    marks = {"start": cpu_seconds(), "wall": time.time()}
    marks["prev"] = marks["start"]

    def on_train_start(trainer) -> None:
        marks["setup_cpu"] = cpu_seconds() - marks["start"]
        marks["prev"] = cpu_seconds()

    def on_train_epoch_end(trainer) -> None:
        marks["train_end"] = cpu_seconds()

    def on_fit_epoch_end(trainer) -> None:
        now = cpu_seconds()
        m = trainer.metrics or {}
        final = trainer.epoch + 1 > trainer.epochs  # final_eval of best.pt calls this once more
        row = {
            "epoch": trainer.epoch + 1,
            "final_eval": final,
            "map50": float(m.get("metrics/mAP50(B)", float("nan"))),
            "map50_95": float(m.get("metrics/mAP50-95(B)", float("nan"))),
            "threads": __import__("torch").get_num_threads(),
        }
        if not final:
            row["train_cpu"] = marks["train_end"] - marks["prev"]
            row["val_cpu"] = now - marks["train_end"]
            row["lr"] = float(trainer.lr.get("lr/pg0", float("nan")))
            row["loss"] = {k: float(v) for k, v in (trainer.tloss or {}).items()}
        else:
            row["val_cpu"] = now - marks["prev"]
        curve.append(row)
        marks["prev"] = now

    set_threads = _set_threads(recipe.threads)
    for ev in ("on_pretrain_routine_start", "on_train_start", "on_val_start"):
        model.add_callback(ev, set_threads)
    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_train_epoch_end", on_train_epoch_end)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
    args = dict(
        data=data_yaml, epochs=stage.epochs, imgsz=recipe.imgsz, batch=recipe.batch, device="cpu", seed=recipe.seed,
        deterministic=True, workers=0, project=str(out), name=name, exist_ok=True, plots=False, verbose=False, val=True,
    )
    args.update(stage.args)
    if stage.new_lr_mult != 1.0:
        args["trainer"] = boosted_trainer(stage.new_lr_mult)
    model.train(**args)
    epochs = [r for r in curve if not r["final_eval"]]
    finals = [r for r in curve if r["final_eval"]]
    last = epochs[-1]
    train_cpu = sum(r["train_cpu"] for r in epochs)
    one_val = finals[-1]["val_cpu"] if finals else last["val_cpu"]
    return {
        "name": name,
        "curve": curve,
        "setup_cpu": marks.get("setup_cpu", float("nan")),
        "train_cpu": train_cpu,
        "val_cpu_per_pass": one_val,
        # what the stage costs when it validates once at the end (val=False): setup + train + one val
        "cpu_val_once": marks.get("setup_cpu", 0.0) + train_cpu + one_val,
        "cpu_measured": cpu_seconds() - marks["start"],
        "wall_s": time.time() - marks["wall"],
        "map50": last["map50"],
        "map50_95": last["map50_95"],
        "weights": str(out / name / "weights" / "last.pt"),
        **gate_stats(model.model),
    }


def run(recipe: Recipe) -> dict:
    import torch

    torch.set_num_threads(recipe.threads)
    t0, c0 = time.time(), cpu_seconds()
    import yolo_attention  # noqa: F401  (registers the modules with ultralytics)
    from ultralytics import YOLO

    from yolo_attention.data.synthetic import SyntheticConfig, generate_synthetic
    from yolo_attention.integrations.insert import add_attention

    c_import = cpu_seconds() - c0
    # one directory per full option set: a dataset is never regenerated under a run that reads it
    options = json.dumps(SyntheticConfig(seed=0, **recipe.data).to_dict(), sort_keys=True)
    data_dir = WORK / "data" / hashlib.sha256(options.encode()).hexdigest()[:12]
    reused = (data_dir / "synthetic_manifest.json").exists()  # (complete or being written by a sibling)
    c1 = cpu_seconds()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(data_dir.parent / (data_dir.name + ".lock"), "w") as lock:  # recipes run side by side share data
        fcntl.flock(lock, fcntl.LOCK_EX)
        data_yaml = str(generate_synthetic(data_dir, seed=0, **recipe.data))
    c_data = cpu_seconds() - c1
    manifest = json.loads((data_dir / "synthetic_manifest.json").read_text())
    out = WORK / "runs" / recipe.name
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    if recipe.init:  # the pretraining stage of another recipe, reused
        stages = [json.loads((RESULTS / f"{recipe.init}.json").read_text())["stages"][0]]
    else:
        stages = [train_stage(YOLO(recipe.model), recipe, recipe.pretrain, data_yaml, out, "pretrain")]
    if recipe.finetune is not None:
        for v in recipe.variants:
            yolo = YOLO(stages[0]["weights"])
            name, kwargs = parse_variant(v)
            if name != "none":
                add_attention(yolo, name, at=recipe.at, gated=True, **kwargs)
            stages.append(train_stage(yolo, recipe, recipe.finetune, data_yaml, out, f"ft-{name}"))
            if recipe.measure_cost:
                from yolo_attention.ablate import _measure_cost

                c = cpu_seconds()
                cost = _measure_cost(yolo.model, recipe.imgsz, recipe.batch, torch.device("cpu"))
                stages[-1]["cost"] = {k: v for k, v in cost.items() if isinstance(v, (int, float))}
                stages[-1]["cost_cpu"] = cpu_seconds() - c
    return {
        "recipe": asdict(recipe),
        "import_cpu": c_import,
        "data_cpu": c_data,
        "data_reused": reused,  # data_cpu is the generation's cost only when this is False
        "data_stats": manifest.get("stats"),
        "stages": stages,
        "total_cpu_measured": cpu_seconds() - c0,
        "process_cpu": cpu_seconds(),  # since the process started: imports included
        "wall_s": time.time() - t0,
        "loadavg": os.getloadavg(),
        "torch": torch.__version__,
    }


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    from recipes import RECIPES

    names = argv or sorted(RECIPES)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        res = run(RECIPES[name])
        (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        pre = res["stages"][0]
        print(f"{name}: pretrain mAP50-95 {pre['map50_95']:.4f} (mAP50 {pre['map50']:.4f}), "
              f"train CPU {pre['train_cpu']:.0f} s, total CPU {res['total_cpu_measured']:.0f} s", flush=True)
        for st in res["stages"][1:]:
            print(f"  {st['name']}: mAP50-95 {st['map50_95']:.4f}, CPU (val once) {st['cpu_val_once']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
