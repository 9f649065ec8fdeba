"""Class activation maps of a detector at its head inputs.

* ``layercam`` on ultralytics models: ultralytics' own ``class_activation_map`` (LayerCAM at the
  head inputs; it writes one overlay per image, which is read back);
* ``gradcam``, ``eigencam``, and every method on classic YOLOv5 models (whose head output
  ultralytics' function does not read): the ``grad-cam`` package (``pip install
  'yolo-attention[explain]'``) on the same layers, with the same predictions explained.

Either way the result is an RGB overlay (JET colour map, half opacity) at the model-input size.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .detectors import Detector
from .sources import ExplainError, read_image

__all__ = ["CAM_METHODS", "cam_overlays", "check_cam_available"]

CAM_METHODS = ("layercam", "gradcam", "eigencam")
_LIBRARY_CLASSES = {"layercam": "LayerCAM", "gradcam": "GradCAM", "eigencam": "EigenCAM"}
TOPK = 16  # predictions explained per image, as in ultralytics' class_activation_map


def _ultralytics_cam():
    try:
        from ultralytics.utils.plotting import class_activation_map
    except ImportError:  # ultralytics releases before it existed
        return None
    return class_activation_map


def _uses_library(method: str, det: Detector) -> bool:
    return not (method == "layercam" and det.family == "ultralytics" and _ultralytics_cam() is not None)


def check_cam_available(method: str, detectors: list[Detector]) -> None:
    """Fail early, with the fix, when a method needs the grad-cam package and it is missing."""
    if method not in CAM_METHODS:
        raise ExplainError(f"--method must be one of {', '.join(CAM_METHODS)}, got {method!r}")
    need = [d.label for d in detectors if _uses_library(method, d)]
    if need:
        try:
            import pytorch_grad_cam  # noqa: F401
        except ImportError:
            raise ExplainError(f"--method {method} for {', '.join(need)} needs the grad-cam package: "
                               "pip install 'yolo-attention[explain]'") from None


class _Backend(nn.Module):
    """What ultralytics' class_activation_map expects of its model: ``model.model.model[-1]`` is the head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, *args, **kwargs):
        return self.model(x)


@contextlib.contextmanager
def _quiet_ultralytics():
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.ERROR)  # one "Saving ..." line per image otherwise
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def _ultralytics_layercam(det: Detector, im: torch.Tensor, conf: float) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="yolo-attention-cam-") as tmp, _quiet_ultralytics():
        _ultralytics_cam()(_Backend(det.model), im, [f"{i}.png" for i in range(len(im))], Path(tmp), conf=conf)
        overlays = [read_image(Path(tmp) / f"{i}_cam.jpg") for i in range(len(im))]
    if any(o is None for o in overlays):
        raise RuntimeError("ultralytics' class_activation_map wrote no overlay")
    return overlays


class _Scores(nn.Module):
    """The detector as grad-cam sees it: images -> best-class score of every prediction (B, A)."""

    def __init__(self, det: Detector):
        super().__init__()
        self.model = det.model
        self._scores = det.scores

    def forward(self, x):
        if torch.is_grad_enabled() and not x.requires_grad:  # parameters may be frozen: seed the graph here
            x = x.detach().requires_grad_(True)
        return self._scores(self.model(x))


class _ExplainedPredictions:
    """grad-cam target for one image: the summed score of the predictions scoring at least ``conf``
    (the TOPK best), or of the single best prediction when none does, as ultralytics' CAM chooses."""

    def __init__(self, conf: float):
        self.conf = conf

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        s = scores.detach()
        keep = (s >= self.conf) | (s == s.max())
        n = min(TOPK, int(keep.sum()))
        return scores[s.masked_fill(~keep, float("-inf")).topk(n).indices].sum()


def _library_cam(det: Detector, im: torch.Tensor, method: str, conf: float) -> list[np.ndarray]:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.image import show_cam_on_image

    head = det.head()
    for attr in ("shape", "shapes"):  # anchors cached by an earlier pass would be reused without a graph
        if hasattr(head, attr):
            setattr(head, attr, None)
    cam_cls = getattr(pytorch_grad_cam, _LIBRARY_CLASSES[method])
    with cam_cls(model=_Scores(det), target_layers=det.head_inputs()) as cam:
        maps = cam(input_tensor=im, targets=[_ExplainedPredictions(conf)] * len(im))
    rgb = im.detach().permute(0, 2, 3, 1).float().cpu().numpy()
    return [show_cam_on_image(img, m, use_rgb=True) for img, m in zip(rgb, maps)]


def cam_overlays(det: Detector, im: torch.Tensor, method: str, conf: float) -> tuple[list[np.ndarray], str]:
    """CAM overlays (RGB uint8, model-input size) for a batch, and a short description of the method."""
    if not _uses_library(method, det):
        return _ultralytics_layercam(det, im, conf), "LayerCAM at the head inputs (ultralytics)"
    return _library_cam(det, im, method, conf), f"{_LIBRARY_CLASSES[method]} at the head inputs (grad-cam)"
