"""Building a variant's detector, and checking every variant builds before anything trains."""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

from .common import UsageError
from .spec import BASELINE, Variant

__all__ = ["is_checkpoint", "build_variant", "check_variants", "data_nc", "import_user_modules"]


def is_checkpoint(model: str) -> bool:
    return str(model).endswith(".pt")


def import_user_modules(items) -> None:
    """Import modules that register more attention (a dotted name or a .py file)."""
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


def data_nc(data_yaml: str) -> int | None:
    """Number of classes of a data YAML (``nc`` or the length of ``names``); None if unreadable."""
    import yaml

    try:
        d = yaml.safe_load(Path(data_yaml).read_text())
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(d, dict):
        return None
    names = d.get("names")
    return int(d["nc"]) if "nc" in d else (len(names) if names else None)


def _baseline_cfg(model: str) -> str:
    """The YAML the baseline builds from: a YAML path, our shipped config (YOLOv7) or ultralytics' name."""
    from ..cfg import CFG_DIR
    from ..integrations.yaml_gen import load_model_yaml

    if str(model).endswith((".yaml", ".yml")):
        return str(model)
    _, stem = load_model_yaml(model)
    shipped = CFG_DIR / f"{stem}.yaml"  # configs that ship with yolo-attention are not ultralytics'
    return str(shipped) if shipped.exists() else f"{stem}.yaml"


def build_variant(model: str, v: Variant, nc: int | None, *, gated: bool = False, weights: str | None = None,
                  yaml_out: Path | None = None):
    """Build ``v``'s detector. Returns ``(yolo_or_None, DetectionModel, what to hand ultralytics' YOLO())``.

    * ``weights`` (a checkpoint, or ``model`` itself a ``.pt``): load it and insert the attention
      gated, so the detector starts as the loaded one;
    * ``gated`` without weights: the model definition built as is, the attention then inserted
      gated (the architecture a fine-tuned variant has: used to measure its cost);
    * otherwise the attention is a row of a generated YAML, trained from scratch.
    """
    from ..integrations.insert import add_attention

    weights = weights or (model if is_checkpoint(model) else None)
    if weights is not None:
        from ultralytics import YOLO

        yolo = YOLO(weights)
        if not v.is_baseline:
            add_attention(yolo, v.attn, at=v.place, gated=True, **v.kwargs)
        return yolo, yolo.model, yolo
    from ultralytics.nn.tasks import DetectionModel

    if v.is_baseline or gated:
        cfg = _baseline_cfg(model)
        det = DetectionModel(cfg, nc=nc, verbose=False)
        if not v.is_baseline:
            det = add_attention(det, v.attn, at=v.place, gated=True, **v.kwargs)
        return None, det, cfg
    from ..integrations.yaml_gen import make_attention_yaml

    if yaml_out is None:
        yaml_out = Path(tempfile.mkdtemp(prefix="ablate-")) / f"{Path(str(model)).stem}-{v.dirname}.yaml"
    cfg = str(make_attention_yaml(model, v.attn, v.place, out=yaml_out, kwargs=v.kwargs))
    return None, DetectionModel(cfg, nc=nc, verbose=False), cfg


def _check_model(model: str, variants: list[Variant]) -> None:
    from ..integrations.yaml_gen import insertion_points, load_model_yaml

    if is_checkpoint(model):
        if not Path(model).exists():
            raise UsageError(f"--model: checkpoint {model} does not exist (nothing is downloaded here)")
        return
    p = Path(str(model))
    if p.suffix in (".yaml", ".yml") and not p.exists():
        raise UsageError(f"--model: model YAML {model} does not exist")
    try:
        d, _ = load_model_yaml(model)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"--model: {e}") from None
    for place in dict.fromkeys(v.place for v in variants if not v.is_baseline):
        try:
            insertion_points(d, place)
        except ValueError as e:
            raise UsageError(f"--at: {e}") from None


def check_variants(model: str, variants: list[Variant], nc: int | None, imgsz: int, gated: bool = False) -> None:
    """Build every variant as its runs will and run it on a dummy image: any failure is a UsageError."""
    import torch

    _check_model(model, variants)
    with tempfile.TemporaryDirectory(prefix="ablate-check-") as tmp:
        for v in variants:
            try:
                yaml_out = Path(tmp) / f"{Path(str(model)).stem}-{v.dirname}.yaml"
                _, det, _ = build_variant(model, v, nc, gated=gated, yaml_out=yaml_out)
                det.eval()
                with torch.no_grad():
                    det(torch.zeros(1, 3, imgsz, imgsz))
            except UsageError:
                raise
            except Exception as e:  # noqa: BLE001
                msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                if v.attn == BASELINE:
                    raise UsageError(f"--model: cannot build {model}: {type(e).__name__}: {msg}") from None
                raise UsageError(
                    f"--attn: variant {v.spec!r} cannot be built into {model} at {v.place!r} (imgsz {imgsz}): "
                    f"{type(e).__name__}: {msg}. Change its keywords (name:key=value), --at or --imgsz, or drop it."
                ) from None
