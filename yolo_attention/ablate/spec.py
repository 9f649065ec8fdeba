"""What an ablation computes, as typed, JSON-round-trippable specs.

* :class:`Variant`: one row of the comparison (a module with its keywords at one place, or
  the baseline ``none``).
* :class:`DataSpec`: the dataset (a user's data YAML, or the generated one with the options
  that regenerate it byte for byte on another machine and the hash that checks it).
* :class:`Stage`: how one training stage trains (epochs, image size, batch, ultralytics
  arguments). A sweep has a ``train`` stage for the variants and, optionally, a ``base`` stage
  trained once per seed that every variant then fine-tunes from.
* :class:`RunSpec`: one training run = a variant, a seed, a stage and where it starts from
  (the model definition, a user's checkpoint, or the final weights of a ``parent`` run).
* :class:`CostSpec`: the side-by-side cost measurement of all variants (one process).

Specs hold no paths of the machine that runs them: a backend turns a spec into a task with a
run directory, a data YAML and the parent's weights on that machine (see ``worker.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .common import UsageError

__all__ = ["BASELINE", "Variant", "parse_variants", "DataSpec", "Stage", "RunSpec", "CostSpec", "fingerprint"]

BASELINE = "none"


def fingerprint(obj: Any) -> str:
    """A short, stable hash of a JSON-able object (what a finished run or measurement was made with)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: a registered module (or ``none``), its keywords and its place."""

    spec: str  # as written, e.g. "bra:num_heads=4"
    attn: str  # "none" or the canonical registry name
    kwargs: dict = field(default_factory=dict, hash=False, compare=False)
    place: str | None = None  # where it is inserted (backbone, neck, sppf, "4,6"); None for the baseline

    @property
    def is_baseline(self) -> bool:
        return self.attn == BASELINE

    @property
    def name(self) -> str:
        """Unique id: ``none``, ``se@neck``, ``bra:num_heads=4@4,6``."""
        return self.spec if self.is_baseline else f"{self.spec}@{self.place}"

    def label(self, qualified: bool = True) -> str:
        """Display name; the place is left out when the whole sweep has one place."""
        return f"{self.spec} @ {self.place}" if qualified and not self.is_baseline else self.spec

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.@-]+", "-", self.name).strip("-") or "variant"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Variant:
        return cls(d["spec"], d["attn"], dict(d.get("kwargs") or {}), d.get("place"))


def _parse_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _parse_module(item: str) -> tuple[str, dict]:
    """``"bra:num_heads=4:n_win=4"`` -> ("bra", {"num_heads": 4, "n_win": 4})."""
    name, *kv = item.split(":")
    kwargs = {}
    for pair in kv:
        if "=" not in pair:
            raise UsageError(f"--attn: {item!r}: module keywords are written name:key=value[:key=value]")
        k, v = pair.split("=", 1)
        kwargs[k.strip()] = _parse_value(v.strip())
    return name.strip(), kwargs


def parse_variants(text: str, places: list[str] | tuple[str, ...] = ("neck",)) -> list[Variant]:
    """``"none,se,bra:num_heads=4"`` x places -> variants: the baseline once, every module at every place.

    Raises UsageError for unknown modules, keywords on the baseline or a repeated variant.
    """
    from ..registry import get_attention_info

    places = list(places)
    if not places:
        raise UsageError("--at: give at least one place, e.g. --at neck")
    out, seen = [], set()
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, kwargs = _parse_module(item)
        if name.lower() in ("none", "baseline"):
            if kwargs:
                raise UsageError(f"--attn: {item!r}: the baseline 'none' takes no keywords")
            candidates = [Variant(item, BASELINE)]
        else:
            try:
                attn = get_attention_info(name).name
            except KeyError as e:
                raise UsageError(f"--attn: {e.args[0]} (see `yolo-attention list`; load your own with --import)")
            candidates = [Variant(item, attn, kwargs, place) for place in places]
        for v in candidates:
            if v.dirname in seen:
                what = "the baseline" if v.is_baseline else f"variant {v.name!r}"
                raise UsageError(f"--attn/--at: {what} is given twice")
            seen.add(v.dirname)
            out.append(v)
    if not out:
        raise UsageError("--attn: give at least one variant, e.g. none,se")
    return out


# ----------------------------------------------------------------------------- data and stages


@dataclass(frozen=True)
class DataSpec:
    """The dataset: a user's data YAML, or the generated dataset (regenerated on each worker)."""

    yaml: str | None = None  # a user's data YAML (absolute path; must be readable where the runs run)
    synthetic: dict | None = field(default=None, hash=False)  # generate_synthetic keywords of a generated dataset
    digest: str | None = None  # files hash (synthetic manifest) that a regenerated copy must match
    nc: int | None = None  # number of classes, when known on the driver
    desc: str = ""

    @property
    def generated(self) -> bool:
        return self.synthetic is not None

    def identity(self) -> dict:
        """What a run's numbers depend on (never a machine-local path of generated data)."""
        if self.generated:
            return {"synthetic": self.synthetic, "digest": self.digest}
        return {"yaml": self.yaml}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataSpec:
        return cls(**d)


