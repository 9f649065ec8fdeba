"""``explain_models``: detections, CAMs and the modules' own attention for several models and images."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from .cam import cam_overlays, check_cam_available
from .detectors import Detector, Placement, letterbox_batch, load_detector, model_labels
from .figures import Box, ChannelSeries, Panel, save_channel_plots, save_grid
from .report import Picture, Table, write_report_html
from .sources import ExplainError, ImageItem, Skipped, scan_images
from .taps import AttentionLayer, TapRecorder, find_attention_layers, no_taps_note
from .views import ImageView, Notes, channel_values, layer_panels

__all__ = ["ExplainOptions", "Explanation", "explain_models"]

CHANNEL_GROUP = "Channel attention over the image set"


@dataclass(frozen=True)
class ExplainOptions:
    method: str = "layercam"  # see cam.CAM_METHODS
    imgsz: int = 640
    conf: float = 0.25
    query: tuple[float, float] | None = None  # image pixels (x, y); None: the best detection's centre
    layer: int | None = None  # draw only this attention layer
    batch: int = 8
    device: str | torch.device = "cpu"
    report_images: int = 20  # images whose pictures report.html embeds (all are written to disk)


@dataclass
class Explanation:
    pictures: list[Picture]
    notes: list[str]
    skipped: list[Skipped]
    report: Path


@dataclass
class _ModelRun:
    det: Detector
    layers: list[AttentionLayer]  # the ones drawn (after --layer)
    recorder: TapRecorder
    channels: dict[tuple[str, int], list[np.ndarray]] = field(default_factory=dict)
    in_channels: dict[str, int] = field(default_factory=dict)  # attention path -> its input's C
    notes: Notes = field(default_factory=Notes)


class _ImageResult(NamedTuple):
    """One model on one image."""

    detections: Panel
    cam: Panel
    attention: Picture | None  # the attention picture, if the model has something to draw per image


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


def _select_layers(dets: list[Detector], found: list[list[AttentionLayer]], layer: int | None):
    """The attention layers to draw per model: all, or only layer ``layer`` (which must be one somewhere)."""
    if layer is None:
        return found
    if not any(a.index == layer for layers in found for a in layers):
        listed = "; ".join(f"{d.label}: {', '.join(a.label for a in layers) or 'none'}" for d, layers in zip(dets, found))
        raise ExplainError(f"--layer {layer} is not an attention layer of {'the model' if len(dets) == 1 else 'any model'}"
                           f" (attention layers: {listed})")
    return [[a for a in layers if a.index == layer] for layers in found]


def _check_query(query: tuple[float, float] | None, items: list[ImageItem]) -> None:
    if query is None:
        return
    x, y = query
    outside = [f"{it.path.name} ({it.shape[1]}x{it.shape[0]})" for it in items
               if not (0 <= x < it.shape[1] and 0 <= y < it.shape[0])]
    if outside:
        raise ExplainError(f"--query {x:g},{y:g} lies outside {len(outside)} image(s) (width x height): "
                           f"{', '.join(outside[:10])}{' ...' if len(outside) > 10 else ''}")


def _batches(items: list[ImageItem], size: int) -> list[list[ImageItem]]:
    """Images of one shape together (one letterboxed input shape per batch), at most ``size`` per batch."""
    by_shape: dict[tuple[int, int], list[ImageItem]] = {}
    for it in items:
        by_shape.setdefault(it.shape, []).append(it)
    return [group[i : i + size] for group in by_shape.values() for i in range(0, len(group), size)]


def _query(opt: ExplainOptions, det: Detector, boxes: torch.Tensor, scores: torch.Tensor, classes, shape):
    if opt.query is not None:
        return opt.query, f"query {opt.query[0]:g},{opt.query[1]:g}"
    if len(boxes):
        b = boxes[int(scores.argmax())]
        name = det.names.get(int(classes[int(scores.argmax())]), "?")
        return (float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2), f"best detection: {name} {float(scores.max()):.2f}"
    return (shape[1] / 2, shape[0] / 2), "image centre: no detection"


def _detection_panel(det: Detector, rgb: np.ndarray, boxes, d: torch.Tensor, conf: float) -> Panel:
    marks = tuple(Box(*b.tolist(), f"{det.names.get(int(c), int(c))} {s:.2f}")
                  for b, s, c in zip(boxes, d[:, 4].tolist(), d[:, 5].tolist()))
    untrained = "; random weights (built from a YAML)" if not det.trained else ""
    return Panel(f"{det.label}: {len(d)} detection(s), conf >= {conf:g}{untrained}", rgb, boxes=marks)


def _run_batch(run: _ModelRun, chunk: list[ImageItem], rgbs, opt: ExplainOptions, out: Path) -> list[_ImageResult]:
    """One model on one batch of images; writes the attention pictures."""
    det = run.det
    im = letterbox_batch(rgbs, opt.imgsz, det.stride, det.device)
    with run.recorder.recording() as cap:
        dets = det.predict(im, opt.conf)
    overlays, cam_desc = cam_overlays(det, im, opt.method, opt.conf)
    for layer in run.layers:
        if layer.path in cap.input_shapes:
            run.in_channels[layer.path] = cap.input_shapes[layer.path][1]
        for k, v in channel_values(layer, cap, run.notes).items():
            run.channels.setdefault((layer.path, k), []).append(v)
    results = []
    for n, item in enumerate(chunk):
        placement = Placement(item.shape, tuple(im.shape[2:]))
        d = dets[n].detach().cpu()
        boxes = placement.boxes_to_image(d[:, :4])
        query, query_from = _query(opt, det, boxes, d[:, 4], d[:, 5], item.shape)
        view = ImageView(n, rgbs[n], placement, query, query_from)
        panels = [p for layer in run.layers for p in layer_panels(layer, cap, view, run.notes)]
        picture = None
        if panels:
            path = save_grid(out / "attention" / _safe(det.label) / f"{item.name}.png", panels, ncols=4,
                             title=f"{det.label} on {item.name}: attention computed by the modules themselves")
            picture = Picture(path, f"{det.label}: attention on {item.name}", f"Image {item.name}")
        cam = Panel(f"{det.label}: {cam_desc}", placement.crop(overlays[n]))
        results.append(_ImageResult(_detection_panel(det, rgbs[n], boxes, d, opt.conf), cam, picture))
    return results


def _channel_pictures(run: _ModelRun, out: Path) -> list[Picture]:
    series = []
    for layer in run.layers:
        for k, tap in enumerate(layer.info.taps):
            values = run.channels.get((layer.path, k))
            if values:
                series.append(ChannelSeries(f"{layer.label}: {tap.name or tap.module}", np.concatenate(values),
                                            run.in_channels.get(layer.path)))
    if not series:
        return []
    path = save_channel_plots(out / "attention" / _safe(run.det.label) / "channels.png", series,
                              title=f"{run.det.label}: channel attention weights")
    return [Picture(path, f"{run.det.label}: channel weights, sorted, with their spread over the images",
                    CHANNEL_GROUP)]


def _model_notes(run: _ModelRun, all_layers: list[AttentionLayer], opt: ExplainOptions) -> list[str]:
    label = run.det.label
    if not all_layers:
        return [f"{label}: no attention module; class activation map only"]
    notes = []
    if opt.layer is not None and not run.layers:
        notes.append(f"{label}: layer {opt.layer} is not one of its attention layers "
                     f"({', '.join(a.label for a in all_layers)})")
    for layer in run.layers:
        if not layer.info.taps:
            notes.append(f"{label}: {no_taps_note(layer)}")
        notes += [f"{label}: {layer.label}: {p}" for p in run.recorder.problems.get(layer.path, [])]
        if layer.gamma is not None:
            notes.append(f"{label}: {layer.label} is gated (y = x + gamma (attn(x) - x)), mean |gamma| = "
                         f"{layer.gamma:.3g}: the pictures show what the module computes; gamma scales its effect")
    return notes + [f"{label}: {n}" for n in run.notes]


def _report_pictures(pictures: list[Picture], max_images: int) -> list[Picture]:
    """The pictures of the first ``max_images`` images, and the set-level ones (a report stays a few MB)."""
    groups = list(dict.fromkeys(p.group for p in pictures if p.group != CHANNEL_GROUP))[:max_images]
    return [p for p in pictures if p.group in groups or p.group == CHANNEL_GROUP]


def _load_all(models: Sequence[str | Detector], device) -> list[Detector]:
    specs = [m for m in models if not isinstance(m, Detector)]
    labels = iter(model_labels([str(s) for s in specs])) if specs else iter(())
    return [m if isinstance(m, Detector) else load_detector(str(m), next(labels), device) for m in models]


def explain_models(models: Sequence[str | Detector], images: str | Path | list[Path], out: str | Path,
                   options: ExplainOptions | None = None) -> Explanation:
    """Write, under ``out``: one PNG per image with every model's detections and CAM side by side
    (``detections/``), per model the pictures of its attention modules (``attention/<model>/``),
    and ``report.html`` with all of them. Returns the pictures, notes and skipped images.

    Files of the same names in ``out`` are replaced: the command line's ``--out`` handling
    (``cli.prepare_out``) is what refuses to write into a directory that already holds files."""
    opt = options or ExplainOptions()
    if not models:
        raise ExplainError("no model given")
    out = Path(out)
    items, skipped = scan_images(images)
    _check_query(opt.query, items)
    dets = _load_all(models, opt.device)
    check_cam_available(opt.method, dets)
    all_layers = [find_attention_layers(d.model) for d in dets]
    selected = _select_layers(dets, all_layers, opt.layer)
    runs = [_ModelRun(d, layers, TapRecorder(layers)) for d, layers in zip(dets, selected)]
    pictures: list[Picture] = []
    try:
        for chunk in _batches(items, opt.batch):
            rgbs = [it.load() for it in chunk]
            per_model = [_run_batch(run, chunk, rgbs, opt, out) for run in runs]
            for n, item in enumerate(chunk):
                panels = [r[n].detections for r in per_model] + [r[n].cam for r in per_model]
                path = save_grid(out / "detections" / f"{item.name}.png", panels, ncols=len(runs),
                                 title=f"{item.path.name}: detections (top) and class activation maps (bottom)")
                group = f"Image {item.name}"
                pictures.append(Picture(path, f"{item.path.name}: detections and CAM of each model", group))
                pictures += [r[n].attention for r in per_model if r[n].attention is not None]
    finally:
        for run in runs:
            run.recorder.close()
    for run in runs:
        pictures += _channel_pictures(run, out)
    embedded = _report_pictures(pictures, opt.report_images)
    notes = [f"skipped {s.path}: {s.reason}" for s in skipped]
    if len(embedded) < len(pictures):
        notes.append(f"report.html shows the first {opt.report_images} of {len(items)} images; the pictures of all "
                     f"are under {out / 'detections'} and {out / 'attention'}")
    notes += [n for run, layers in zip(runs, all_layers) for n in _model_notes(run, layers, opt)]
    table = Table(["model", "family", "weights", "attention layers"],
                  [[d.label, d.family, "trained" if d.trained else "random (YAML)",
                    ", ".join(a.label for a in layers) or "none"] for d, layers in zip(dets, all_layers)])
    intro = (f"{len(items)} image(s), imgsz {opt.imgsz}, conf {opt.conf:g}, CAM method {opt.method}. "
             "Attention pictures are the modules' own tensors, read with forward hooks on their declared taps.")
    report = write_report_html(out / "report.html", "yolo-attention explain", intro=intro, tables=[table],
                               pictures=embedded, notes=notes)
    return Explanation(pictures, notes, skipped, report)
