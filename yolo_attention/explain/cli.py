"""``yolo-attention explain``: the command line around :func:`explain_models`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cam import CAM_METHODS
from .run import ExplainOptions, explain_models
from .sources import ExplainError

__all__ = ["main", "build_parser", "prepare_out"]

DEFAULT_OUT = Path("runs") / "explain"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yolo-attention explain",
        description=("Draw what detectors and their attention modules do on your images: for each image one PNG with "
                     "every model's detections and class activation map side by side, and for each model the "
                     "attention its modules computed (channel weights, spatial maps, A2 descriptor maps, BiFormer "
                     "routing), read from the modules with forward hooks. Everything is also in OUT/report.html."),
        epilog="Example: yolo-attention explain runs/ablate/none/seed0/weights/best.pt "
               "runs/ablate/bam/seed0/weights/best.pt --source data/images/val --out runs/explain-bam",
    )
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="checkpoints (.pt: ultralytics, ablate, or classic YOLOv5) or model YAMLs (random weights)")
    p.add_argument("--source", required=True, help="an image, a directory of images, or a glob pattern")
    p.add_argument("--out", default=None,
                   help=f"output directory [default: {DEFAULT_OUT}, or {DEFAULT_OUT}2, 3, ... if it exists]")
    p.add_argument("--exist-ok", action="store_true",
                   help="write into an --out that already holds files (files of the same name are replaced)")
    p.add_argument("--method", default="layercam", choices=CAM_METHODS, help="class activation map method [%(default)s]")
    p.add_argument("--query", default=None, metavar="X,Y",
                   help="query point in image pixels for routing and token attention [default: the centre of the "
                        "highest-scoring detection]")
    p.add_argument("--layer", type=int, default=None, metavar="I", help="draw only attention layer I (model layer index)")
    p.add_argument("--imgsz", type=int, default=640, help="inference size, longest side [%(default)s]")
    p.add_argument("--conf", type=float, default=0.25, help="detection score threshold [%(default)s]")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass [%(default)s]")
    p.add_argument("--device", default=None, help="cpu, 0, cuda:0, ... [default: cuda:0 if available, else cpu]")
    return p


def _parse_query(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise ExplainError(f"--query must be two numbers X,Y in image pixels, got {text!r}") from None
    return x, y


def _device(text: str | None):
    import torch

    if text is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    text = f"cuda:{text}" if text.isdigit() else text
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise ExplainError(f"--device {text!r} is not a device (cpu, 0, cuda:0, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExplainError(f"--device {text}: CUDA is not available here; use --device cpu")
    return dev


def prepare_out(out: str | None, exist_ok: bool) -> Path:
    """The output directory. The default one is never reused (runs/explain2, 3, ... instead); an explicit
    one that already holds files is refused unless ``exist_ok``."""
    if out is None:
        path, k = DEFAULT_OUT, 1
        while path.exists() and any(path.iterdir()):
            k += 1
            path = DEFAULT_OUT.with_name(f"{DEFAULT_OUT.name}{k}")
        return path
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ExplainError(f"--out {path} exists and is not a directory")
    if path.exists() and any(path.iterdir()) and not exist_ok:
        raise ExplainError(f"--out {path} already holds files; pass --exist-ok to write into it, or choose another --out")
    return path


def _check_numbers(a) -> None:
    if a.imgsz < 32:
        raise ExplainError(f"--imgsz must be at least 32, got {a.imgsz}")
    if not 0 <= a.conf <= 1:
        raise ExplainError(f"--conf must be in [0, 1], got {a.conf}")
    if a.batch < 1:
        raise ExplainError(f"--batch must be at least 1, got {a.batch}")


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        _check_numbers(a)
        opt = ExplainOptions(method=a.method, imgsz=a.imgsz, conf=a.conf, query=_parse_query(a.query), layer=a.layer,
                             batch=a.batch, device=_device(a.device))
        out = prepare_out(a.out, a.exist_ok)
        result = explain_models(a.models, a.source, out, opt)
    except ExplainError as e:
        print(f"yolo-attention explain: error: {e}", file=sys.stderr)
        return 2
    n_img = sum(1 for p in result.pictures if p.path.parent.name == "detections")
    print(f"wrote {len(result.pictures)} picture(s) for {n_img} image(s) under {out}")
    print(f"report: {result.report}")
    for note in result.notes:
        print(f"note: {note}")
    return 0
