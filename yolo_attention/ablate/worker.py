"""The worker: one process per training run (and one for the side-by-side costs).

``python -m yolo_attention.ablate.worker TASK.json`` runs one task and writes its result
file; every backend starts it the same way (:func:`launch`), so

* a failing run (an exception, out of memory, a killed process) is recorded with its error
  and the others go on: :func:`crash_result` covers a worker that dies before writing;
* all runs see the same code path, so the same spec gives the same numbers on every backend
  (CPU training is deterministic for a given number of threads).

A task is a spec (what to compute, see ``spec.py``) plus the paths on the machine that runs it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .common import write_json
from .results import MATCHES_FILE, RESULT_FILE, EpochPoint, RunResult
from .spec import CostSpec, RunSpec

__all__ = ["TrainTask", "CostTask", "write_task", "read_task", "launch", "read_events", "crash_result",
           "run_process", "run_train", "main", "PROGRESS_FILE", "LOG_FILE", "WEIGHTS"]

PROGRESS_FILE = "progress.jsonl"
LOG_FILE = "train.log"
WEIGHTS = "train/weights/last.pt"  # the final weights (ultralytics' last.pt: the EMA of the last epoch)


@dataclass(frozen=True)
class TrainTask:
    spec: RunSpec
    run_dir: str
    data_yaml: str
    parent_weights: str | None = None


@dataclass(frozen=True)
class CostTask:
    spec: CostSpec
    out_file: str
    data_yaml: str | None = None


def write_task(task: TrainTask | CostTask, path: Path) -> None:
    d = {"kind": "train" if isinstance(task, TrainTask) else "costs", **task.__dict__, "spec": task.spec.to_dict()}
    write_json(path, d)


def read_task(path: Path) -> TrainTask | CostTask:
    d = json.loads(Path(path).read_text())
    kind = d.pop("kind")
    if kind == "train":
        return TrainTask(**{**d, "spec": RunSpec.from_dict(d["spec"])})
    return CostTask(**{**d, "spec": CostSpec.from_dict(d["spec"])})


# ----------------------------------------------------------------------------- parent side


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the worker is killed when the process that started it dies (no orphaned training)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def launch(task_path: Path, log_path: Path, threads: int | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.setdefault("YOLO_VERBOSE", "True")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = open(log_path, "w")
    try:
        return subprocess.Popen([sys.executable, "-m", "yolo_attention.ablate.worker", str(task_path)], stdout=log,
                                stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    finally:
        log.close()  # the child holds its own descriptor


def read_events(path: Path, pos: int) -> tuple[list[dict], int]:
    """New whole lines of a worker's progress file from byte ``pos``: (events, new pos)."""
    if not path.exists():
        return [], pos
    with open(path) as f:
        f.seek(pos)
        chunk = f.read()
    whole = chunk[: chunk.rfind("\n") + 1] if "\n" in chunk else ""
    return [json.loads(s) for s in whole.splitlines() if s.strip()], pos + len(whole)


def run_process(task_path: Path, log_path: Path, threads: int | None = None,
                on_event: Callable[[dict | None], None] | None = None, poll_s: float = 0.5) -> int:
    """Start a worker and wait for it; ``on_event`` gets each progress event (and None at every poll).

    An exception here (e.g. KeyboardInterrupt) kills the worker before it propagates.
    """
    proc = launch(task_path, log_path, threads)
    progress, pos = Path(task_path).parent / PROGRESS_FILE, 0
    try:
        while True:
            rc = proc.poll()
            if on_event is not None:
                events, pos = read_events(progress, pos)
                for ev in events:
                    on_event(ev)
                on_event(None)
            if rc is not None:
                return rc
            time.sleep(poll_s)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def crash_result(spec: RunSpec, rc: int, log_path: Path, wall_s: float, node: str | None = None) -> RunResult:
    """The result of a worker that died before writing one (e.g. the kernel's out-of-memory killer)."""
    tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
    killed = rc < 0
    error = (f"worker killed by signal {-rc}" if killed else f"worker exited with code {rc}") + f"; log tail: {tail}"
    return RunResult.failed(spec, error, "killed (out of memory?)" if killed else f"exit code {rc}", wall_s, node)


# ----------------------------------------------------------------------------- child side: training


class _Events:
    def __init__(self, path: Path):
        self.path, self.t0 = path, time.time()

    def __call__(self, **kw) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"t": time.time() - self.t0, **kw}) + "\n")


