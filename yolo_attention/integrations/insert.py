"""Insert attention into an existing (e.g. pretrained) ultralytics model.

``add_attention(YOLO("yolov8n.pt"), "bam", at="neck")`` derives the model's new YAML with
:func:`yaml_gen.insert_attention`, builds it, and copies every tensor of the old model to
its renumbered place, so

* every pretrained tensor is kept (the transfer is checked: all of them, same values);
* ``model.yaml`` describes the new structure, so ultralytics' trainer, which rebuilds the
  model from ``model.yaml`` and loads the old weights by name, rebuilds exactly this model;
* with ``gated=True`` (default) each module is wrapped as ``x + gamma * (attn(x) - x)`` with
  ``gamma = 0`` (:class:`~yolo_attention.modules.gated.GatedAttention`): the detector's
  outputs are unchanged until training moves gamma. A per-channel blend works for every
  registered module; zero-initialising a last layer would not (SE and BAM gate
  multiplicatively, so a zeroed layer gives a gate of 0.5, not the identity). Residual blocks
  that already start as the identity (A2, GC, Non-local, Criss-Cross) are inserted ungated:
  inside a gate they would get no gradient (:func:`~yolo_attention.modules.gated.identity_start`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field


from .yaml_gen import insert_attention

__all__ = ["add_attention", "TransferReport"]


@dataclass
class TransferReport:
    transferred: int  # tensors copied from the old model
    total_old: int  # tensors in the old model
    new_tensors: list[str] = field(default_factory=list)  # keys only the new model has (the attention's)
    inserted_layers: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "transferred": self.transferred,
            "total_old": self.total_old,
            "new_tensors": len(self.new_tensors),
            "inserted_layers": list(self.inserted_layers),
        }


def _detection_model(model):
    from ultralytics.nn.tasks import BaseModel

    if isinstance(model, BaseModel):
        return None, model
    inner = getattr(model, "model", None)
    if isinstance(inner, BaseModel):
        return model, inner
    raise TypeError(
        f"add_attention: expected an ultralytics YOLO object or a model from ultralytics.nn.tasks, got "
        f"{type(model).__name__} (a YOLO object still holding a path?); load it with YOLO('model.pt' or '.yaml')"
    )


def _renumber_key(key: str, index_map: dict[int, int]) -> str:
    parts = key.split(".")
    if len(parts) > 2 and parts[0] == "model" and parts[1].isdigit():
        parts[1] = str(index_map[int(parts[1])])
    return ".".join(parts)


def add_attention(model, attn: str, at="neck", *, gated: bool = True, args=(), verbose: bool = False, **kwargs):
    """Insert ``attn`` into ``model`` (a ``YOLO`` object or its ``DetectionModel``) at ``at``.

    Keyword arguments other than the ones listed are the module's own hyper-parameters.
    Returns the same object, with its model replaced; the transfer report is stored as
    ``model.attention_insertion`` (a dict) on the new detection model.
    """
    yolo, det = _detection_model(model)
    if hasattr(det, "is_fused") and det.is_fused():
        raise ValueError("add_attention: the model is fused (Conv+BN merged); insert before fusing or reload it")
    old_yaml = det.yaml
    ins = insert_attention(old_yaml, attn, at, args, kwargs, gated)
    ch = old_yaml.get("channels", old_yaml.get("ch", 3))
    kwargs_model = {"ch": ch, "nc": old_yaml.get("nc"), "verbose": verbose}
    new = type(det)(copy.deepcopy(ins.yaml), **kwargs_model)

    old_sd, new_sd = det.state_dict(), new.state_dict()
    moved = {}
    for key, value in old_sd.items():
        new_key = _renumber_key(key, ins.index_map)
        target = new_sd.get(new_key)
        if target is None or target.shape != value.shape:
            raise RuntimeError(
                f"add_attention: tensor {key!r} has no counterpart {new_key!r} of shape {tuple(value.shape)} in the "
                "new model; the YAML of this model does not describe its layers (was it edited after building?)"
            )
        moved[new_key] = value
    new_sd.update(moved)
    new.load_state_dict(new_sd)
    for attr in ("names", "args", "pt_path", "task"):
        if hasattr(det, attr):
            setattr(new, attr, copy.deepcopy(getattr(det, attr)))
    param = next(det.parameters(), None)
    if param is not None:
        new.to(device=param.device, dtype=param.dtype)
    new.train(det.training)
    for p_new in new.parameters():
        p_new.requires_grad_(True)
    report = TransferReport(
        transferred=len(moved),
        total_old=len(old_sd),
        new_tensors=sorted(set(new_sd) - set(moved)),
        inserted_layers=ins.inserted,
    )
    new.attention_insertion = report.as_dict()

    if yolo is None:
        return new
    yolo.model = new
    if hasattr(yolo, "predictor"):
        yolo.predictor = None  # a cached predictor holds the old model
    if hasattr(yolo, "ckpt") and not yolo.ckpt:
        # ultralytics' own convention for a model loaded from an object (Model.load): with ckpt set, train()
        # rebuilds from model.yaml (our structure) and seeds it from this model instead of the original cfg path
        yolo.ckpt = {"model": new}
    return yolo
