"""What runs and measurements produce, as typed, JSON-round-trippable results."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

__all__ = ["EpochPoint", "RunResult", "VariantCost", "CostReport", "RESULT_FILE", "MATCHES_FILE"]

RESULT_FILE = "result.json"
MATCHES_FILE = "matches.npz"


def _known(cls, d: dict) -> dict:
    """Keep the keys ``cls`` has (results written by a newer version load in an older one)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True)
class EpochPoint:
    """Validation after one epoch (ultralytics' own numbers, unrounded)."""

    epoch: int
    map50: float
    map50_95: float


@dataclass
class RunResult:
    """The outcome of one training run (``result.json`` in its run directory)."""

    run_id: str
    variant: str  # Variant.name
    seed: int
    stage: str
    fingerprint: str
    status: str  # "ok" or "failed"
    map50: float | None = None  # validation of the final weights (the last epoch; no best-epoch selection)
    map50_95: float | None = None
    curve: list[EpochPoint] = field(default_factory=list)
    matches: str | None = None  # file in the run directory with the per-image matches of that validation
    bootstrap: str | None = None  # file with its mAP on the shared bootstrap resamples (stats.Replicates)
    weights: str | None = None  # the final weights, relative to the run directory
    train_s: float | None = None
    wall_s: float | None = None
    node: str | None = None
    threads: int | None = None  # torch's CPU threads while it trained
    error: str | None = None
    error_kind: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunResult:
        d = _known(cls, d)
        d["curve"] = [EpochPoint(**p) for p in d.get("curve") or []]
        return cls(**d)

    @classmethod
    def failed(cls, spec, error: str, kind: str, wall_s: float | None = None, node: str | None = None,
               traceback: str | None = None) -> RunResult:
        return cls(run_id=spec.run_id, variant=spec.variant.name, seed=spec.seed, stage=spec.stage.name,
                   fingerprint=spec.fingerprint, status="failed", error=error, error_kind=kind, wall_s=wall_s,
                   node=node, traceback=traceback)


@dataclass(frozen=True)
class VariantCost:
    """One variant's costs, measured side by side with the others (medians over the repeats)."""

    variant: str
    params: int | None = None
    gflops: float | None = None  # every operation (yolo_attention.flops), fused model, batch 1
    gflops_matmul: float | None = None
    gflops_ultralytics: float | None = None  # convolutions and matrix products only
    latency_b1_ms: float | None = None
    latency_batch_ms: float | None = None
    train_images_per_s: float | None = None  # forward, loss, backward and optimizer step at the training batch
    train_peak_mem_mb: float | None = None  # peak tensor memory of one training step
    error: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> VariantCost:
        return cls(**_known(cls, d))


@dataclass
class CostReport:
    """All variants' costs from one process (``costs.json``)."""

    fingerprint: str
    device: str  # named, e.g. "NVIDIA H200" or "AMD EPYC 7B13 (CPU, 2 threads)"
    imgsz: int
    batch: int
    repeats: int
    variants: list[VariantCost]
    machine: dict = field(default_factory=dict)
    memory_kind: str = ""
    wall_s: float | None = None

    def get(self, name: str) -> VariantCost | None:
        return next((c for c in self.variants if c.variant == name), None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CostReport:
        d = _known(cls, d)
        d["variants"] = [VariantCost.from_dict(v) for v in d["variants"]]
        return cls(**d)
