"""``yolo-attention ablate``: the command line, from arguments to a sweep, its runs and its reports."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .common import UsageError, fmt_time, read_json, write_json
from .spec import DataSpec, Stage, parse_variants
from .sweep import Store, Sweep, execute, pending

__all__ = ["main", "build_parser", "DEFAULTS", "Defaults", "Preset"]

# The embedded default, found with benchmarks/recipe/ (docs/ablate-recipe.md has the learning curves of
# what was tried). On the generated data ultralytics' own defaults spend a short run in warm-up and mosaic
# (which shrinks objects at 128 px) and step the optimiser only every nbs/batch batches. AdamW at 1e-3 with a
# step per batch (nbs = batch) and fresh images instead of jitter learn fastest per CPU second.
_GENERATED_SCRATCH = dict(optimizer="AdamW", lr0=0.001, nbs=8, warmup_epochs=0.4, warmup_bias_lr=0.0, mosaic=0.0,
                          hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, scale=0.0, translate=0.0)
# Fine-tuning from the base stage: half the learning rate, no warm-up, 200 images an epoch (ultralytics'
# ``fraction`` as an image count): measured, a variant's two epochs take about 40 s on two cores, a base epoch 67 s.
_GENERATED_FINETUNE = {**_GENERATED_SCRATCH, "lr0": 5e-4, "warmup_epochs": 0.0, "fraction": 200}
# The default dataset: 4 of the generator's classes, objects 15-45 % of the side, light clutter and at most 5
# objects an image: yolov8n trained for four epochs on 1800 of them reached mAP50-95 0.3135 (docs/ablate-sample.md).
_DEFAULT_DATA = dict(classes="circle,square,triangle,star", clutter=0.25, max_objects=5, min_size=0.15)


@dataclass(frozen=True)
class Preset:
    """Defaults of the training options a user leaves out; one for the generated data, one for a user's data."""

    epochs: int  # the variants' stage
    base_epochs: int  # 0: every variant trains from scratch
    imgsz: int
    batch: int
    scratch_args: dict = field(default_factory=dict)  # ultralytics train args of a stage from random weights
    finetune_args: dict = field(default_factory=dict)  # ... of a stage from trained weights (base stage or .pt)

    def stage_args(self, from_trained: bool) -> dict:
        return dict(self.finetune_args if from_trained else self.scratch_args)


@dataclass(frozen=True)
class Defaults:
    """The embedded default sweep (what the command does with no arguments)."""

    model: str = "yolov8n"
    attn: str = "none,se,a2,bam,biformer"
    at: tuple[str, ...] = ("neck",)
    val_every: int = 1  # validation (learning curves) every N epochs
    seeds: int = 1
    device: str = "cpu"
    n_train: int = 1800
    n_val: int = 160
    out: str = "runs/ablate"
    data: dict = field(default_factory=lambda: dict(_DEFAULT_DATA))
    # a base stage trained once, then every variant fine-tuned from it with the attention as the identity
    generated: Preset = Preset(2, 4, 128, 8, _GENERATED_SCRATCH, _GENERATED_FINETUNE)
    user_data: Preset = Preset(25, 0, 640, 16)  # ultralytics' own training defaults on a user's data


DEFAULTS = Defaults()

