"""Honest cost of a detector: our FLOP count beside ultralytics' own GFLOPs figure.

ultralytics' GFLOPs (thop) counts convolutions, linear layers and matrix products only; the
softmaxes, top-k, gathers and elementwise gates of attention modules are free to it.
:func:`model_cost` reports both, plus each attention layer's own share.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch.nn as nn

from ..registry import list_attention

__all__ = ["LayerCost", "ModelCost", "ultralytics_gflops", "model_cost", "load_detection_model", "main"]


@dataclass
class LayerCost:
    index: int
    type: str
    params: int
    flops: int  # all operations
    flops_matmul: int  # matrix products and convolutions only (what thop-like counters see)


@dataclass
class ModelCost:
    imgsz: int
    params: int
    flops: int
    flops_matmul: int
    ultralytics_gflops: float
    ultralytics_method: str
    attention_layers: list[LayerCost] = field(default_factory=list)

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def as_dict(self) -> dict:
        d = asdict(self)
        d["gflops"] = self.gflops
        return d

    def table(self) -> str:
        lines = [
            f"image {self.imgsz}x{self.imgsz}, batch 1: {self.params:,} parameters",
            f"  GFLOPs, all operations (yolo-attention):        {self.flops / 1e9:9.3f}",
            f"  GFLOPs, matmul/conv only (torch's formulas):    {self.flops_matmul / 1e9:9.3f}",
            f"  GFLOPs, ultralytics' own figure ({self.ultralytics_method}): {self.ultralytics_gflops:9.3f}",
        ]
        if self.attention_layers:
            lines += ["", f"{'layer':>5}  {'module':<28}{'params':>10}{'GFLOPs all':>12}{'matmul only':>13}{'missed':>8}"]
            for c in self.attention_layers:
                missed = 100 * (c.flops - c.flops_matmul) / max(c.flops, 1)
                lines.append(
                    f"{c.index:>5}  {c.type:<28}{c.params:>10,}{c.flops / 1e9:>12.4f}{c.flops_matmul / 1e9:>13.4f}"
                    f"{missed:>7.1f}%"
                )
            lines.append("('missed': share of the layer's FLOPs that a matmul/conv-only counter does not see)")
        return "\n".join(lines)


def ultralytics_gflops(model: nn.Module, imgsz: int = 640) -> tuple[float, str]:
    """ultralytics' GFLOPs figure for ``model``, and how it was obtained.

    ``ultralytics.utils.torch_utils.get_flops`` returns 0.0 whenever its thop call fails (for
    example ultralytics 8.4.190 passes ``stride=``, which the unrelated ``thop`` package, a
    dependency of the classic ``yolov5`` package that installs over ultralytics-thop's module
    of the same name, does not accept). Then thop, the counter behind that figure, is run
    directly on a full ``imgsz`` image (FLOPs = 2 x MACs, as ultralytics reports them).
    """
    try:
        from ultralytics.utils.torch_utils import get_flops

        value = float(get_flops(model, imgsz))
        if value > 0:
            return value, "get_flops"
    except Exception:  # noqa: BLE001 - any failure falls back to the explicit thop call below
        pass
    import torch

    from ..utils import thop_flops

    p = next(model.parameters())
    flops = thop_flops(model, torch.zeros((1, 3, imgsz, imgsz), device=p.device, dtype=p.dtype))
    if flops is None:
        return 0.0, "unavailable (thop not installed or failed)"
    return flops / 1e9, "thop at full size"


def _attention_classes() -> tuple[type, ...]:
    from ..modules.gated import GatedAttention

    return (*(info.cls for info in list_attention()), GatedAttention)


def model_cost(model, imgsz: int = 640) -> ModelCost:
    """Parameters, FLOPs (all operations and matmul-only), ultralytics' figure, per attention layer."""
    from ..flops import model_flops

    det = getattr(model, "model", model) if not hasattr(model, "yaml") else model
    if not isinstance(getattr(det, "model", None), nn.Sequential):
        raise TypeError(f"model_cost: expected an ultralytics model or YOLO object, got {type(model).__name__}")
    was_training = det.training
    det.eval()
    try:
        report = model_flops(det, imgsz=imgsz)
        ul, method = ultralytics_gflops(det, imgsz)
    finally:
        det.train(was_training)
    layers = _attention_layer_costs(det, imgsz)
    return ModelCost(
        imgsz=imgsz,
        params=sum(p.numel() for p in det.parameters()),
        flops=report.total,
        flops_matmul=report.matmul,
        ultralytics_gflops=ul,
        ultralytics_method=method,
        attention_layers=layers,
    )


def _attention_layer_costs(det: nn.Module, imgsz: int) -> list[LayerCost]:
    """Count each attention layer alone, on the input shape it receives in the whole model."""
    import torch

    from ..flops import count_flops

    att = _attention_classes()
    targets = {
        i: layer
        for i, layer in enumerate(det.model)
        if isinstance(layer, att) or (isinstance(layer, nn.Sequential) and all(isinstance(m, att) for m in layer))
    }
    shapes: dict[int, tuple] = {}

    def recorder(i: int):
        def hook(module, inputs):  # must return None: a value would replace the inputs
            shapes.setdefault(i, tuple(inputs[0].shape))

        return hook

    hooks = [layer.register_forward_pre_hook(recorder(i)) for i, layer in targets.items()]
    p = next(det.parameters())
    try:
        with torch.no_grad():
            det(torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    out = []
    for i, layer in targets.items():
        rep = count_flops(layer, torch.zeros(shapes[i], device=p.device, dtype=p.dtype))
        inner = layer.attn if hasattr(layer, "attn") else layer
        name = type(inner).__name__ + (" (gated)" if inner is not layer else "")
        out.append(LayerCost(i, name, sum(q.numel() for q in layer.parameters()), rep.total, rep.matmul))
    return out


def load_detection_model(model: str | Path):
    """An ultralytics detection model from a family name, a YAML path or a .pt checkpoint."""
    from ultralytics import YOLO

    from .yaml_gen import load_model_yaml

    p = Path(str(model))
    if p.suffix in (".pt", ".yaml", ".yml"):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        return YOLO(str(p)).model
    from ultralytics.nn.tasks import DetectionModel

    d, _ = load_model_yaml(str(model))
    return DetectionModel(d, verbose=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="yolo-attention cost",
        description="Parameters and FLOPs of a detector, counted with attention's own operations, beside "
        "ultralytics' GFLOPs figure.",
    )
    parser.add_argument("model", help="family name (yolov8n), model YAML or .pt checkpoint")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = parser.parse_args(argv)
    try:
        det = load_detection_model(a.model)
    except (ValueError, FileNotFoundError) as e:
        print(f"yolo-attention cost: error: {e}", file=sys.stderr)
        return 2
    cost = model_cost(det, a.imgsz)
    if a.json:
        import json

        print(json.dumps(cost.as_dict(), indent=2))
    else:
        print(cost.table())
    return 0
