"""Datasets for the ablation runner: ``yolo-attention data synthetic --out DIR``.

Not imported by ``import yolo_attention``; importing this package imports numpy and Pillow.
"""

from __future__ import annotations

import argparse
import re
import sys

from .synthetic import (
    DEFAULT_CLASSES,
    DEFAULT_IMGSZ,
    DEFAULT_N_TRAIN,
    DEFAULT_N_VAL,
    SHAPES,
    SyntheticConfig,
    dataset_digest,
    generate_synthetic,
    render_sample,
)

__all__ = ["DEFAULT_CLASSES", "SHAPES", "SyntheticConfig", "dataset_digest", "generate_synthetic", "render_sample", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yolo-attention data", description="Generate datasets for `yolo-attention ablate`.")
    sub = parser.add_subparsers(dest="command", metavar="{synthetic}")
    sub.required = True
    p = sub.add_parser(
        "synthetic",
        help="deterministic synthetic shapes detection dataset (YOLO format)",
        description=(
            "Write a YOLO-format detection dataset of shapes on textured, cluttered backgrounds, with "
            "scale variation and partial occlusion, deterministically from --seed. Prints the data YAML path. "
            "An --out directory already holding the same dataset is reused."
        ),
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    # --n-train/--n-val, as `yolo-attention ablate` spells them; --train/--val still work
    p.add_argument("--n-train", "--train", dest="n_train", type=int, default=DEFAULT_N_TRAIN, metavar="N",
                   help=f"train images (default: {DEFAULT_N_TRAIN})")
    p.add_argument("--n-val", "--val", dest="n_val", type=int, default=DEFAULT_N_VAL, metavar="N",
                   help=f"val images (default: {DEFAULT_N_VAL})")
    p.add_argument("--imgsz", type=int, default=DEFAULT_IMGSZ, help=f"image side in pixels (default: {DEFAULT_IMGSZ})")
    p.add_argument(
        "--classes",
        nargs="+",
        default=None,
        help=f"class shapes, space- or comma-separated, in class-id order (default: {','.join(DEFAULT_CLASSES)}; "
        f"available: {','.join(SHAPES)})",
    )
    p.add_argument("--max-objects", type=int, default=8, help="most labelled objects per image (default: 8)")
    p.add_argument(
        "--min-visible",
        type=float,
        default=0.4,
        help="least visible fraction of a labelled object; placements that would hide more are re-drawn (default: 0.4)",
    )
    p.add_argument("--clutter", type=float, default=1.0, help="multiplier of unlabelled distractors, 0 = none (default: 1)")
    p.add_argument("--min-size", type=float, default=0.05,
                   help="smallest object diameter, fraction of the image side (at least 8 px; default: 0.05)")
    p.add_argument("--max-size", type=float, default=0.45,
                   help="largest object diameter, fraction of the image side (default: 0.45)")
    p.add_argument("--force", action="store_true", help="regenerate even if --out holds the same dataset")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the data YAML path")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    classes = DEFAULT_CLASSES
    if args.classes is not None:
        classes = tuple(c for item in args.classes for c in re.split(r"[,\s]+", item) if c)
    try:
        yaml_path = generate_synthetic(
            args.out,
            seed=args.seed,
            n_train=args.n_train,
            n_val=args.n_val,
            imgsz=args.imgsz,
            classes=classes,
            max_objects=args.max_objects,
            min_visible=args.min_visible,
            clutter=args.clutter,
            min_size=args.min_size,
            max_size=args.max_size,
            force=args.force,
            verbose=not args.quiet,
        )
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))  # exits with status 2
    print(yaml_path)
    return 0
