"""``yolo-attention ablate``: train attention variants side by side and report accuracy and cost.

Every (variant, seed) pair trains in its own subprocess (``python -m yolo_attention.ablate
--worker SPEC``) which writes ``<out>/runs/<variant>/seed<k>/result.json``. So

* a failing variant (an exception, out of memory, a killed process) is recorded with its
  error and the other runs go on;
* a re-run with the same ``--out`` skips every run that has a result and runs the rest
  (a run interrupted half-way has no result and starts again from scratch);
* peak memory is that run's own: the worker's peak RSS on CPU, ``max_memory_allocated``
  on CUDA.

Before any training, every variant's model is built once and run on a dummy image, so an
unknown module, an unknown place, a missing data YAML or a module that cannot fit a layer
stops the command with exit code 2 and a message saying what to change.

All variants train with the same hyper-parameters, data, seeds and ultralytics'
``deterministic=True``, ``workers=0``: the same seeds and data give the same numbers again
on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["main", "Variant", "parse_variants", "DEFAULTS"]

# The embedded default: 5 variants x 1 seed of yolov8n on a generated dataset, sized so the
# whole run takes about ten minutes on a 2-core CPU (measured, see docs/ablate-sample.md).
DEFAULTS = dict(
    model="yolov8n",
    attn="none,se,a2,bam,biformer",
    at="neck",
    epochs=25,
    imgsz=128,
    batch=16,
    seeds=1,
    device="cpu",
    n_train=160,
    n_val=64,
    out="runs/ablate",
)
# Training from scratch for a few hundred iterations: ultralytics' defaults spend them all in
# warm-up (at least 100 iterations) and mosaic (which shrinks objects at 128 px). Measured on
# yolov8n, 30 epochs of the default generated data: mAP50 0.10 with these settings, where the
# 8-epoch defaults scored 0. Keys given as key=value on the command line override these.
DEFAULT_TRAIN_ARGS = dict(optimizer="SGD", lr0=0.02, warmup_epochs=1, mosaic=0.0, val=False)
# The default dataset: 4 of the generator's classes, lighter clutter and at most 5 objects per image,
# so a detector trained from scratch for a few minutes reaches a measurable mAP (the generator's
# full default is deliberately harder). Only used when --data is not given.
DEFAULT_DATA = dict(classes="circle,square,triangle,star", clutter=0.5, max_objects=5)
# keys that have their own option (or must stay fixed for a fair, resumable comparison)
RESERVED_TRAIN_KEYS = {
    "model", "data", "epochs", "imgsz", "batch", "device", "seed", "project", "name", "exist_ok", "resume",
    "deterministic", "mode", "task",
}
BASELINE = "none"
RESULT = "result.json"
PROGRESS = "progress.jsonl"
LATENCY_WARMUP = 3
LATENCY_RUNS_B1 = 20
LATENCY_RUNS_BATCH = 5


class UsageError(Exception):
    """A bad argument: reported before any training starts, exit code 2."""


# ----------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One column of the comparison: a registered module name (or ``none``) and its keywords."""

    spec: str  # as written, e.g. "bra:num_heads=4"
    attn: str  # "none" or the canonical registry name
    kwargs: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def label(self) -> str:
        return self.spec

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.spec).strip("-") or "variant"


def _parse_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_variants(text: str) -> list[Variant]:
    """``"none,se,bra:num_heads=4:n_win=4"`` -> variants; raises UsageError for unknown modules."""
    from .registry import get_attention_info

    out, seen = [], set()
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, *kv = item.split(":")
        kwargs = {}
        for pair in kv:
            if "=" not in pair:
                raise UsageError(f"--attn: {item!r}: module keywords are written name:key=value[:key=value]")
            k, v = pair.split("=", 1)
            kwargs[k.strip()] = _parse_value(v.strip())
        if name.strip().lower() in ("none", "baseline"):
            if kwargs:
                raise UsageError(f"--attn: {item!r}: the baseline 'none' takes no keywords")
            attn = BASELINE
        else:
            try:
                attn = get_attention_info(name.strip()).name
            except KeyError as e:
                raise UsageError(f"--attn: {e.args[0]} (see `yolo-attention list`; load your own with --import)")
        v = Variant(item, attn, kwargs)
        if v.dirname in seen:
            raise UsageError(f"--attn: variant {item!r} is given twice")
        seen.add(v.dirname)
        out.append(v)
    if not out:
        raise UsageError("--attn: give at least one variant, e.g. none,se")
    return out


# ----------------------------------------------------------------------------- helpers


