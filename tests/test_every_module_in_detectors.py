"""Every registered module inside real detectors: build, one training step, rectangular inference.

The modules of the registry (read at collection time, so a module registered by a new file is
covered without touching this one) are taken three at a time, one after each of the neck's three
outputs (P3, P4, P5): a covering design in which every module is inside every detector at one
neck place, for a third of the builds of one module per detector. Each detector is built from its
YAML, trained for one optimiser step with the detector's own loss on a generated batch, and run in
eval mode at a rectangular size, as ultralytics' validation does with ``rect=True`` batches:

* yolov8n and yolo11n through the ultralytics integration (``make_attention_yaml``),
* yolov5s through the classic integration (the ``yolov5`` package's ``models.yolo``).

Images are 64 px and the batch holds two images, so the whole matrix stays cheap per module.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn as nn

from _helpers import BUILTIN_NAMES, _registry_does_not_leak, neck_groups, neck_mix_yaml  # noqa: F401
from yolo_attention.data.synthetic import SyntheticConfig, render_sample
from yolo_attention.registry import get_attention_info

pytestmark = pytest.mark.slow

IMGSZ = 64
RECT = (64, 96)  # H, W of the eval-mode forward: both sides multiples of the largest stride, not square
STRIDES = (8, 16, 32)
GROUPS = neck_groups(BUILTIN_NAMES)


@dataclass(frozen=True)
class GeneratedBatch:
    """Two rendered images with their boxes, in both label layouts the two loss functions read."""

    img: torch.Tensor  # (2, 3, IMGSZ, IMGSZ) in [0, 1]
    batch_idx: torch.Tensor  # (M,) image index of each box
    cls: torch.Tensor  # (M,) class id
    xywh: torch.Tensor  # (M, 4) normalised centre x, centre y, width, height

    def ultralytics(self) -> dict:
        return {"img": self.img, "batch_idx": self.batch_idx, "cls": self.cls[:, None].float(), "bboxes": self.xywh}

    def classic(self) -> torch.Tensor:
        """yolov5's ComputeLoss targets: (image, class, x, y, w, h) per row."""
        return torch.cat([self.batch_idx[:, None], self.cls[:, None].float(), self.xywh], 1)