class _Curve:
    """on_fit_epoch_end: the epoch's validation (ultralytics' numbers, unrounded) and its matches."""

    def __init__(self, recorder, events: _Events):
        self.recorder, self.events = recorder, events
        self.points: list[EpochPoint] = []
        self.final_matches = None
        self._passes = 0

    def __call__(self, trainer) -> None:
        r = self.recorder
        new_pass, self._passes = r.passes > self._passes, r.passes
        if new_pass and not r.training:
            return  # ultralytics' final_eval (a separate validation of best.pt) calls back once more
        if new_pass:
            self.points.append(EpochPoint(trainer.epoch + 1, r.map50, r.map50_95))
            self.final_matches = r.matches
        self.events(event="epoch", epoch=trainer.epoch + 1, epochs=trainer.epochs)


def _validate_every(k: int):
    """on_train_epoch_start: ultralytics validates after an epoch when ``args.val`` (and after the last always)."""

    def callback(trainer) -> None:
        trainer.args.val = (trainer.epoch + 1) % k == 0

    return callback


def _threads(n: int | None, result: RunResult):
    """on_train_start, after the trainer's select_device (which sets ultralytics' CPU thread count): use ``n``."""

    def callback(trainer) -> None:
        import torch

        if n:
            torch.set_num_threads(n)
        result.threads = torch.get_num_threads()

    return callback


def _train(task: TrainTask, result: RunResult, events: _Events) -> None:
    import yolo_attention  # noqa: F401  (registers the modules with ultralytics)

    from .build import build_variant, data_nc, import_user_modules
    from .matches import MatchRecorder
    from .stats import BOOT_FILE, Replicates

    spec, run_dir = task.spec, Path(task.run_dir)
    import_user_modules(spec.imports)
    from ultralytics import YOLO

    nc = spec.data.nc or data_nc(task.data_yaml)
    yolo, _, cfg = build_variant(spec.model, spec.variant, nc, weights=task.parent_weights,
                                 yaml_out=run_dir / f"{Path(str(spec.model)).stem}-{spec.variant.dirname}.yaml")
    model = yolo if yolo is not None else YOLO(cfg)
    recorder = MatchRecorder()
    recorder.attach(model)
    curve = _Curve(recorder, events)
    model.add_callback("on_fit_epoch_end", curve)
    if spec.stage.val_every > 1:
        model.add_callback("on_train_epoch_start", _validate_every(spec.stage.val_every))
    model.add_callback("on_train_start", _threads(spec.threads, result))
    events(event="start", epochs=spec.stage.epochs)
    args = dict(data=task.data_yaml, epochs=spec.stage.epochs, imgsz=spec.stage.imgsz, batch=spec.stage.batch,
                device=spec.device, seed=spec.seed, deterministic=True, workers=0, project=str(run_dir), name="train",
                exist_ok=True, plots=False, verbose=False)
    args.update(spec.stage.train_args)
    t = time.time()
    model.train(**args)
    result.train_s = time.time() - t
    if not curve.points:
        raise RuntimeError("training ended without a validation of the final weights")
    last = curve.points[-1]
    result.map50, result.map50_95, result.curve = last.map50, last.map50_95, curve.points
    curve.final_matches.save(run_dir / MATCHES_FILE)
    result.matches = MATCHES_FILE
    events(event="bootstrap")
    Replicates.of(curve.final_matches).save(run_dir / BOOT_FILE)  # here: in parallel on a cluster's workers
    result.bootstrap = BOOT_FILE
    if (run_dir / WEIGHTS).is_file():
        result.weights = WEIGHTS


def run_train(task: TrainTask) -> int:
    spec, run_dir = task.spec, Path(task.run_dir)
    events = _Events(run_dir / PROGRESS_FILE)
    result = RunResult(run_id=spec.run_id, variant=spec.variant.name, seed=spec.seed, stage=spec.stage.name,
                       fingerprint=spec.fingerprint, status="failed", node=socket.gethostname())
    try:
        _train(task, result, events)
        result.status = "ok"
        code = 0
    except Exception as e:  # noqa: BLE001  (KeyboardInterrupt: no result, the run is redone on resume)
        oom = "out of memory" in str(e).lower() or isinstance(e, MemoryError)
        result.error = f"{type(e).__name__}: {str(e).strip()[:2000]}"
        result.error_kind = "out of memory" if oom else type(e).__name__
        result.traceback = traceback.format_exc()[-6000:]
        code = 1
    result.wall_s = time.time() - events.t0
    write_json(run_dir / RESULT_FILE, result.to_dict())
    events(event="done", status=result.status)
    return code


def run_costs(task: CostTask) -> int:
    from .costs import measure_costs

    report = measure_costs(task.spec, task.data_yaml)
    write_json(Path(task.out_file), report.to_dict())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m yolo_attention.ablate.worker TASK.json", file=sys.stderr)
        return 2
    task = read_task(Path(argv[0]))
    return run_train(task) if isinstance(task, TrainTask) else run_costs(task)


if __name__ == "__main__":
    sys.exit(main())