def _import_user_modules(items: list[str]) -> None:
    """Import modules that register extra attention (a dotted name or a .py file)."""
    for item in items:
        p = Path(item)
        if p.suffix == ".py":
            if not p.exists():
                raise UsageError(f"--import: file {item} does not exist")
            d = str(p.resolve().parent)
            if d not in sys.path:
                sys.path.insert(0, d)
            name = p.stem
        else:
            name = item
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"--import: cannot import {item!r}: {type(e).__name__}: {e}") from None


def _is_pt(model: str) -> bool:
    return str(model).endswith(".pt")


def _data_nc(data: str) -> int | None:
    import yaml

    try:
        d = yaml.safe_load(Path(data).read_text())
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(d, dict):
        return None
    names = d.get("names")
    return int(d["nc"]) if "nc" in d else (len(names) if names else None)


def _resolve_data(data: str) -> str:
    p = Path(data).expanduser()
    if p.is_file():
        return str(p.resolve())
    if p.suffix in (".yaml", ".yml") and p.parent == Path("."):
        import ultralytics

        bundled = Path(ultralytics.__file__).parent / "cfg" / "datasets" / p.name
        if bundled.is_file():
            return str(bundled)  # an ultralytics dataset name such as coco8.yaml (downloads on first use)
    raise UsageError(
        f"--data: data YAML {data!r} does not exist; give the path of an ultralytics data YAML "
        "(or leave --data out to use the generated dataset)"
    )


def _parse_train_args(tokens: list[str]) -> dict:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    out = {}
    for tok in tokens:
        if "=" not in tok:
            raise UsageError(f"unexpected argument {tok!r}: training arguments are written key=value (e.g. lr0=0.02)")
        k, v = tok.split("=", 1)
        k = k.strip()
        if k in RESERVED_TRAIN_KEYS:
            opt = {"model": "--model", "data": "--data", "epochs": "--epochs", "imgsz": "--imgsz", "batch": "--batch",
                   "device": "--device", "seed": "--seeds", "project": "--out", "name": "--out"}.get(k)
            how = f"use {opt} instead" if opt else "the ablation fixes it"
            raise UsageError(f"training argument {k!r} cannot be passed through: {how}")
        if k not in DEFAULT_CFG_DICT:
            import difflib

            close = difflib.get_close_matches(k, list(DEFAULT_CFG_DICT), n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise UsageError(f"unknown ultralytics training argument {k!r}.{hint}")
        out[k] = _parse_value(v)
    return out


def _fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- model building


def _build_variant(model: str, v: Variant, at: str, nc: int | None, yaml_out: Path | None = None):
    """Build the variant's detection model (untrained). Returns (YOLO-or-None, DetectionModel, cfg for train)."""
    from .integrations.insert import add_attention
    from .integrations.yaml_gen import load_model_yaml, make_attention_yaml

    if _is_pt(model):
        from ultralytics import YOLO

        yolo = YOLO(model)
        if v.attn != BASELINE:
            add_attention(yolo, v.attn, at=at, gated=True, **v.kwargs)
        return yolo, yolo.model, yolo
    if v.attn == BASELINE:
        from .cfg import CFG_DIR

        d, stem = load_model_yaml(model)
        shipped = CFG_DIR / f"{stem}.yaml"  # configs that ship with yolo-attention (YOLOv7) are not ultralytics'
        cfg = str(model) if str(model).endswith((".yaml", ".yml")) else str(shipped) if shipped.exists() else f"{stem}.yaml"
    else:
        if yaml_out is None:
            import tempfile

            yaml_out = Path(tempfile.mkdtemp(prefix="ablate-")) / f"{Path(str(model)).stem}-{v.dirname}.yaml"
        cfg = str(make_attention_yaml(model, v.attn, at, out=yaml_out, kwargs=v.kwargs))
    from ultralytics.nn.tasks import DetectionModel

    det = DetectionModel(cfg, nc=nc, verbose=False)
    return None, det, cfg


def _check_variants(model: str, variants: list[Variant], at: str, nc: int | None, imgsz: int) -> None:
    """Build every variant once and run it on a dummy image: any failure is a UsageError."""
    import tempfile

    import torch

    from .integrations.yaml_gen import insertion_points, load_model_yaml

    if not _is_pt(model):
        p = Path(str(model))
        if p.suffix in (".yaml", ".yml") and not p.exists():
            raise UsageError(f"--model: model YAML {model} does not exist")
        try:
            d, _ = load_model_yaml(model)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"--model: {e}") from None
    else:
        if not Path(model).exists():
            raise UsageError(f"--model: checkpoint {model} does not exist (nothing is downloaded here)")
        d = None
    if d is not None and any(v.attn != BASELINE for v in variants):
        try:
            insertion_points(d, at)
        except ValueError as e:
            raise UsageError(f"--at: {e}") from None
    with tempfile.TemporaryDirectory(prefix="ablate-check-") as tmp:
        for v in variants:
            try:
                _, det, _ = _build_variant(model, v, at, nc, Path(tmp) / f"{Path(str(model)).stem}-{v.dirname}.yaml")
                det.eval()
                with torch.no_grad():
                    det(torch.zeros(1, 3, imgsz, imgsz))
            except UsageError:
                raise
            except Exception as e:  # noqa: BLE001
                msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                if v.attn == "none":
                    raise UsageError(f"--model: cannot build {model}: {type(e).__name__}: {msg}") from None
                raise UsageError(
                    f"--attn: variant {v.spec!r} cannot be built into {model} at {at!r} (imgsz {imgsz}): "
                    f"{type(e).__name__}: {msg}. Change its keywords (name:key=value), --at or --imgsz, or drop it."
                ) from None