# keys that have their own option (or must stay fixed for a fair, resumable comparison)
RESERVED_TRAIN_KEYS = {
    "model": "--model", "data": "--data", "epochs": "--epochs", "imgsz": "--imgsz", "batch": "--batch",
    "device": "--device", "seed": "--seeds", "project": "--out", "name": "--out", "exist_ok": None, "resume": None,
    "deterministic": None, "mode": None, "task": None, "workers": None,
}


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog="yolo-attention ablate",
        description=(
            "Train attention variants of one detector side by side (same data, seeds and hyper-parameters) and "
            "report accuracy with a 95% interval and a verdict per variant, and costs measured side by side as "
            "ratios to the baseline: a table (printed, CSV, Markdown), JSON and a plot. With no arguments: yolov8n "
            "with none,se,a2,bam,biformer at the neck on a generated dataset."),
        epilog=("Trailing key=value tokens go to ultralytics' train (e.g. lr0=0.02 mosaic=0). Re-running with the "
                "same --out skips finished runs. Example: yolo-attention ablate --attn none,se,bra:num_heads=4 "
                "--at neck --at backbone --seeds 3 --epochs 20 --data my.yaml --out runs/ablate-se"),
    )
    p.add_argument("--model", default=d.model,
                   help="model family and scale (yolov8n, yolo11s, yolov5nu, ...), a model YAML, or a .pt checkpoint "
                        "(attention inserted gated, starting as the identity) [%(default)s]")
    p.add_argument("--attn", default=d.attn,
                   help="comma-separated variants: 'none' (the unmodified model) and registered modules, with "
                        "optional keywords name:key=value[:key=value] [%(default)s]")
    p.add_argument("--at", action="extend", nargs="+", default=None, metavar="PLACE",
                   help="where to insert: backbone, neck, sppf or layer indices (4,6); several places (--at neck "
                        f"backbone, or --at neck --at backbone) run every module at each, as separate rows "
                        f"[{' '.join(d.at)}]")
    p.add_argument("--data", default=None,
                   help="ultralytics data YAML [default: a generated synthetic dataset under OUT/data]")
    g, u = d.generated, d.user_data
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs of every variant [{g.epochs} on the generated data, {u.epochs} with --data]")
    p.add_argument("--base-epochs", type=int, default=None,
                   help="train the unmodified model this many epochs once per seed, then fine-tune every variant "
                        "(the baseline too) from it for --epochs, the attention inserted as the identity; 0: every "
                        f"variant trains from scratch [{g.base_epochs} on the generated data, {u.base_epochs} with "
                        "--data]")
    p.add_argument("--val-every", type=int, default=d.val_every, metavar="N",
                   help="validate every N epochs for the learning curves (the last epoch always) [%(default)s]")
    p.add_argument("--imgsz", type=int, default=None, help=f"[{g.imgsz} on the generated data, {u.imgsz} with --data]")
    p.add_argument("--batch", type=int, default=None,
                   help=f"training batch (also timed for latency) [{g.batch} on the generated data, {u.batch} "
                        "with --data]")
    p.add_argument("--seeds", type=int, default=d.seeds, help="train every variant with seeds 0..N-1 [%(default)s]")
    p.add_argument("--device", default=d.device, help="cpu, 0, cuda:0, ... [%(default)s]")
    p.add_argument("--out", default=d.out, help="output directory (re-use it to resume) [%(default)s]")
    p.add_argument("--n-train", type=int, default=d.n_train, help="generated dataset: train images [%(default)s]")
    p.add_argument("--n-val", type=int, default=d.n_val, help="generated dataset: val images [%(default)s]")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module (dotted name or .py file) that registers more attention modules; repeatable")
    p.add_argument("--retry-failed", action="store_true", help="re-run runs recorded as failed (default: keep them)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the runs as Ray tasks: on a new local Ray instance, or on a cluster (auto, "
                        "ray://host:10001, host:6379); needs the 'ray' extra. See docs/ablate-ray.md")
    p.add_argument("--cpus-per-run", type=int, default=None, metavar="N",
                   help="CPU threads of each run [every core for local runs on the CPU; with --ray: the CPUs each "
                        "CPU task asks for, 1]")
    p.add_argument("--ray-retries", type=int, default=2, metavar="N",
                   help="with --ray: times Ray re-runs a task whose worker process or node died, before it is "
                        "recorded as failed [%(default)s]")
    p.add_argument("--fetch-weights", action="store_true",
                   help="with --ray: bring every run's weights back to --out (the base stage's always come back)")
    p.add_argument("--explain", type=int, default=None, metavar="N",
                   help="after training, draw N validation images with each variant's detections, class activation "
                        "map and attention next to the baseline's (OUT/explain/, linked from results.md and embedded "
                        "in OUT/report.html); 0: no pictures. With --ray it brings back the first seed's weights "
                        "[4 on the generated dataset, 0 with --data]")
    p.add_argument("train_args", nargs="*", metavar="key=value", help="passed to ultralytics' train")
    return p


