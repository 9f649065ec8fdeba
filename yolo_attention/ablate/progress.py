"""One status line: which run and epoch, elapsed time and the time left (from finished epochs)."""

from __future__ import annotations

import statistics
import sys
import time

from .common import fmt_time
from .spec import RunSpec

__all__ = ["Progress"]


class Progress:
    """Estimates the time left from seconds per epoch (per stage) and per-run overhead seen so far."""

    def __init__(self, runs: list[RunSpec], concurrency: int = 1, stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.start = time.time()
        self.total = len(runs)
        self.left = {r.run_id: r for r in runs}
        self.concurrency = max(1, concurrency)
        self.epoch_s: dict[str, list[float]] = {}
        self.overhead_s: list[float] = []
        self.current_epochs_done = 0
        self.done = 0
        self._last_len = 0

    def _per_epoch(self, stage: str) -> float | None:
        times = self.epoch_s.get(stage) or [t for ts in self.epoch_s.values() for t in ts]
        return statistics.mean(times) if times else None

    def eta(self) -> float | None:
        if not self.left:
            return 0.0
        total = 0.0
        for i, r in enumerate(self.left.values()):
            per = self._per_epoch(r.stage.name)
            if per is None:
                return None
            epochs = r.stage.epochs - (self.current_epochs_done if i == 0 and self.concurrency == 1 else 0)
            overhead = statistics.mean(self.overhead_s) if self.overhead_s else 0.25 * per * r.stage.epochs
            total += max(0, epochs) * per + overhead
        return total / self.concurrency

    def epoch_done(self, spec: RunSpec, seconds: float, epoch: int) -> None:
        self.epoch_s.setdefault(spec.stage.name, []).append(seconds)
        self.current_epochs_done = epoch

    def run_done(self, spec: RunSpec, wall_s: float, epochs_seen: bool) -> None:
        """Account a finished run; without epoch events (remote runs) its wall time is spread over its epochs."""
        per = self._per_epoch(spec.stage.name)
        if not epochs_seen:
            self.epoch_s.setdefault(spec.stage.name, []).append(wall_s / max(1, spec.stage.epochs))
        elif per is not None:
            self.overhead_s.append(max(0.0, wall_s - spec.stage.epochs * per))
        self.left.pop(spec.run_id, None)
        self.current_epochs_done = 0
        self.done += 1

    def line(self, index: int, spec: RunSpec, state: str) -> str:
        left = self.eta()
        return (f"[{index}/{self.total}] {spec.run_id}: {state} | elapsed {fmt_time(time.time() - self.start)} | "
                f"left {'~' + fmt_time(left) if left is not None else 'estimating...'}")

    def show(self, text: str, final: bool = False) -> None:
        if self.tty:
            pad = max(0, self._last_len - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self._last_len = 0 if final else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