# ----------------------------------------------------------------------------- worker


def _peak_rss_mb() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def _latency_ms(model, device, imgsz: int, batch: int, runs: int) -> float:
    import torch

    x = torch.zeros(batch, 3, imgsz, imgsz, device=device)
    cuda = device.type == "cuda"
    times = []
    with torch.inference_mode():
        for i in range(LATENCY_WARMUP + runs):
            if cuda:
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= LATENCY_WARMUP:
                times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _measure_cost(det, imgsz: int, batch: int, device) -> dict:
    """Params, FLOPs (ours and ultralytics') and latency of the trained model, fused, in eval mode."""
    import torch

    m = copy.deepcopy(det).float().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    params = sum(p.numel() for p in m.parameters())
    with contextlib.suppress(Exception):
        m = m.fuse(verbose=False) if "verbose" in m.fuse.__code__.co_varnames else m.fuse()
    out = {"params": params}
    try:
        from .flops import model_flops

        rep = model_flops(m, imgsz=imgsz, batch=1)
        out["gflops"] = rep.total / 1e9
        out["gflops_matmul"] = rep.matmul / 1e9
        unc = getattr(rep, "uncounted", None)
        if unc:
            out["flops_uncounted"] = dict(unc)
    except Exception as e:  # noqa: BLE001
        out["gflops"] = None
        out["flops_error"] = f"{type(e).__name__}: {e}"
    try:
        from .integrations.cost import ultralytics_gflops

        out["gflops_ultralytics"], out["gflops_ultralytics_method"] = ultralytics_gflops(m, imgsz)
    except Exception as e:  # noqa: BLE001
        out["gflops_ultralytics"] = None
        out["ultralytics_flops_error"] = f"{type(e).__name__}: {e}"
    m.to(device)
    out["latency_b1_ms"] = _latency_ms(m, device, imgsz, 1, LATENCY_RUNS_B1)
    out["latency_batch_ms"] = _latency_ms(m, device, imgsz, batch, LATENCY_RUNS_BATCH)
    out["latency_batch"] = batch
    return out


