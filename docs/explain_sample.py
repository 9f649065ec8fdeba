"""Make docs/explain-sample.png, the README's picture of ``yolo-attention explain``.

Trains yolov8n with BAM after the three neck outputs on the generated dataset (the settings of
``yolo-attention ablate``'s defaults, CPU, about 15 minutes on 2 cores), explains one validation
image, and stacks the two pictures explain writes for it (detections and CAM; BAM's own maps).

    python docs/explain_sample.py [--work runs/explain-sample] [--epochs 30]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")


def _stack(paths: list[Path], out: Path) -> None:
    from PIL import Image

    ims = [Image.open(p).convert("RGB") for p in paths]
    canvas = Image.new("RGB", (max(i.width for i in ims), sum(i.height for i in ims)), "white")
    y = 0
    for im in ims:
        canvas.paste(im, (0, y))
        y += im.height
    canvas.save(out, optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/explain-sample", help="training and explain outputs [%(default)s]")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--image", type=int, default=3, help="which validation image to explain [%(default)s]")
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
    YOLO(str(yaml)).train(data=str(data), epochs=a.epochs, imgsz=128, batch=16, device="cpu", workers=0, seed=0,
                          project=str(work), name="train", exist_ok=True, optimizer="SGD", lr0=0.02,
                          warmup_epochs=1, mosaic=0.0, val=False, plots=False, verbose=False)
    det = load_detector(str(work / "train" / "weights" / "last.pt"), "yolov8n+BAM")
    image = sorted((data.parent / "images" / "val").iterdir())[a.image]
    explain_models([det], [image], work / "explain", ExplainOptions(imgsz=128, conf=0.25, device="cpu"))
    _stack([work / "explain" / "detections" / f"{image.stem}.png",
            work / "explain" / "attention" / "yolov8n_BAM" / f"{image.stem}.png"], Path(a.out))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