def _fix_greedy_options(a: argparse.Namespace) -> None:
    """``--at neck lr0=0.01`` and ``--ray lr0=0.01``: the key=value belongs to ultralytics, not to the option."""
    at = a.at or list(DEFAULTS.at)
    a.at = [x for x in at if "=" not in x]
    a.train_args = [x for x in at if "=" in x] + a.train_args
    if a.ray and "=" in a.ray and "://" not in a.ray:
        a.train_args.insert(0, a.ray)
        a.ray = "local"


def _parse_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _parse_train_args(tokens: list[str]) -> dict:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    out = {}
    for tok in tokens:
        if "=" not in tok:
            raise UsageError(f"unexpected argument {tok!r}: training arguments are written key=value (e.g. lr0=0.02)")
        k, v = (s.strip() for s in tok.split("=", 1))
        if k in RESERVED_TRAIN_KEYS:
            opt = RESERVED_TRAIN_KEYS[k]
            raise UsageError(f"training argument {k!r} cannot be passed through: "
                             f"{f'use {opt} instead' if opt else 'the ablation fixes it'}")
        if k not in DEFAULT_CFG_DICT:
            import difflib

            close = difflib.get_close_matches(k, list(DEFAULT_CFG_DICT), n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise UsageError(f"unknown ultralytics training argument {k!r}.{hint}")
        out[k] = _parse_value(v)
    return out


def _resolve_data(data: str, remote: bool) -> str:
    p = Path(data).expanduser()
    if p.is_file():
        return str(p.resolve())
    if p.suffix in (".yaml", ".yml") and p.parent == Path("."):
        import ultralytics

        bundled = Path(ultralytics.__file__).parent / "cfg" / "datasets" / p.name
        if bundled.is_file():
            return str(bundled)  # an ultralytics dataset name such as coco8.yaml (downloads on first use)
    if remote and p.is_absolute():
        return str(p)  # with --ray only the workers must read it (checked there, naming the node)
    raise UsageError(
        f"--data: data YAML {data!r} does not exist; give the path of an ultralytics data YAML "
        "(or leave --data out to use the generated dataset)")


def _data_spec(a: argparse.Namespace) -> DataSpec:
    from .build import data_nc

    if a.data is not None:
        data = _resolve_data(a.data, remote=a.ray is not None)
        return DataSpec(yaml=data, nc=data_nc(data), desc=Path(data).name)
    options = dict(seed=0, n_train=a.n_train, n_val=a.n_val, imgsz=max(64, a.imgsz), **DEFAULTS.data)
    classes = options["classes"]
    return DataSpec(synthetic=options, nc=len(classes.split(",")),
                    desc=f"generated dataset ({a.n_train} train / {a.n_val} val images, classes {classes})")


def _threads(a: argparse.Namespace) -> int | None:
    """CPU threads of a run. Local runs on the CPU run one at a time, so each gets every core (ultralytics'
    select_device would leave it cpu_count - 1: one thread on two cores); a Ray task gets what it asks for."""
    if a.ray is not None:
        return a.cpus_per_run or 1
    if a.cpus_per_run is None and str(a.device).lower() == "cpu":
        return os.cpu_count() or 1
    return a.cpus_per_run


def _apply_preset(a: argparse.Namespace) -> Preset:
    """Fill the training options left out from the preset of the data: generated, or the user's ``--data``."""
    preset = DEFAULTS.generated if a.data is None else DEFAULTS.user_data
    for name in ("epochs", "base_epochs", "imgsz", "batch"):
        if getattr(a, name) is None:
            setattr(a, name, getattr(preset, name))
    return preset


def _check_numbers(a: argparse.Namespace) -> None:
    for name in ("epochs", "batch", "seeds", "n_train", "n_val", "val_every"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if a.base_epochs < 0:
        raise UsageError(f"--base-epochs must be 0 (no base stage) or more, got {a.base_epochs}")
    if a.cpus_per_run is not None and a.cpus_per_run < 1:
        raise UsageError(f"--cpus-per-run must be at least 1, got {a.cpus_per_run}")
    if a.imgsz < 32 or a.imgsz % 32:
        raise UsageError(f"--imgsz must be a multiple of 32 (the largest stride) and at least 32, got {a.imgsz}")
    if a.fetch_weights and a.ray is None:
        raise UsageError("--fetch-weights goes with --ray (local runs keep their weights in --out anyway)")
    if a.ray_retries < 0:
        raise UsageError(f"--ray-retries must be 0 or more, got {a.ray_retries}")
    if a.explain is not None and a.explain < 0:
        raise UsageError(f"--explain must be 0 (no pictures) or more, got {a.explain}")


def prepare(a: argparse.Namespace) -> tuple[Sweep, Path]:
    """Arguments -> the sweep; every check that can fail before training (nothing is written)."""
    preset = _apply_preset(a)
    _check_numbers(a)
    import yolo_attention  # noqa: F401

    from .build import check_variants, import_user_modules

    import_user_modules(a.imports)
    user_args = _parse_train_args(a.train_args)
    variants = parse_variants(a.attn, a.at)
    data = _data_spec(a)
    model = str(Path(a.model).expanduser().resolve()) if Path(a.model).suffix in (".yaml", ".yml", ".pt") and \
        Path(a.model).expanduser().exists() else a.model
    from_pt = Path(model).suffix == ".pt"
    base = (Stage("base", a.base_epochs, a.imgsz, a.batch, {**preset.stage_args(from_pt), **user_args}, a.val_every)
            if a.base_epochs else None)
    train_args = {**preset.stage_args(from_pt or base is not None), **user_args}
    sweep = Sweep(
        model=model, variants=tuple(variants), seeds=tuple(range(a.seeds)), data=data,
        train=Stage("train", a.epochs, a.imgsz, a.batch, train_args, a.val_every), base=base,
        device=str(a.device), threads=_threads(a),
        imports=tuple(str(Path(i).resolve()) if i.endswith(".py") else i for i in a.imports), places=tuple(a.at))
    check_variants(model, variants, data.nc, a.imgsz, gated=sweep.gated)
    out = Path(a.out).expanduser().resolve()
    _check_same_settings(out, sweep)
    if a.explain is None:
        from .pictures import default_images

        a.explain = default_images(data.generated)
    return sweep, out


def _check_same_settings(out: Path, sweep: Sweep) -> None:
    cfg_path = out / "ablate.json"
    if not cfg_path.exists():
        return
    old = read_json(cfg_path).get("settings", {})
    new = sweep.settings()
    diff = [k for k in new if k in old and old[k] != new[k]]
    if diff or set(old) != set(new):
        raise UsageError(f"--out {out} holds runs made with other settings ({', '.join(diff) or 'format'} differ); "
                         "use another --out, or delete it to start over")


def _materialize_data(sweep: Sweep, out: Path) -> tuple[Sweep, str]:
    """Generate the default dataset under OUT/data (or take the user's); the sweep gets its files hash."""
    if not sweep.data.generated:
        return sweep, sweep.data.yaml
    from .dataset import generate

    print(f"generating the dataset under {out / 'data'} ...", flush=True)
    yaml_path, digest = generate(out / "data", sweep.data.synthetic)
    return replace(sweep, data=replace(sweep.data, digest=digest)), yaml_path


def _backend(a: argparse.Namespace, sweep: Sweep, store: Store, data_yaml: str, progress, ray_session):
    if ray_session is not None:
        from .backends.ray import RayBackend
        from .pictures import explained_runs

        return RayBackend(ray_session, store, progress, fetch_weights=a.fetch_weights,
                          weights_of=explained_runs(sweep) if a.explain else frozenset())
    from .backends.local import LocalBackend

    return LocalBackend(store, data_yaml, progress)


def _costs(sweep: Sweep, store: Store, backend):
    spec = sweep.cost_spec()
    report = store.load_costs(spec)
    if report is not None:
        return report
    print("measuring costs side by side (all variants in one process) ...", flush=True)
    try:
        report = backend.measure_costs(spec)
    except Exception as e:  # noqa: BLE001  (the accuracy results stand without the cost columns)
        print(f"yolo-attention ablate: warning: {e}", file=sys.stderr)
        return None
    store.write_costs(report)
    return report


def run(a: argparse.Namespace) -> int:
    try:
        sweep, out = prepare(a)
        ray_session = None
        if a.ray is not None:
            from .backends.ray import connect

            ray_session = connect(a.ray, sweep.device, sweep.threads, a.ray_retries)  # before --out is touched
    except UsageError as e:
        print(f"yolo-attention ablate: error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    sweep, data_yaml = _materialize_data(sweep, out)
    write_json(out / "ablate.json", {"settings": sweep.settings(), "sweep": sweep.to_dict()})
    store = Store(out)
    finished, todo = pending(sweep.plan(), store, a.retry_failed)
    from .progress import Progress

    progress = Progress(todo, ray_session.concurrency if ray_session else 1)
    backend = _backend(a, sweep, store, data_yaml, progress, ray_session)
    print(f"{len(todo)} run(s) to train ({len(finished)} already finished): {sweep.model} + "
          f"[{', '.join(v.name for v in sweep.variants)}], seeds {list(sweep.seeds)}, {sweep.train.epochs} epochs"
          f"{f' after a {sweep.base.epochs}-epoch base' if sweep.base else ''}, imgsz {sweep.train.imgsz}, batch "
          f"{sweep.train.batch}, device {sweep.device}, {backend.describe()}", flush=True)
    try:
        results = execute(todo, finished, store, backend)
        costs = _costs(sweep, store, backend)
    except KeyboardInterrupt:
        print("\ninterrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        backend.close()
    return _finish(out, sweep, results, store, costs, t0, data_yaml, a.explain)


def _pictures(out: Path, sweep: Sweep, results, store: Store, data_yaml: str, n: int):
    """``--explain``: pictures, their links in results.md; None if none were asked for."""
    if not n:
        return None
    from .pictures import draw_pictures
    from .report_html import append_pictures_markdown

    try:
        pics = draw_pictures(out, sweep, results, store, data_yaml, n)
    except Exception as e:  # noqa: BLE001  (draw_pictures notes each variant's failure; this is a last guard)
        from .pictures import Pictures

        pics = Pictures(notes=[f"no pictures: {type(e).__name__}: {e}"])
        print(f"yolo-attention ablate: warning: no pictures: {type(e).__name__}: {e}", file=sys.stderr)
    append_pictures_markdown(out, pics)
    return pics


def _finish(out: Path, sweep: Sweep, results, store: Store, costs, t0: float, data_yaml: str, explain: int) -> int:
    from .report import text_table, write_reports
    from .report_html import write_html

    rows = write_reports(out, sweep, results, store, costs)  # the numbers first: they stand without the pictures
    print()
    print(text_table(rows, sweep.train.batch))
    print()
    try:
        pics = _pictures(out, sweep, results, store, data_yaml, explain)
    except KeyboardInterrupt:
        print("\ninterrupted while drawing the pictures: re-run the same command to finish them", file=sys.stderr)
        return 130
    write_html(out, sweep, rows, results, costs, pics)
    print(f"\ntotal wall time {fmt_time(time.time() - t0)}; reports: {out / 'report.html'}, {out / 'results.md'}, "
          f"{out / 'results.csv'}, {out / 'results.json'}, {out / 'results.png'}")
    failed = [r.label for r in rows if r.status != "ok"]
    if failed:
        print(f"yolo-attention ablate: {len(failed)} variant(s) failed or partly failed: {', '.join(failed)} "
              f"(errors in the table and in {out / 'runs'}/<variant>/seed<k>/result.json)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    _fix_greedy_options(a)
    return run(a)