def run_worker(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    run_dir = Path(spec["run_dir"])
    progress = run_dir / PROGRESS
    t0 = time.time()
    result = {k: spec[k] for k in ("variant", "attn", "kwargs", "seed", "fingerprint")}

    def event(**kw):
        with open(progress, "a") as f:
            f.write(json.dumps({"t": time.time() - t0, **kw}) + "\n")

    try:
        import torch

        import yolo_attention  # noqa: F401  (registers the modules with ultralytics)

        _import_user_modules(spec["imports"])
        from ultralytics import YOLO

        v = Variant(spec["variant"], spec["attn"], spec["kwargs"])
        yolo, _, cfg = _build_variant(spec["model"], v, spec["at"], spec["nc"], run_dir / f"{spec['stem']}-{v.dirname}.yaml")
        model = yolo if yolo is not None else YOLO(cfg)
        event(event="start", epochs=spec["epochs"])

        def on_epoch(trainer):
            event(event="epoch", epoch=trainer.epoch + 1, epochs=trainer.epochs)

        model.add_callback("on_fit_epoch_end", on_epoch)
        device = spec["device"]
        cuda = str(device) not in ("cpu", "mps") and torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        args = dict(
            data=spec["data"], epochs=spec["epochs"], imgsz=spec["imgsz"], batch=spec["batch"], device=device,
            seed=spec["seed"], deterministic=True, workers=0, project=str(run_dir), name="train", exist_ok=True,
            plots=False, verbose=False,
        )
        args.update(spec["train_args"])
        t_train = time.time()
        metrics = model.train(**args)
        result["train_s"] = time.time() - t_train
        if cuda:
            result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
            result["mem_kind"] = "cuda max_memory_allocated"
        if metrics is None or not hasattr(metrics, "box"):
            metrics = model.val(data=spec["data"], imgsz=spec["imgsz"], batch=spec["batch"], device=device,
                                workers=0, plots=False, verbose=False)
        result["map50"] = float(metrics.box.map50)
        result["map50_95"] = float(metrics.box.map)
        event(event="measure")
        det = model.model
        dev = next(det.parameters()).device
        result.update(_measure_cost(det, spec["imgsz"], spec["batch"], dev))
        if not cuda:
            result["peak_mem_mb"] = _peak_rss_mb()
            result["mem_kind"] = "peak RSS of the run's process"
        result["status"] = "ok"
        code = 0
    except BaseException as e:  # noqa: BLE001  (KeyboardInterrupt: no result, the run is redone on resume)
        if isinstance(e, KeyboardInterrupt):
            raise
        oom = "out of memory" in str(e).lower() or isinstance(e, MemoryError)
        result.update(
            status="failed",
            error=f"{type(e).__name__}: {str(e).strip()[:2000]}",
            error_kind="out of memory" if oom else type(e).__name__,
            traceback=traceback.format_exc()[-6000:],
        )
        code = 1
    result["wall_s"] = time.time() - t0
    _write_json(run_dir / RESULT, result)
    event(event="done", status=result["status"])
    return code


# ----------------------------------------------------------------------------- parent: runs


@dataclass
class Run:
    variant: Variant
    seed: int
    dir: Path

    @property
    def name(self) -> str:
        return f"{self.variant.label} seed{self.seed}"


class Progress:
    """One status line: which run and epoch, elapsed time and the time left (from finished epochs)."""

    def __init__(self, runs_to_do: list[Run], epochs: int, stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.epochs = epochs
        self.total_runs = len(runs_to_do)
        self.start = time.time()
        self.epoch_times: list[float] = []
        self.overheads: list[float] = []
        self.runs_left = len(runs_to_do)
        self.cur_epoch = 0
        self.last_len = 0

    def eta(self) -> float | None:
        if not self.epoch_times:
            return None
        per_epoch = statistics.mean(self.epoch_times)
        overhead = statistics.mean(self.overheads) if self.overheads else 0.25 * per_epoch * self.epochs
        if self.runs_left <= 0:
            return 0.0
        cur_left = max(0, self.epochs - self.cur_epoch) * per_epoch + overhead
        return cur_left + (self.runs_left - 1) * (self.epochs * per_epoch + overhead)

    def line(self, i: int, run: Run, state: str) -> str:
        left = self.eta()
        return (f"[{i}/{self.total_runs}] {run.name}: {state} | elapsed {_fmt_time(time.time() - self.start)} | "
                f"left {'~' + _fmt_time(left) if left is not None else 'estimating...'}")

    def show(self, text: str, final: bool = False) -> None:
        if self.tty:
            pad = max(0, self.last_len - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self.last_len = 0 if final else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _run_one(run: Run, spec: dict, prog: Progress, index: int) -> dict:
    import shutil

    if run.dir.exists():
        shutil.rmtree(run.dir)  # an interrupted run: start it again from scratch
    run.dir.mkdir(parents=True)
    spec_path = run.dir / "spec.json"
    _write_json(spec_path, spec)
    log = open(run.dir / "train.log", "w")
    env = dict(os.environ)
    env.setdefault("YOLO_VERBOSE", "True")
    proc = subprocess.Popen([sys.executable, "-m", "yolo_attention.ablate", "--worker", str(spec_path)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    prog.cur_epoch = 0
    pos, t_start, epoch_t0, state = 0, time.time(), None, "starting"
    last_print, last_state = 0.0, None
    try:
        while True:
            rc = proc.poll()
            events = []
            pfile = run.dir / PROGRESS
            if pfile.exists():
                with open(pfile) as f:
                    f.seek(pos)
                    chunk = f.read()
                # only whole lines
                whole = chunk[: chunk.rfind("\n") + 1] if "\n" in chunk else ""
                pos += len(whole)
                events = [json.loads(s) for s in whole.splitlines() if s.strip()]
            changed = False
            for ev in events:
                if ev["event"] == "start":
                    epoch_t0, state, changed = time.time(), f"epoch 1/{spec['epochs']}", True
                elif ev["event"] == "epoch":
                    now = time.time()
                    if epoch_t0 is not None:
                        prog.epoch_times.append(now - epoch_t0)
                    epoch_t0 = now
                    prog.cur_epoch = ev["epoch"]
                    nxt = ev["epoch"] + 1
                    state = (f"epoch {nxt}/{ev['epochs']}" if nxt <= ev["epochs"] else "final validation")
                    changed = True
                elif ev["event"] == "measure":
                    state, changed = "measuring FLOPs and latency", True
            now = time.time()
            if changed and not prog.tty and state == last_state:
                changed = False
            if changed or (prog.tty and now - last_print > 1.0):
                last_state = state
                prog.show(prog.line(index, run, state))
                last_print = now
            if rc is not None:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    finally:
        log.close()
    wall = time.time() - t_start
    prog.overheads.append(max(0.0, wall - spec["epochs"] * (statistics.mean(prog.epoch_times) if prog.epoch_times else 0)))
    prog.runs_left -= 1
    res_path = run.dir / RESULT
    if res_path.exists():
        res = json.loads(res_path.read_text())
    else:  # killed (e.g. by the kernel's out-of-memory killer) before it could write its result
        tail = (run.dir / "train.log").read_text(errors="replace")[-1500:]
        killed = rc < 0
        res = {k: spec[k] for k in ("variant", "attn", "kwargs", "seed", "fingerprint")}
        res.update(status="failed", wall_s=wall,
                   error_kind="killed (out of memory?)" if killed else f"exit code {rc}",
                   error=(f"worker killed by signal {-rc}" if killed else f"worker exited with code {rc}")
                   + f"; log tail: {tail}")
        _write_json(res_path, res)
    if res["status"] == "ok":
        msg = f"done in {_fmt_time(wall)}: mAP50 {res['map50']:.4f}, mAP50-95 {res['map50_95']:.4f}"
    else:
        msg = f"FAILED ({res.get('error', '?')[:200]}); see {run.dir / 'train.log'}"
    prog.show(prog.line(index, run, msg), final=True)
    return res


# ----------------------------------------------------------------------------- reports


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(variants: list[Variant], results: dict[tuple[str, int], dict], seeds: list[int]) -> list[dict]:
    rows = []
    for v in variants:
        rs = [results.get((v.dirname, s)) for s in seeds]
        ok = [r for r in rs if r and r.get("status") == "ok"]
        failed = [r for r in rs if r and r.get("status") != "ok"]
        row = {"variant": v.label, "attn": v.attn, "seeds_ok": len(ok), "seeds_failed": len(failed)}
        row["status"] = "ok" if ok and not failed else ("partial" if ok else "failed")
        row["error"] = failed[0].get("error", "")[:300] if failed else ""
        if ok:
            first = ok[0]
            for k in ("params", "gflops", "gflops_matmul", "gflops_ultralytics", "latency_batch"):
                row[k] = first.get(k)
            for k in ("latency_b1_ms", "latency_batch_ms", "train_s", "peak_mem_mb"):
                row[k] = statistics.median([r[k] for r in ok if r.get(k) is not None]) if ok else None
            for k in ("map50", "map50_95"):
                row[k], row[k + "_sd"] = _mean_sd([r[k] for r in ok])
            row["seed_map50_95"] = [r["map50_95"] for r in ok]
        rows.append(row)
    base = next((r for r in rows if r["attn"] == BASELINE and r["status"] != "failed"), None)
    for r in rows:
        r["delta_map50_95"], r["verdict"] = None, ""
        if r is base:
            r["verdict"] = "baseline"
            continue
        if r["status"] == "failed":
            r["verdict"] = "failed: " + r["error"][:120]
            continue
        if base is None:
            r["verdict"] = "no baseline ('none') to compare with"
            continue
        d = r["map50_95"] - base["map50_95"]
        r["delta_map50_95"] = d
        n = min(r["seeds_ok"], base["seeds_ok"])
        if n < 2:
            r["verdict"] = "no verdict possible with one seed (use --seeds 3 or more)"
            continue
        spread = max(r["map50_95_sd"] or 0.0, base["map50_95_sd"] or 0.0)
        if abs(d) > spread:
            word = "better" if d > 0 else "worse"
            r["verdict"] = (f"{word} than the baseline: mAP50-95 {d:+.4f}, more than the seed spread ({spread:.4f})")
        else:
            r["verdict"] = f"no clear difference: {d:+.4f} is within the seed spread ({spread:.4f})"
    return rows


COLUMNS = [
    ("variant", "variant"),
    ("params", "params"),
    ("gflops", "GFLOPs (all ops)"),
    ("gflops_ultralytics", "GFLOPs (ultralytics)"),
    ("latency_b1_ms", "latency b1 (ms)"),
    ("latency_batch_ms", "latency bN (ms)"),
    ("train_s", "train time (s)"),
    ("peak_mem_mb", "peak mem (MB)"),
    ("map50", "mAP50"),
    ("map50_95", "mAP50-95"),
    ("delta_map50_95", "Δ mAP50-95"),
    ("verdict", "verdict"),
]
CSV_FIELDS = [
    "variant", "attn", "status", "seeds_ok", "seeds_failed", "params", "gflops", "gflops_matmul", "gflops_ultralytics",
    "latency_b1_ms", "latency_batch_ms", "latency_batch", "train_s", "peak_mem_mb", "map50", "map50_sd", "map50_95",
    "map50_95_sd", "delta_map50_95", "verdict", "error",
]


def _cell(row: dict, key: str) -> str:
    v = row.get(key)
    if row["status"] == "failed" and key not in ("variant", "verdict"):
        return "-"
    if v is None:
        return "-"
    if key == "params":
        return f"{v / 1e6:.3f} M"
    if key in ("gflops", "gflops_ultralytics"):
        return f"{v:.3f}"
    if key in ("latency_b1_ms", "latency_batch_ms"):
        return f"{v:.1f}"
    if key in ("train_s", "peak_mem_mb"):
        return f"{v:.0f}"
    if key in ("map50", "map50_95"):
        sd = row.get(key + "_sd")
        return f"{v:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")
    if key == "delta_map50_95":
        return f"{v:+.4f}"
    return str(v)


def _table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = [h for _, h in COLUMNS]
    body = [[_cell(r, k) for k, _ in COLUMNS] for r in rows]
    return head, body


def markdown_table(rows: list[dict], batch: int) -> str:
    head, body = _table(rows)
    head = [h.replace("bN", f"b{batch}") for h in head]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


def text_table(rows: list[dict], batch: int) -> str:
    head, body = _table(rows)
    head = [h.replace("bN", f"b{batch}") for h in head]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    widths[-1] = 0
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths[:-1]] + ["-------"]), *map(fmt, body)])


