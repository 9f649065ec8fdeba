"""The local backend: runs one after the other on this machine, each in its own worker process."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from ..common import fmt_time, read_json
from ..progress import Progress
from ..results import RESULT_FILE, CostReport, RunResult
from ..spec import CostSpec, RunSpec
from ..sweep import Store
from ..worker import LOG_FILE, CostTask, TrainTask, crash_result, run_process, write_task

__all__ = ["LocalBackend", "run_cost_task"]


def run_cost_task(spec: CostSpec, work_dir: Path, data_yaml: str | None) -> CostReport:
    """Measure the costs in one worker process under ``work_dir``; raises RuntimeError if it fails."""
    work_dir.mkdir(parents=True, exist_ok=True)
    out_file = work_dir / "costs.json"
    out_file.unlink(missing_ok=True)
    write_task(CostTask(spec, str(out_file), data_yaml), work_dir / "task.json")
    rc = run_process(work_dir / "task.json", work_dir / "costs.log", spec.threads)
    if rc != 0 or not out_file.exists():
        tail = (work_dir / "costs.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"the cost measurement failed (exit code {rc}); log tail: {tail}")
    return CostReport.from_dict(read_json(out_file))


class _Watcher:
    """Turns a worker's progress events into the status line."""

    def __init__(self, progress: Progress, spec: RunSpec, index: int):
        self.progress, self.spec, self.index = progress, spec, index
        self.state, self.epoch_t0, self.last_print, self.last_state = "starting", None, 0.0, None
        self.epochs_seen = False

    def __call__(self, ev: dict | None) -> None:
        p, now = self.progress, time.time()
        changed = False
        if ev is not None and ev["event"] == "start":
            self.epoch_t0, self.state, changed = now, f"epoch 1/{ev['epochs']}", True
        elif ev is not None and ev["event"] == "epoch":
            if self.epoch_t0 is not None:
                p.epoch_done(self.spec, now - self.epoch_t0, ev["epoch"])
                self.epochs_seen = True
            self.epoch_t0 = now
            nxt = ev["epoch"] + 1
            self.state, changed = (f"epoch {nxt}/{ev['epochs']}" if nxt <= ev["epochs"] else "final validation"), True
        elif ev is not None and ev["event"] == "bootstrap":
            self.state, changed = "bootstrap of the validation images", True
        if changed and not p.tty and self.state == self.last_state:
            changed = False
        if changed or (p.tty and now - self.last_print > 1.0):
            self.last_state, self.last_print = self.state, now
            p.show(p.line(self.index, self.spec, self.state))


class LocalBackend:
    """Sequential: ``next_result`` runs the oldest submitted run now and returns its result."""

    concurrency = 1

    def __init__(self, store: Store, data_yaml: str, progress: Progress):
        self.store, self.data_yaml, self.progress = store, data_yaml, progress
        self.queue: deque[tuple[RunSpec, Path | None]] = deque()
        self.index = 0

    def submit(self, spec: RunSpec, parent_weights: Path | None) -> None:
        self.queue.append((spec, parent_weights))

    def next_result(self) -> tuple[RunSpec, RunResult]:
        spec, parent = self.queue.popleft()
        self.index += 1
        run_dir = self.store.fresh_run_dir(spec.run_id)
        task = TrainTask(spec, str(run_dir), self.data_yaml, str(parent) if parent else None)
        write_task(task, run_dir / "task.json")
        watcher = _Watcher(self.progress, spec, self.index)
        t0 = time.time()
        rc = run_process(run_dir / "task.json", run_dir / LOG_FILE, spec.threads, on_event=watcher)
        wall = time.time() - t0
        res_file = run_dir / RESULT_FILE
        res = RunResult.from_dict(read_json(res_file)) if res_file.exists() else crash_result(
            spec, rc, run_dir / LOG_FILE, wall)
        res.fingerprint = spec.fingerprint  # the result of this spec, whatever the worker's version computed
        self.progress.run_done(spec, wall, watcher.epochs_seen)
        if res.ok:
            msg = f"done in {fmt_time(wall)}: mAP50 {res.map50:.4f}, mAP50-95 {res.map50_95:.4f}"
        else:
            msg = f"FAILED ({(res.error or '?')[:200]}); see {run_dir / LOG_FILE}"
        self.progress.show(self.progress.line(self.index, spec, msg), final=True)
        return spec, res

    def describe(self) -> str:
        return "one run at a time on this machine"

    def measure_costs(self, spec: CostSpec) -> CostReport:
        return run_cost_task(spec, self.store.out / "costs", self.data_yaml)

    def close(self) -> None:
        pass
