"""A sweep: its settings, the runs they plan, the ``--out`` folder that keeps them, and the loop
that hands runs to a backend in dependency order.

Semantics, the same on every backend:

* a run whose ``result.json`` has its fingerprint is finished and never repeated (failed ones
  only with ``retry_failed``); a run interrupted half-way has no result and starts again;
* a run whose parent (its seed's base) failed is recorded as failed without running;
* a run that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .common import read_json, write_json
from .results import RESULT_FILE, CostReport, RunResult
from .spec import BASELINE, CostSpec, DataSpec, RunSpec, Stage, Variant, fingerprint

__all__ = ["Sweep", "Store", "Backend", "pending", "execute"]


@dataclass(frozen=True)
class Sweep:
    """Everything a sweep is made of (written to ``ablate.json``)."""

    model: str
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    data: DataSpec
    train: Stage
    base: Stage | None = None  # trained once per seed from ``model``; every variant then fine-tunes from it
    device: str = "cpu"
    threads: int | None = None
    imports: tuple[str, ...] = ()
    places: tuple[str, ...] = ("neck",)

    @property
    def gated(self) -> bool:
        """Variants start from trained weights (a base stage or a .pt), so attention goes in as the identity."""
        return self.base is not None or str(self.model).endswith(".pt")

    def settings(self) -> dict:
        """What every run shares; an ``--out`` made with other settings is refused (variants, places, seeds and
        --import modules may be added)."""
        return {"model": self.model, "data": self.data.synthetic if self.data.generated else self.data.yaml,
                "train": self.train.to_dict(), "base": self.base.to_dict() if self.base else None,
                "device": self.device}

    def plan(self) -> list[RunSpec]:
        """Base runs first (one per seed), then every variant x seed, variant by variant."""
        common = dict(model=self.model, data=self.data, device=self.device, threads=self.threads, imports=self.imports)
        runs, parents = [], {}
        if self.base is not None:
            for s in self.seeds:
                base = RunSpec(Variant(BASELINE, BASELINE), s, self.base, **common)
                parents[s] = base
                runs.append(base)
        for v in self.variants:
            for s in self.seeds:
                p = parents.get(s)
                runs.append(RunSpec(v, s, self.train, parent=p.run_id if p else None,
                                    parent_fingerprint=p.fingerprint if p else None, **common))
        return runs

    def cost_spec(self, repeats: int = 5) -> CostSpec:
        return CostSpec(self.variants, self.model, self.gated, self.data, self.train.imgsz, self.train.batch,
                        self.device, repeats, self.threads, self.imports)

    def to_dict(self) -> dict:
        return {"model": self.model, "variants": [v.to_dict() for v in self.variants], "seeds": list(self.seeds),
                "places": list(self.places), "data": self.data.to_dict(), "train": self.train.to_dict(),
                "base": self.base.to_dict() if self.base else None, "device": self.device, "threads": self.threads,
                "imports": list(self.imports), "settings_fingerprint": fingerprint(self.settings())}


@dataclass
class Store:
    """The ``--out`` folder: ``runs/<variant>/seed<k>/`` (``runs/base/seed<k>/`` for the base stage)."""

    out: Path
    results: dict[str, RunResult] = field(default_factory=dict)

    def run_dir(self, run_id: str) -> Path:
        return self.out / "runs" / run_id

    def fresh_run_dir(self, run_id: str) -> Path:
        d = self.run_dir(run_id)
        if d.exists():
            shutil.rmtree(d)  # an interrupted or retried run starts again from scratch
        d.mkdir(parents=True)
        return d

    def load(self, spec: RunSpec) -> RunResult | None:
        """The finished result of ``spec``, if any (same fingerprint; a base run must still have its weights)."""
        p = self.run_dir(spec.run_id) / RESULT_FILE
        if not p.exists():
            return None
        res = RunResult.from_dict(read_json(p))
        if res.fingerprint != spec.fingerprint:
            return None
        if res.ok and spec.stage.name == "base" and self.weights(res) is None:
            return None  # its children need the weights
        return res

    def write(self, res: RunResult) -> None:
        self.run_dir(res.run_id).mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir(res.run_id) / RESULT_FILE, res.to_dict())
        self.results[res.run_id] = res

    def weights(self, res: RunResult) -> Path | None:
        p = self.run_dir(res.run_id) / res.weights if res.weights else None
        return p if p is not None and p.is_file() else None

    def load_costs(self, spec: CostSpec) -> CostReport | None:
        p = self.out / "costs.json"
        if not p.exists():
            return None
        report = CostReport.from_dict(read_json(p))
        return report if report.fingerprint == spec.fingerprint else None

    def write_costs(self, report: CostReport) -> None:
        write_json(self.out / "costs.json", report.to_dict())


class Backend(Protocol):
    """Where runs run. ``submit`` queues a run; ``next_result`` returns one that finished (any order)."""

    concurrency: int

    def submit(self, spec: RunSpec, parent_weights: Path | None) -> None: ...

    def next_result(self) -> tuple[RunSpec, RunResult]: ...

    def measure_costs(self, spec: CostSpec) -> CostReport: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def pending(runs: list[RunSpec], store: Store, retry_failed: bool = False,
            log: Callable[[str], None] = print) -> tuple[dict[str, RunResult], list[RunSpec]]:
    """Split ``runs`` into finished results (by run_id) and the runs still to run."""
    finished, todo = {}, []
    for spec in runs:
        res = store.load(spec)
        if res is not None and (res.ok or not retry_failed):
            finished[spec.run_id] = store.results[spec.run_id] = res
            log(f"skipped {spec.run_id}: already finished ({res.status}) in {store.run_dir(spec.run_id)}")
        else:
            todo.append(spec)
    return finished, todo


def execute(todo: list[RunSpec], finished: dict[str, RunResult], store: Store,
            backend: Backend) -> dict[str, RunResult]:
    """Run ``todo``, parents before children; returns every run's result (``finished`` included) by run_id."""
    results = dict(finished)
    waiting, in_flight = list(todo), 0
    while waiting or in_flight:
        for spec in list(waiting):
            parent = results.get(spec.parent) if spec.parent else None
            if spec.parent and parent is None:
                continue  # its parent has not finished yet
            waiting.remove(spec)
            if parent is not None and not parent.ok:
                res = RunResult.failed(spec, f"its base run {parent.run_id} failed: {parent.error}", "base run failed")
                store.write(res)
                results[spec.run_id] = res
                continue
            backend.submit(spec, store.weights(parent) if parent else None)
            in_flight += 1
        if not in_flight:
            if waiting:  # cannot happen with plan()'s runs: every parent is planned before its children
                raise RuntimeError(f"runs wait for parents that are not planned: {[s.run_id for s in waiting]}")
            break
        spec, res = backend.next_result()
        in_flight -= 1
        store.write(res)
        results[spec.run_id] = res
    return results