def _generated_batch() -> GeneratedBatch:
    cfg = SyntheticConfig(seed=0, imgsz=IMGSZ)
    samples = [s for s in (render_sample(cfg, "train", i) for i in range(8)) if s.objects][:2]
    assert len(samples) == 2, "the generator gave fewer than two images with objects"
    imgs, rows = [], []
    for k, s in enumerate(samples):
        imgs.append(torch.from_numpy(s.image).permute(2, 0, 1).float() / 255)
        for o in s.objects:
            x0, y0, x1, y1 = (v / IMGSZ for v in o.box)
            rows.append([k, o.cls, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
    t = torch.tensor(rows, dtype=torch.float32)
    return GeneratedBatch(torch.stack(imgs), t[:, 0], t[:, 1].long(), t[:, 2:])


@pytest.fixture(scope="module")
def batch() -> GeneratedBatch:
    return _generated_batch()


# ------------------------------------------------------------------------------------------- detectors


@dataclass(frozen=True)
class Detector:
    """How to build one detector with attention at the neck and compute its own training loss."""

    name: str
    build: Callable[[tuple[str, ...], object], nn.Module]  # (module names, tmp dir) -> model in train mode
    loss: Callable[[nn.Module, GeneratedBatch], torch.Tensor]  # scalar loss of a train-mode forward
    eval_shape: Callable[[int, int, int], tuple]  # (N, H, W) -> shape of the eval-mode detections


def _cells(h: int, w: int) -> int:
    return sum((h // s) * (w // s) for s in STRIDES)


def _ultralytics_shape(n: int, h: int, w: int, nc: int = 80) -> tuple:
    return (n, 4 + nc, _cells(h, w))  # anchor-free: one prediction per cell, boxes then class scores


def _yolov5_shape(n: int, h: int, w: int, nc: int = 80, na: int = 3) -> tuple:
    return (n, na * _cells(h, w), 5 + nc)  # three anchors per cell: box, objectness, class scores


def _build_ultralytics(stem: str):
    def build(names: tuple[str, ...], tmp) -> nn.Module:
        pytest.importorskip("ultralytics")
        from ultralytics import YOLO
        from ultralytics.cfg import get_cfg

        model = YOLO(str(neck_mix_yaml(stem, names, tmp))).model
        model.args = get_cfg()  # the trainer's default hyper-parameters (box, cls, dfl gains) for the loss
        return model.train()

    return build


def _ultralytics_loss(model: nn.Module, b: GeneratedBatch) -> torch.Tensor:
    loss, _ = model.loss(b.ultralytics())
    return loss.sum()  # v8DetectionLoss returns the three gains-weighted parts times the batch size


def _classic_y5():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # yolov5 imports the deprecated pkg_resources
        y5 = pytest.importorskip("yolov5.models.yolo")
    from yolo_attention.integrations.classic import register_classic

    register_classic(y5)
    return y5


def _build_yolov5s(names: tuple[str, ...], tmp) -> nn.Module:
    y5 = _classic_y5()  # first: it imports yolov5 with its deprecation warnings silenced
    import yaml
    import yolov5

    cfg = neck_mix_yaml("yolov5s", names, tmp, fmt="classic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = y5.Model(cfg)
    with open(f"{yolov5.__path__[0]}/data/hyps/hyp.scratch-low.yaml") as f:
        model.hyp = yaml.safe_load(f)  # what train.py attaches before building ComputeLoss
    return model.train()


def _yolov5_loss(model: nn.Module, b: GeneratedBatch) -> torch.Tensor:
    from yolov5.utils.loss import ComputeLoss

    loss, _ = ComputeLoss(model)(model(b.img), b.classic())
    return loss.sum()


DETECTORS = {
    "yolov8n": Detector("yolov8n", _build_ultralytics("yolov8n"), _ultralytics_loss, _ultralytics_shape),
    "yolo11n": Detector("yolo11n", _build_ultralytics("yolo11n"), _ultralytics_loss, _ultralytics_shape),
    "yolov5s": Detector("yolov5s", _build_yolov5s, _yolov5_loss, _yolov5_shape),
}


# ---------------------------------------------------------------------------------------------- checks


class CallCounter:
    """Counts forward calls of the attention layers, so a layer built but bypassed is caught."""

    def __init__(self, layers: list[nn.Module]):
        self.calls = 0
        self._handles = [m.register_forward_hook(self._hook) for m in layers]

    def _hook(self, module, args, output):
        self.calls += 1

    def remove(self):
        for h in self._handles:
            h.remove()


def _attention_layers(model: nn.Module, names: tuple[str, ...]) -> list[nn.Module]:
    """The layer of each module, in the order of ``names``; exactly one each."""
    layers = []
    for name in names:
        cls = get_attention_info(name).cls
        found = [m for m in model.modules() if type(m) is cls]
        assert len(found) == 1, f"{len(found)} {name} layers, expected 1"
        layers += found
    return layers


def _one_training_step(det: Detector, model: nn.Module, layers: list[nn.Module], b: GeneratedBatch):
    params = [p for m in layers for p in m.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)  # no momentum or decay: a parameter moves iff its grad != 0
    opt.zero_grad()
    counter = CallCounter(layers)
    try:
        loss = det.loss(model, b)
    finally:
        counter.remove()
    assert counter.calls == len(layers), f"{counter.calls} attention calls in a train forward, expected {len(layers)}"
    assert torch.isfinite(loss), f"loss {loss.item()}"
    loss.backward()
    for name, p in ((n, p) for m in layers for n, p in m.named_parameters() if p.requires_grad):
        assert p.grad is not None, f"no gradient reached attention parameter {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in attention parameter {name}"
    for m in layers:  # per layer: a module whose gradients are all zero is not hidden by its neighbours'
        grads = [p.grad for p in m.parameters() if p.requires_grad]
        assert not grads or any(g.abs().sum() > 0 for g in grads), f"every gradient of {type(m).__name__} is zero"
    opt.step()
    if params:
        assert any(not torch.equal(a, p.detach()) for a, p in zip(before, params)), "attention parameters did not move"
    for p in model.parameters():
        assert torch.isfinite(p).all(), "the optimiser step left non-finite weights"


def _rectangular_eval_forward(det: Detector, model: nn.Module, layers: list[nn.Module]):
    model.eval()
    h, w = RECT
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    counter = CallCounter(layers)
    try:
        with torch.no_grad():
            y = model(x)[0]  # both families return (detections, raw maps) in eval mode
    finally:
        counter.remove()
    assert counter.calls == len(layers)
    assert tuple(y.shape) == det.eval_shape(2, h, w), tuple(y.shape)
    assert torch.isfinite(y).all(), "non-finite detections at a rectangular size"


@pytest.mark.parametrize("detector", list(DETECTORS))
@pytest.mark.parametrize("names", GROUPS, ids="+".join)
def test_modules_in_detector_build_train_and_run_rectangular(names, detector, batch, tmp_path):
    det = DETECTORS[detector]
    model = det.build(names, tmp_path)
    layers = _attention_layers(model, names)
    _one_training_step(det, model, layers, batch)
    _rectangular_eval_forward(det, model, layers)
