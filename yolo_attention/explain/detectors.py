"""Detectors for ``explain``: loading, letterboxing and detections, for two model families.

* ``ultralytics``: checkpoints written by ultralytics (``ablate`` or ``yolo train``) and model
  YAMLs (built with random weights);
* ``classic``: YOLOv5 checkpoints, through the ``yolov5`` package (the classic integration).

Both use ultralytics' ``LetterBox`` (minimum rectangle, so rectangular images give rectangular
inputs) and ultralytics' ``scale_boxes`` to map back to the image; each family keeps its own NMS.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .sources import ExplainError

__all__ = ["Detector", "Placement", "load_detector", "detector_from_module", "letterbox_batch", "model_labels"]

IOU = {"ultralytics": 0.7, "classic": 0.45}  # each family's own default NMS IoU


@dataclass(frozen=True)
class Placement:
    """Where an image of ``image_shape`` (H, W) lies in a model input of ``input_shape``.

    The affine map ``input = image * gain + pad`` is read off ultralytics' own inverse,
    ``ultralytics.utils.ops.scale_boxes``, so points, boxes and maps agree with its boxes.
    """

    image_shape: tuple[int, int]
    input_shape: tuple[int, int]

    def affine(self) -> tuple[float, float, float, float]:
        """(gain_x, gain_y, pad_x, pad_y)."""
        from ultralytics.utils.ops import scale_boxes

        unit = scale_boxes(self.input_shape, np.array([[0.0, 0.0, 1.0, 1.0]]), self.image_shape, xywh=True)[0]
        gx, gy = 1.0 / unit[2], 1.0 / unit[3]
        return float(gx), float(gy), float(-unit[0] * gx), float(-unit[1] * gy)

    def to_input(self, x: float, y: float) -> tuple[float, float]:
        gx, gy, px, py = self.affine()
        return x * gx + px, y * gy + py

    def boxes_to_image(self, boxes: torch.Tensor) -> torch.Tensor:
        """(n, 4) xyxy in input pixels -> image pixels, clipped to the image."""
        from ultralytics.utils.ops import scale_boxes

        return scale_boxes(self.input_shape, boxes.clone().float(), self.image_shape)

    def crop(self, a: np.ndarray) -> np.ndarray:
        """The part of an input-sized array (H_in, W_in, ...) that shows the image (padding removed)."""
        gx, gy, px, py = self.affine()
        h0, w0 = self.image_shape
        y0, x0 = max(round(py), 0), max(round(px), 0)
        return a[y0 : y0 + max(round(h0 * gy), 1), x0 : x0 + max(round(w0 * gx), 1)]


@dataclass
class Detector:
    """A detection model ready for ``explain`` (eval mode, float32, on its device)."""

    label: str
    model: nn.Module
    family: str  # "ultralytics" or "classic"
    names: dict[int, str]
    stride: int
    trained: bool  # False for a model built from a YAML (random weights)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def head(self) -> nn.Module:
        return self.model.model[-1]

    def head_inputs(self) -> list[nn.Module]:
        """The layers whose outputs the detection head reads (the CAM target layers)."""
        return [self.model.model[i] for i in self.head().f]

    def predict(self, im: torch.Tensor, conf: float, max_det: int = 300) -> list[torch.Tensor]:
        """Detections (n, 6: x1, y1, x2, y2, score, class) in input pixels, one tensor per image."""
        with torch.no_grad():
            out = self.model(im)
        if self.family == "classic":
            from yolov5.utils.general import non_max_suppression

            return non_max_suppression(out[0], conf, IOU["classic"], max_det=max_det)
        try:
            from ultralytics.utils.nms import non_max_suppression
        except ImportError:  # ultralytics < 8.3.x kept it in ops
            from ultralytics.utils.ops import non_max_suppression
        end2end = getattr(self.model, "end2end", False)
        kw = {"end2end": True} if end2end else {}
        return [d[:, :6] for d in non_max_suppression(out, conf, IOU["ultralytics"], max_det=max_det, **kw)]

    def scores(self, out) -> torch.Tensor:
        """Best-class score of every prediction (B, A), differentiable, from the model's eval output."""
        y = out[0] if isinstance(out, (tuple, list)) else out
        if self.family == "classic":  # (B, A, 5 + nc): xywh, objectness, class probabilities
            return y[..., 4] * y[..., 5:].amax(-1)
        if getattr(self.model, "end2end", False):  # (B, max_det, 6): boxes, score, class
            return y[..., 4]
        return y[:, 4 : 4 + len(self.names)].amax(1)  # (B, 4 + nc, A)