@dataclass(frozen=True)
class Stage:
    """How one training stage trains: ``base`` (once per seed) or ``train`` (every variant)."""

    name: str
    epochs: int
    imgsz: int
    batch: int
    train_args: dict = field(default_factory=dict, hash=False)  # ultralytics train() keywords
    val_every: int = 1  # validate every N epochs (the learning curve); the last epoch always

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Stage:
        return cls(d["name"], d["epochs"], d["imgsz"], d["batch"], dict(d.get("train_args") or {}),
                   d.get("val_every", 1))


# ----------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunSpec:
    """One training run: ``variant`` trained with ``seed`` in ``stage``.

    It starts from ``model`` (a family such as ``yolov8n``, a YAML, or a checkpoint ``.pt``), or,
    when ``parent`` is set, from the final weights of that run (the shared base of a seed). A
    run that starts from weights gets its attention inserted as the identity (gated, gate 0);
    one trained from a model definition gets it as a plain YAML row.
    """

    variant: Variant
    seed: int
    stage: Stage
    model: str
    data: DataSpec
    device: str = "cpu"
    parent: str | None = None  # run_id of the run whose final weights this run starts from
    parent_fingerprint: str | None = None
    threads: int | None = None  # torch threads in the worker (None: torch's default); not part of the identity
    imports: tuple[str, ...] = ()  # modules (dotted names or .py files) that register more attention

    @property
    def run_id(self) -> str:
        return f"{'base' if self.stage.name == 'base' else self.variant.dirname}/seed{self.seed}"

    @property
    def from_weights(self) -> bool:
        """True when the run starts from trained weights (so attention is inserted gated)."""
        return self.parent is not None or str(self.model).endswith(".pt")

    @property
    def fingerprint(self) -> str:
        return fingerprint({
            "variant": self.variant.to_dict(), "seed": self.seed, "stage": self.stage.to_dict(),
            "model": self.model, "data": self.data.identity(), "device": self.device,
            "parent": self.parent_fingerprint,
        })  # not threads nor --import: adding a module for a new variant must not redo the others

    def to_dict(self) -> dict:
        d = asdict(self)
        d["imports"] = list(self.imports)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        return cls(
            variant=Variant.from_dict(d["variant"]), seed=d["seed"], stage=Stage.from_dict(d["stage"]),
            model=d["model"], data=DataSpec.from_dict(d["data"]), device=d["device"], parent=d.get("parent"),
            parent_fingerprint=d.get("parent_fingerprint"), threads=d.get("threads"),
            imports=tuple(d.get("imports") or ()),
        )


@dataclass(frozen=True)
class CostSpec:
    """Measure every variant's cost side by side in one process (see ``costs.py``)."""

    variants: tuple[Variant, ...]
    model: str
    gated: bool  # variants are built as they were trained: inserted gated into built weights, or as YAML rows
    data: DataSpec
    imgsz: int
    batch: int
    device: str = "cpu"
    repeats: int = 5  # interleaved rounds; medians over them
    threads: int | None = None
    imports: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        d = self.to_dict()
        d.pop("threads")
        d.pop("imports")
        d["data"] = self.data.identity()
        return fingerprint(d)

    def to_dict(self) -> dict:
        return {
            "variants": [v.to_dict() for v in self.variants], "model": self.model, "gated": self.gated,
            "data": self.data.to_dict(), "imgsz": self.imgsz, "batch": self.batch, "device": self.device,
            "repeats": self.repeats, "threads": self.threads, "imports": list(self.imports),
        }

    @classmethod
    def from_dict(cls, d: dict) -> CostSpec:
        return cls(
            variants=tuple(Variant.from_dict(v) for v in d["variants"]), model=d["model"], gated=d["gated"],
            data=DataSpec.from_dict(d["data"]), imgsz=d["imgsz"], batch=d["batch"], device=d["device"],
            repeats=d["repeats"], threads=d.get("threads"), imports=tuple(d.get("imports") or ()),
        )
