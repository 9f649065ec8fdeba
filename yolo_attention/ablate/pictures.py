"""``ablate --explain N``: each variant's detections, CAMs and attention next to the baseline's.

After every run and the costs, N validation images are picked (sorted by path, evenly spaced, so
every call picks the same ones) and, for each variant, ``yolo_attention.explain.explain_models``
draws the baseline's weights and the variant's side by side under ``explain/<variant>/``. The
weights are each run's final ``last.pt`` (the weights whose mAP the table reports) of the first
seed whose run succeeded and whose weights are in ``--out``. With only the baseline in the sweep
it is drawn alone; without a usable baseline every variant is drawn alone, with a note.

Nothing here fails the sweep: a variant without weights, or whose pictures fail, gets a note.

Resume: ``explain/<variant>/explain.json`` records the SHA-256 of the checkpoints and images
drawn and the options. A folder whose record matches and whose pictures all exist is kept as it
is; any other is emptied and drawn again.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .common import read_json, write_json
from .results import RunResult
from .spec import Variant
from .sweep import Store, Sweep

__all__ = ["DEFAULT_IMAGES", "RECORD", "Pictures", "Drawn", "Checkpoint", "default_images", "explained_runs",
           "val_images", "pick_images", "draw_pictures"]

DEFAULT_IMAGES = 4  # --explain's default on the generated dataset
RECORD = "explain.json"
_FORMAT = 1  # of RECORD; another format is drawn again


class PicturesUnavailable(Exception):
    """No validation images can be read on this machine (the sweep's numbers stand without pictures)."""


class Checkpoint(NamedTuple):
    """The weights a variant is drawn with, or why it has none."""

    variant: Variant
    label: str  # the model's name in the pictures
    path: Path | None
    why_not: str = ""


@dataclass(frozen=True)
class Drawn:
    """One variant's pictures (``folder`` = ``explain/<variant>/``), or the note saying why there are none."""

    variant: Variant
    label: str
    folder: Path | None
    pictures: tuple = ()  # yolo_attention.explain.Picture, absolute paths
    notes: tuple[str, ...] = ()  # explain's notes, each naming its model
    reused: bool = False  # kept from an earlier call (same checkpoints, images and options)
    why_not: str = ""  # why there are no pictures

    @property
    def report(self) -> Path | None:
        p = self.folder / "report.html" if self.folder else None
        return p if p is not None and p.is_file() else None


@dataclass
class Pictures:
    """What ``--explain`` drew: the images, one entry per variant drawn, and notes for the whole step."""

    images: list[Path] = field(default_factory=list)
    variants: list[Drawn] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    beside: str | None = None  # the baseline's name in the pictures, when the variants are drawn next to it


def default_images(generated: bool) -> int:
    """4 images on the generated dataset; 0 with a user's --data (opt in: see docs/ablate-report.md)."""
    return DEFAULT_IMAGES if generated else 0


def explained_runs(sweep: Sweep) -> frozenset[str]:
    """The runs whose weights ``--explain`` draws when every seed succeeds: every variant's first seed.
    (With --ray only these come back unless --fetch-weights.)"""
    first = sweep.seeds[0]
    return frozenset(s.run_id for s in sweep.plan() if s.stage.name == "train" and s.seed == first)


# ----------------------------------------------------------------------------- images


def _listed(txt: Path) -> list[Path]:
    """A ``.txt`` list of images; ``./`` lines are relative to the list's folder (as ultralytics reads them)."""
    lines = [s.strip() for s in txt.read_text().splitlines() if s.strip()]
    return [txt.parent / s[2:] if s.startswith("./") else Path(s) for s in lines]


def val_images(data_yaml: str | Path) -> list[Path]:
    """The validation images of an ultralytics data YAML (folders, read recursively, ``.txt`` lists or files),
    sorted; the paths are resolved by ultralytics' ``check_det_dataset``, as for training."""
    from ultralytics.data.utils import check_det_dataset

    from ..explain.sources import IMAGE_SUFFIXES

    try:
        d = check_det_dataset(str(data_yaml), autodownload=False)
    except Exception as e:  # noqa: BLE001  (ultralytics raises several types for an unusable YAML)
        msg = " ".join(str(e).split())
        raise PicturesUnavailable(f"the data YAML {data_yaml} cannot be read here: {msg}") from None
    if not d.get("val"):
        raise PicturesUnavailable(f"the data YAML {data_yaml} names no 'val' images")
    files: list[Path] = []
    for entry in d["val"] if isinstance(d["val"], list) else [d["val"]]:
        target = Path(entry)
        if target.is_dir():
            files += [f for f in target.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
        elif target.suffix == ".txt":
            files += [f for f in _listed(target) if f.is_file()]
        else:
            files.append(target)
    if not files:
        raise PicturesUnavailable(f"no validation images found from {data_yaml}")
    return sorted(set(files))


def pick_images(files: list[Path], n: int) -> list[Path]:
    """``n`` of ``files`` evenly spaced from the first to the last (all of them if there are fewer)."""
    if n >= len(files):
        return list(files)
    if n == 1:
        return [files[0]]
    return [files[round(i * (len(files) - 1) / (n - 1))] for i in range(n)]


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint(v: Variant, label: str, sweep: Sweep, results: dict[str, RunResult], store: Store) -> Checkpoint:
    runs = [results[s.run_id] for s in sweep.plan()
            if s.stage.name == "train" and s.variant == v and s.run_id in results]
    ok = [r for r in runs if r.ok]
    if not ok:
        return Checkpoint(v, label, None, "its runs failed" if runs else "it has no finished run")
    for r in ok:
        w = store.weights(r)
        if w is not None:
            return Checkpoint(v, label if r.seed == sweep.seeds[0] else f"{label} (seed {r.seed})", w)
    return Checkpoint(v, label, None, "its weights are not in --out (with --ray, --explain brings back the first "
                                      "seed's weights; --fetch-weights brings back every run's)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- drawing


def _identity(models: list[Checkpoint], images: list[Path], options) -> dict:
    return {"format": _FORMAT, "models": [[c.label, _sha256(c.path)] for c in models],
            "images": [[p.name, _sha256(p)] for p in images],
            "options": {"imgsz": options.imgsz, "conf": options.conf, "method": options.method}}


def _kept(folder: Path, ident: dict, v: Variant, label: str) -> Drawn | None:
    """The pictures of an earlier call, if they were drawn from the same checkpoints, images and options."""
    from ..explain import Picture

    rec = folder / RECORD
    if not rec.is_file():
        return None
    try:
        d = read_json(rec)
        pictures = tuple(Picture(folder / p["path"], p["title"], p["group"]) for p in d["pictures"])
    except (OSError, ValueError, KeyError, TypeError):  # a damaged record: drawn again
        return None
    if d.get("identity") != ident or not pictures or not all(p.path.is_file() for p in pictures):
        return None
    return Drawn(v, label, folder, pictures, tuple(d.get("notes", [])), reused=True)


def _record(drawn: Drawn, ident: dict) -> None:
    pics = [{"path": str(Path(p.path).relative_to(drawn.folder)), "title": p.title, "group": p.group}
            for p in drawn.pictures]
    write_json(drawn.folder / RECORD, {"identity": ident, "pictures": pics, "notes": list(drawn.notes)})


def _draw(folder: Path, ck: Checkpoint, base, images: list[Path], options) -> Drawn:
    """``ck``'s pictures next to ``base`` (a loaded baseline Detector, or None to draw it alone)."""
    from ..explain import explain_models
    from ..explain.detectors import load_detector

    det = load_detector(str(ck.path), ck.label, options.device)
    models = [base, det] if base is not None else [det]
    result = explain_models(models, images, folder, options)
    return Drawn(ck.variant, ck.label, folder, tuple(result.pictures), tuple(result.notes))


class _Baseline(NamedTuple):
    checkpoint: Checkpoint | None
    detector: object  # yolo_attention.explain.Detector, or None
    note: str


def _load_baseline(ck: Checkpoint | None, options) -> _Baseline:
    if ck is None:
        return _Baseline(None, None, "the sweep has no baseline ('none'): each variant is drawn alone")
    if ck.path is None:
        return _Baseline(None, None, f"the baseline has no pictures ({ck.why_not}): each variant is drawn alone")
    from ..explain.detectors import load_detector

    try:
        return _Baseline(ck, load_detector(str(ck.path), ck.label, options.device), "")
    except Exception as e:  # noqa: BLE001  (pictures never fail the sweep)
        return _Baseline(None, None, f"the baseline cannot be loaded ({type(e).__name__}: {e}): each variant is "
                                     "drawn alone")


def _one(out: Path, ck: Checkpoint, base: _Baseline, images: list[Path], options) -> Drawn:
    folder = out / "explain" / ck.variant.dirname
    if ck.path is None:
        return Drawn(ck.variant, ck.label, None, why_not=ck.why_not)
    pair = [base.checkpoint, ck] if base.checkpoint is not None else [ck]
    ident = _identity(pair, images, options)
    kept = _kept(folder, ident, ck.variant, ck.label)
    if kept is not None:
        return kept
    if folder.exists():
        shutil.rmtree(folder)  # pictures of other checkpoints or images: none of them may stay
    try:
        drawn = _draw(folder, ck, base.detector if len(pair) == 2 else None, images, options)
    except Exception as e:  # noqa: BLE001  (pictures never fail the sweep)
        shutil.rmtree(folder, ignore_errors=True)  # no half-drawn folder
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        return Drawn(ck.variant, ck.label, None, why_not=f"{type(e).__name__}: {msg}")
    _record(drawn, ident)
    return drawn


def _device(device: str):
    import torch

    d = str(device).lower()
    if d in ("cpu", "mps") or not torch.cuda.is_available():
        return torch.device("cpu")
    first = d.split(",")[0].removeprefix("cuda:")
    return torch.device(f"cuda:{first}" if first.isdigit() else "cuda:0")


def _options(sweep: Sweep, n: int):
    from ..explain import ExplainOptions

    return ExplainOptions(imgsz=sweep.train.imgsz, device=_device(sweep.device), report_images=n)


def draw_pictures(out: Path, sweep: Sweep, results: dict[str, RunResult], store: Store, data_yaml: str, n: int,
                  log: Callable[[str], None] = print) -> Pictures:
    """Draw every variant next to the baseline on ``n`` validation images, under ``out/explain/``."""
    import torch

    try:
        images = pick_images(val_images(data_yaml), n)
    except PicturesUnavailable as e:
        return Pictures(notes=[f"no pictures: {e}"])
    qualified = len(sweep.places) > 1
    cks = [_checkpoint(v, v.label(qualified), sweep, results, store) for v in sweep.variants]
    others = [c for c in cks if not c.variant.is_baseline]
    options = _options(sweep, n)
    todo = others or cks  # only the baseline in the sweep: it is drawn alone
    log(f"drawing pictures of {len(images)} validation image(s) for {len(todo)} variant(s) under {out / 'explain'} "
        f"({options.device}) ...")
    threads = torch.get_num_threads()
    if sweep.threads:
        torch.set_num_threads(sweep.threads)
    try:
        base_ck = next((c for c in cks if c.variant.is_baseline), None)
        base = _load_baseline(base_ck, options) if others else _Baseline(None, None, "")
        drawn = []
        for ck in todo:
            t = time.perf_counter()
            d = _one(out, ck, base, images, options)
            took = f" in {time.perf_counter() - t:.1f} s"
            log(f"  {ck.label}: " + ("kept (same checkpoints and images)" if d.reused else
                                     f"{len(d.pictures)} picture(s){took}" if d.pictures else
                                     f"no pictures: {d.why_not}"))
            drawn.append(d)
    finally:
        torch.set_num_threads(threads)
    return Pictures(images, drawn, [base.note] if base.note else [],
                    base.checkpoint.label if base.checkpoint is not None else None)