def letterbox_batch(images: list[np.ndarray], imgsz: int, stride: int, device) -> torch.Tensor:
    """RGB uint8 images of one shape -> (B, 3, H, W) float in [0, 1], as ultralytics' predictor prepares them."""
    from ultralytics.data.augment import LetterBox

    lb = LetterBox(new_shape=(imgsz, imgsz), auto=True, stride=stride)
    arr = np.stack([lb(image=im) for im in images])
    return torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float().div_(255).contiguous()


def model_labels(specs: list[str]) -> list[str]:
    """Short, unique labels for model paths: the file stem, with the nearest folders that tell the models
    apart where stems clash (runs/ablate/se/seed0/weights/best.pt, .../bam/... -> se/best, bam/best)."""
    paths = [Path(s) for s in specs]
    dirs = [list(p.parent.parts) for p in paths]
    while len(dirs) > 1 and all(d and d[-1] == dirs[0][-1] for d in dirs):  # folders they all end with
        for d in dirs:
            d.pop()
    for depth in range(max(map(len, dirs)) + 1):
        labels = ["/".join(d[max(len(d) - depth, 0) :] + [p.stem]) for d, p in zip(dirs, paths)]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{lab}#{i + 1}" for i, lab in enumerate(labels)]  # the same file given twice


def _pickled_family(path: Path) -> str | None:
    """'ultralytics' or 'classic' from the class paths inside a torch zip checkpoint, without unpickling."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            data = z.read(pkl) if pkl else b""
    except (zipfile.BadZipFile, OSError):
        return None
    if b"ultralytics.nn.tasks" in data:
        return "ultralytics"
    if b"models.yolo" in data:
        return "classic"
    return None


def _check_detect(label: str, model: nn.Module, family: str) -> None:
    seq = getattr(model, "model", None)
    head = seq[-1] if isinstance(seq, nn.Sequential) and len(seq) else None
    f = getattr(head, "f", None)
    if not isinstance(f, (list, tuple)) or not hasattr(model, "stride"):
        raise ExplainError(f"{label}: not a detection model ({type(model).__name__} with head "
                           f"{type(head).__name__}); explain draws detectors")
    if family == "ultralytics" and getattr(model, "task", "detect") != "detect":
        raise ExplainError(f"{label}: a {model.task} model; explain draws detection models (task 'detect')")


def detector_from_module(label: str, model: nn.Module, device="cpu", trained: bool = True) -> Detector:
    """Wrap a built model: an ultralytics ``YOLO`` object or ``DetectionModel``, or a YOLOv5 ``Model``."""
    if type(model).__module__.startswith(("ultralytics.models", "ultralytics.engine")):  # a YOLO object
        model = model.model
    family = "ultralytics" if type(model).__module__.startswith("ultralytics") else "classic"
    _check_detect(label, model, family)
    model = model.float().eval().to(device)
    names = model.names
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    return Detector(label, model, family, names, int(max(model.stride)), trained)


def _load_ultralytics(spec: str) -> nn.Module:
    from ultralytics import YOLO

    return YOLO(spec).model


def _load_classic(path: Path) -> nn.Module:
    try:
        import yolov5.models.yolo  # noqa: F401  (puts yolov5's root on sys.path: repository checkpoints name 'models.yolo')
    except ImportError as e:
        raise ExplainError(f"{path} is a classic YOLOv5 checkpoint: install the classic extra "
                           f"(pip install 'yolo-attention[classic]') to load it ({e})") from None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else ckpt
    if not isinstance(model, nn.Module):
        raise ExplainError(f"{path}: no model in this checkpoint (keys {sorted(ckpt)[:8]})")
    return model


def load_detector(spec: str, label: str, device="cpu") -> Detector:
    """Load a checkpoint (.pt) or build a model YAML (a path or a name ultralytics ships, e.g. yolov8n.yaml)."""
    import yolo_attention  # noqa: F401  (registers the modules, so YAMLs and checkpoints resolve them)

    path = Path(spec).expanduser()
    is_yaml = path.suffix in (".yaml", ".yml")
    if not is_yaml and not path.is_file():
        raise ExplainError(f"model {spec}: no such file (explain loads local checkpoints and YAMLs, it downloads nothing)")
    family = "ultralytics" if is_yaml else _pickled_family(path)
    errors = []
    for fam, load in (("ultralytics", _load_ultralytics), ("classic", _load_classic)):
        if family not in (None, fam):
            continue
        try:
            model = load(str(path) if path.exists() else spec) if fam == "ultralytics" else load(path)
            return detector_from_module(label, model, device, trained=not is_yaml)
        except ExplainError:
            raise
        except Exception as e:  # noqa: BLE001  (any loader error is reported with the model's name)
            errors.append(f"as {'a model YAML' if is_yaml else f'an {fam} checkpoint'}: {type(e).__name__}: {e}")
    raise ExplainError(f"cannot load model {spec}: " + "; ".join(errors))
