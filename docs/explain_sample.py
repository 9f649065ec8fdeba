"""Make docs/explain-sample.png, the README's picture of ``yolo-attention explain``.

Trains yolov8n with BAM after the three neck outputs on the generated dataset (the settings of
``yolo-attention ablate``'s defaults; CPU, 15 to 50 minutes on 2 shared cores; a finished training
in --work is reused), explains the validation image with the most detections, and puts the
pictures explain writes side by side: detections and CAM; BAM's spatial maps over its channel weights.

    python docs/explain_sample.py [--work runs/explain-sample] [--epochs 30]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")


def _compose(left: Path, right: list[Path], out: Path) -> None:
    """``left`` beside the ``right`` pictures stacked top to bottom."""
    from PIL import Image

    lim = Image.open(left).convert("RGB")
    rims = [Image.open(p).convert("RGB") for p in right]
    canvas = Image.new("RGB", (lim.width + max(i.width for i in rims),
                               max(lim.height, sum(i.height for i in rims))), "white")
    canvas.paste(lim, (0, 0))
    y = 0
    for im in rims:
        canvas.paste(im, (lim.width, y))
        y += im.height
    canvas.save(out, optimize=True)


def _busiest(weights: Path, images: list[Path]) -> Path:
    """The image with the most detections (ultralytics' own predictor)."""
    from ultralytics import YOLO

    counts = [len(r.boxes) for r in YOLO(str(weights)).predict([str(p) for p in images], imgsz=128, verbose=False)]
    return images[max(range(len(images)), key=counts.__getitem__)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/explain-sample", help="training and explain outputs [%(default)s]")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--out", default=str(Path(__file__).with_name("explain-sample.png")))
    a = p.parse_args()

    from ultralytics import YOLO

    import yolo_attention  # noqa: F401  (registers the modules for the YAML)
    from yolo_attention.data import generate_synthetic
    from yolo_attention.explain import ExplainOptions, explain_models
    from yolo_attention.explain.detectors import load_detector
    from yolo_attention.integrations.yaml_gen import make_attention_yaml

    work = Path(a.work).resolve()
    data = generate_synthetic(work / "data", seed=0, n_train=160, n_val=16, imgsz=128,
                              classes="circle,square,triangle,star", clutter=0.5, max_objects=5)
    yaml = make_attention_yaml("yolov8n", "bam", "neck", out=work / "yolov8n-bam.yaml")
    weights = work / "train" / "weights" / "last.pt"
    if not weights.is_file():
        YOLO(str(yaml)).train(data=str(data), epochs=a.epochs, imgsz=128, batch=16, device="cpu", workers=0, seed=0,
                              project=str(work), name="train", exist_ok=True, optimizer="SGD", lr0=0.02,
                              warmup_epochs=1, mosaic=0.0, val=False, plots=False, verbose=False)
    val = sorted((data.parent / "images" / "val").iterdir())
    image = _busiest(weights, val)
    det = load_detector(str(weights), "yolov8n+BAM")
    explain_models([det], val, work / "explain", ExplainOptions(imgsz=128, conf=0.25, device="cpu"))
    pictures = work / "explain" / "attention" / "yolov8n_BAM"
    _compose(work / "explain" / "detections" / f"{image.stem}.png",
             [pictures / f"{image.stem}.png", pictures / "channels.png"], Path(a.out))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