def plot(rows: list[dict], results: dict, seeds: list[int], variants: list[Variant], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [(r, v) for r, v in zip(rows, variants) if r["status"] != "failed"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, xkey, xlabel in ((axes[0], "gflops", "GFLOPs per image (all operations, batch 1)"),
                             (axes[1], "latency_b1_ms", "latency, batch 1 (ms, median)")):
        for i, (r, v) in enumerate(ok):
            x = r.get(xkey)
            if x is None:
                continue
            color = f"C{i % 10}"
            ys = [results[(v.dirname, s)]["map50_95"] for s in seeds
                  if results.get((v.dirname, s), {}).get("status") == "ok"]
            ax.scatter([x] * len(ys), ys, s=14, color=color, alpha=0.45, zorder=2)
            ax.errorbar([x], [r["map50_95"]], yerr=[r["map50_95_sd"] or 0.0], fmt="o", ms=8, capsize=5, color=color,
                        zorder=3, label=r["variant"])
            ax.annotate(r["variant"], (x, r["map50_95"]), textcoords="offset points", xytext=(7, 5), fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mAP50-95 (mean, bars: seed s.d.)")
        ax.grid(alpha=0.3)
    failed = [r["variant"] for r in rows if r["status"] == "failed"]
    if failed:
        axes[1].text(0.02, 0.02, "failed: " + ", ".join(failed), transform=axes[1].transAxes, fontsize=8, color="red")
    axes[0].legend(fontsize=8, loc="best")
    import textwrap

    fig.suptitle(textwrap.fill(title, 120), fontsize=10)  # long titles (data description) wrap, not clip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(out: Path, config: dict, variants: list[Variant], seeds: list[int],
                  results: dict[tuple[str, int], dict]) -> tuple[list[dict], str]:
    rows = aggregate(variants, results, seeds)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    with open(out / "runs.csv", "w", newline="") as f:
        keys = ["variant", "seed", "status", "params", "gflops", "gflops_matmul", "gflops_ultralytics", "latency_b1_ms",
                "latency_batch_ms", "train_s", "peak_mem_mb", "mem_kind", "map50", "map50_95", "wall_s", "error"]
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for v in variants:
            for s in seeds:
                r = results.get((v.dirname, s))
                if r:
                    w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    data_desc = config["data_desc"]
    title = (f"{config['model']} + attention at {config['at']} | {data_desc} | imgsz {config['imgsz']}, "
             f"{config['epochs']} epochs, batch {config['batch']}, {len(seeds)} seed(s), {config['device']}")
    md = [f"# Ablation: {title}", "", markdown_table(rows, config["batch"]), "",
          "- GFLOPs (all ops): `yolo_attention.flops.model_flops` on the trained, fused model at batch 1: every "
          "operation, attention's softmax, top-k and elementwise gates included. GFLOPs (ultralytics): "
          "`ultralytics.utils.torch_utils.get_flops` (convolutions and matrix products only).",
          f"- Latency: median of {LATENCY_RUNS_B1} (batch 1) and {LATENCY_RUNS_BATCH} (batch {config['batch']}) "
          f"forward passes after {LATENCY_WARMUP} warm-up runs, on {config['device']}. Train time: wall time of "
          "ultralytics' training including its validation. Peak memory: the run's own process (peak RSS on "
          "CPU, max_memory_allocated on CUDA).",
          "- mAP: mean ± sample s.d. over seeds of ultralytics' final validation of best.pt. A verdict is given "
          "only where the change in mAP50-95 exceeds the seed spread.", ""]
    (out / "results.md").write_text("\n".join(md))
    _write_json(out / "results.json", {"config": config, "variants": rows,
                                      "runs": {f"{k[0]}/seed{k[1]}": r for k, r in results.items()}})
    try:
        plot(rows, results, seeds, variants, out / "results.png", title)
    except Exception as e:  # noqa: BLE001
        print(f"yolo-attention ablate: warning: could not draw the plot: {e}", file=sys.stderr)
    return rows, title


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog="yolo-attention ablate",
        description=(
            "Train attention variants of one detector side by side (same data, seeds and hyper-parameters) and "
            "report accuracy and cost: a table (printed, CSV, Markdown) and a plot of mAP against cost. With no "
            "arguments: yolov8n with none,se,a2,bam,biformer at the neck on a generated dataset (about ten minutes "
            "on a 2-core CPU)."),
        epilog=("Trailing key=value tokens go to ultralytics' train (e.g. lr0=0.02 mosaic=0). Re-running with the "
                "same --out skips finished runs. Example: yolo-attention ablate --attn none,se,bra:num_heads=4 "
                "--seeds 3 --epochs 20 --data my.yaml --out runs/ablate-se"),
    )
    p.add_argument("--model", default=d["model"],
                   help="model family and scale (yolov8n, yolo11s, yolov5nu, ...), a model YAML, or a .pt checkpoint "
                        "(attention inserted gated, starting as the identity) [%(default)s]")
    p.add_argument("--attn", default=d["attn"],
                   help="comma-separated variants: 'none' (the unmodified model) and registered modules, with "
                        "optional keywords name:key=value[:key=value] [%(default)s]")
    p.add_argument("--at", default=d["at"], help="where to insert: backbone, neck, sppf or layer indices [%(default)s]")
    p.add_argument("--data", default=None,
                   help="ultralytics data YAML [default: a generated synthetic dataset under OUT/data]")
    p.add_argument("--epochs", type=int, default=d["epochs"], help="[%(default)s]")
    p.add_argument("--imgsz", type=int, default=d["imgsz"], help="[%(default)s]")
    p.add_argument("--batch", type=int, default=d["batch"], help="training batch (also timed for latency) [%(default)s]")
    p.add_argument("--seeds", type=int, default=d["seeds"], help="train every variant with seeds 0..N-1 [%(default)s]")
    p.add_argument("--device", default=d["device"], help="cpu, 0, cuda:0, ... [%(default)s]")
    p.add_argument("--out", default=d["out"], help="output directory (re-use it to resume) [%(default)s]")
    p.add_argument("--n-train", type=int, default=d["n_train"], help="generated dataset: train images [%(default)s]")
    p.add_argument("--n-val", type=int, default=d["n_val"], help="generated dataset: val images [%(default)s]")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module (dotted name or .py file) that registers more attention modules; repeatable")
    p.add_argument("--retry-failed", action="store_true", help="re-run runs recorded as failed (default: keep them)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("train_args", nargs="*", metavar="key=value", help="passed to ultralytics' train")
    return p


def _fingerprint(cfg: dict) -> str:
    keys = ("model", "at", "data", "epochs", "imgsz", "batch", "device", "train_args", "imports")
    return hashlib.sha256(json.dumps({k: cfg[k] for k in keys}, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prepare(a) -> tuple[dict, list[Variant], list[int], Path]:
    for name in ("epochs", "batch", "seeds", "n_train", "n_val"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if a.imgsz < 32 or a.imgsz % 32:
        raise UsageError(f"--imgsz must be a multiple of 32 (the largest stride) and at least 32, got {a.imgsz}")
    import yolo_attention  # noqa: F401

    _import_user_modules(a.imports)
    train_args = {**DEFAULT_TRAIN_ARGS, **_parse_train_args(a.train_args)}
    variants = parse_variants(a.attn)
    out = Path(a.out).expanduser().resolve()
    if a.data is not None:
        data = _resolve_data(a.data)
        data_desc = Path(data).name
    else:
        data = None
        data_desc = (f"generated dataset ({a.n_train} train / {a.n_val} val images, classes "
                     f"{DEFAULT_DATA['classes']})")
    model = str(Path(a.model).expanduser().resolve()) if Path(a.model).suffix in (".yaml", ".yml", ".pt") and \
        Path(a.model).expanduser().exists() else a.model
    imports = [str(Path(i).resolve()) if i.endswith(".py") else i for i in a.imports]
    cfg = dict(model=model, at=a.at, data=data, data_desc=data_desc, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch,
               device=str(a.device), train_args=train_args, imports=imports, n_train=a.n_train, n_val=a.n_val)
    nc = _data_nc(data) if data else None
    _check_variants(model, variants, a.at, nc, a.imgsz)
    if data is None:
        cfg["data"] = f"<generated n_train={a.n_train} n_val={a.n_val} imgsz={max(64, a.imgsz)} {DEFAULT_DATA}>"
    cfg["fingerprint"] = _fingerprint(cfg)
    cfg_path = out / "ablate.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if old.get("fingerprint") != cfg["fingerprint"]:
            diff = [k for k in ("model", "at", "data", "epochs", "imgsz", "batch", "device", "train_args", "imports")
                    if old.get(k) != cfg.get(k)]
            raise UsageError(f"--out {out} holds runs made with other settings ({', '.join(diff)} differ); "
                             "use another --out, or delete it to start over")
    seeds = list(range(a.seeds))
    return cfg, variants, seeds, out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    # argparse would take a negative-looking or key=value token as positional anyway; fine.
    a = parser.parse_args(argv)
    if a.worker:
        return run_worker(a.worker)
    try:
        cfg, variants, seeds, out = _prepare(a)
    except UsageError as e:
        print(f"yolo-attention ablate: error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    if a.data is None:
        from .data.synthetic import generate_synthetic

        print(f"generating the dataset under {out / 'data'} ...", flush=True)
        data = str(generate_synthetic(out / "data", seed=0, n_train=a.n_train, n_val=a.n_val, imgsz=max(64, a.imgsz),
                                      **DEFAULT_DATA))
    else:
        data = cfg["data"]
    _write_json(out / "ablate.json", cfg)
    nc = _data_nc(data)
    from .integrations.yaml_gen import load_model_yaml

    stem = Path(cfg["model"]).stem if _is_pt(cfg["model"]) else load_model_yaml(cfg["model"])[1]
    runs = [Run(v, s, out / "runs" / v.dirname / f"seed{s}") for v in variants for s in seeds]
    results: dict[tuple[str, int], dict] = {}
    todo = []
    for r in runs:
        p = r.dir / RESULT
        if p.exists():
            res = json.loads(p.read_text())
            if res.get("fingerprint") == cfg["fingerprint"] and (res.get("status") == "ok" or not a.retry_failed):
                results[(r.variant.dirname, r.seed)] = res
                print(f"skipped {r.name}: already finished ({res.get('status')}) in {r.dir}")
                continue
        todo.append(r)
    print(f"{len(todo)} run(s) to train ({len(runs) - len(todo)} already finished): "
          f"{cfg['model']} + [{', '.join(v.label for v in variants)}] at {cfg['at']}, seeds {seeds}, "
          f"{cfg['epochs']} epochs, imgsz {cfg['imgsz']}, batch {cfg['batch']}, device {cfg['device']}", flush=True)
    prog = Progress(todo, cfg["epochs"])
    for i, r in enumerate(todo, 1):
        spec = dict(
            run_dir=str(r.dir), variant=r.variant.spec, attn=r.variant.attn, kwargs=r.variant.kwargs, seed=r.seed,
            model=cfg["model"], stem=stem, at=cfg["at"], data=data, nc=nc, epochs=cfg["epochs"], imgsz=cfg["imgsz"],
            batch=cfg["batch"], device=cfg["device"], train_args=cfg["train_args"], imports=cfg["imports"],
            fingerprint=cfg["fingerprint"],
        )
        try:
            results[(r.variant.dirname, r.seed)] = _run_one(r, spec, prog, i)
        except KeyboardInterrupt:
            print("\ninterrupted: re-run the same command to resume", file=sys.stderr)
            return 130
    rows, _ = write_reports(out, cfg, variants, seeds, results)
    print()
    print(text_table(rows, cfg["batch"]))
    print(f"\ntotal wall time {_fmt_time(time.time() - prog.start)}; reports: {out / 'results.md'}, "
          f"{out / 'results.csv'}, {out / 'results.json'}, {out / 'results.png'}")
    failed = [r["variant"] for r in rows if r["status"] != "ok"]
    if failed:
        print(f"yolo-attention ablate: {len(failed)} variant(s) failed or partly failed: {', '.join(failed)} "
              f"(errors in the table and in {out / 'runs'}/<variant>/seed<k>/result.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
