"""Derive model YAMLs with attention inserted, from ultralytics' own bundled YAMLs.

Places (OpenMMLab-plugin style: a module plus where it goes):

* ``backbone``: after each backbone layer whose output the neck reads (YOLOv8: 4, 6, 9);
* ``neck``: after each neck layer whose output the detection head reads (YOLOv8: 15, 18, 21);
* ``sppf``: after the last backbone layer (SPPF, SPPELAN, PSA or C2PSA, by family);
* explicit layer indices of the original YAML (``"4,6"``).

Inserting a layer after layer ``i`` means: every layer that read ``i`` reads the attended
output instead, and every ``from`` index (the head's included) is renumbered.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..registry import get_attention_info

__all__ = [
    "PLACES",
    "FAMILIES",
    "insertion_points",
    "insert_attention",
    "load_model_yaml",
    "make_attention_yaml",
    "dump_model_yaml",
    "main",
]

PLACES = ("backbone", "neck", "sppf")
# family -> an example model name the ultralytics integration resolves
FAMILIES = {
    "yolov3u": "yolov3u",
    "yolov5u": "yolov5nu",
    "yolov8": "yolov8n",
    "yolov9": "yolov9t",
    "yolov10": "yolov10n",
    "yolo11": "yolo11n",
    "yolo12": "yolo12n",
    "yolo26": "yolo26n",
    "yolov7": "yolov7",  # shipped here (yolo_attention/cfg): YOLOv7 blocks with ultralytics' Detect head
    "yolov7-tiny": "yolov7-tiny",
}


def _resolve(f: int, i: int) -> int:
    return i + f if f < 0 else f


def _froms(row) -> list[int]:
    f = row[0]
    return list(f) if isinstance(f, (list, tuple)) else [f]


def _head_reader(d: dict) -> tuple[int, list]:
    rows = d["backbone"] + d["head"]
    last = len(rows) - 1
    if not isinstance(rows[last][0], (list, tuple)):
        raise ValueError(
            f"the last layer ({rows[last][2]}) reads a single input: 'neck' needs a detection-style head that reads "
            "several neck outputs; give explicit layer indices instead"
        )
    return last, [_resolve(f, last) for f in rows[last][0]]


def insertion_points(d: dict, at) -> list[int]:
    """Original layer indices after which to insert, for a place name, indices or a mix (``"neck,4"``)."""
    nb = len(d["backbone"])
    rows = d["backbone"] + d["head"]
    items = at if isinstance(at, (list, tuple)) else str(at).split(",")
    points: set[int] = set()
    for item in items:
        item = item.strip() if isinstance(item, str) else item
        if isinstance(item, int) or (isinstance(item, str) and re.fullmatch(r"-?\d+", item)):
            idx = int(item)
            idx = idx + len(rows) if idx < 0 else idx
            if not 0 <= idx < len(rows) - 1:
                raise ValueError(
                    f"layer index {item} is out of range: this model has layers 0..{len(rows) - 1} and attention "
                    f"cannot follow the last (head) layer"
                )
            points.add(idx)
        elif item == "backbone":
            readers = {
                _resolve(f, i) for i in range(nb, len(rows)) for f in _froms(rows[i])
            }  # backbone layers the neck and head read
            points |= {j for j in readers if j < nb}
        elif item == "neck":
            last, outs = _head_reader(d)
            points |= set(outs)
        elif item == "sppf":
            points.add(nb - 1)
        else:
            raise ValueError(f"unknown place {item!r}: use one of {PLACES} or layer indices such as 4,6,9")
    if not points:
        raise ValueError(f"no insertion point found for at={at!r}")
    return sorted(points)


@dataclass
class Insertion:
    yaml: dict
    index_map: dict[int, int]  # original layer index -> new layer index
    inserted: list[int]  # new indices of the inserted layers


def insert_attention(d: dict, attn: str, at="neck", args=(), kwargs=None, gated: bool = False) -> Insertion:
    """Return a copy of model dict ``d`` with ``attn`` inserted at ``at``, indices renumbered."""
    info = get_attention_info(attn)
    d = copy.deepcopy(d)
    d.pop("yaml_file", None)
    nb = len(d["backbone"])
    rows = d["backbone"] + d["head"]
    points = insertion_points(d, at)
    pset = set(points)
    new_index = {i: i + sum(p < i for p in points) for i in range(len(rows))}
    attn_index = {p: new_index[p] + 1 for p in points}

    kw = dict(kwargs or {})
    if gated:
        kw["gated"] = True
    attn_args = [*args, kw] if kw else list(args)

    def remap(f: int, i: int) -> int:
        a = _resolve(f, i)
        if a < 0:  # the input image
            return f
        target = attn_index[a] if a in pset else new_index[a]
        return target - new_index[i] if f < 0 else target

    new_backbone, new_head = [], []
    for i, row in enumerate(rows):
        f = row[0]
        f_new = [remap(x, i) for x in f] if isinstance(f, (list, tuple)) else remap(f, i)
        out = new_backbone if i < nb else new_head
        out.append([f_new, *row[1:]])
        if i in pset:
            out.append([-1, 1, info.yaml_name, copy.deepcopy(attn_args)])
    d["backbone"], d["head"] = new_backbone, new_head
    return Insertion(d, new_index, sorted(attn_index.values()))


def _normalise_model_name(name: str) -> str:
    # ultralytics names the anchor-free YOLOv3/YOLOv5 ports yolov3u / yolov5nu, built from yolov3 / yolov5 YAMLs
    m = re.fullmatch(r"(yolov[35](?:-tiny|-spp)?)([nslmx]?)u", name)
    return f"{m.group(1)}{m.group(2)}" if m else name


def load_model_yaml(model: str | Path) -> tuple[dict, str]:
    """A model dict from a family/scale name (``yolov8n``, ``yolo11s``, ``yolov5nu``) or a YAML path."""
    from ultralytics.nn.tasks import yaml_model_load

    p = Path(str(model))
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise FileNotFoundError(f"model YAML {p} does not exist")
        return yaml_model_load(p), p.stem
    name = _normalise_model_name(p.name)
    from ..cfg import CFG_DIR

    if (CFG_DIR / f"{name}.yaml").exists():  # configs shipped with yolo-attention (YOLOv7)
        return yaml_model_load(CFG_DIR / f"{name}.yaml"), name
    try:
        d = yaml_model_load(f"{name}.yaml")
    except (FileNotFoundError, AttributeError, TypeError) as e:
        raise ValueError(
            f"unknown model {model!r}: give a YAML path or a name such as {sorted(FAMILIES.values())} ({e})"
        ) from None
    return d, name


def _flow(v) -> str:
    import yaml

    text = yaml.safe_dump(v, default_flow_style=True, width=10_000)
    return text.removesuffix("\n...\n").strip()  # scalars end with a document-end marker


def dump_model_yaml(d: dict, path: str | Path, header: str = "", classic: bool = False) -> Path:
    """Write model dict ``d`` with one flow-style row per line.

    ``classic=True`` writes the classic YOLOv5/v7/v9 repositories' layout: each part a bracketed
    list of rows, ASCII only (they read model YAMLs with ``encoding='ascii', errors='ignore'``),
    and ``scale`` kept (ultralytics derives it from the file name instead).
    """
    path = Path(path)
    skip = ("backbone", "head", "yaml_file") if classic else ("backbone", "head", "yaml_file", "scale")
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    for k, v in d.items():
        if k in skip:
            continue
        if k == "anchors" and isinstance(v, list) and v and all(isinstance(a, list) for a in v):
            lines.append("anchors:")
            lines += [f"  - {_flow(a)}" for a in v]
        elif isinstance(v, dict):
            lines.append(f"{_flow(k)}:")
            lines += [f"  {_flow(kk)}: {_flow(vv)}" for kk, vv in v.items()]
        else:
            lines.append(f"{_flow(k)}: {_flow(v)}")
    i = 0
    for part in ("backbone", "head"):
        rows = d[part]
        if classic:
            lines += ["", f"{part}:", "  # [from, number, module, args]"]
            if not rows:
                lines.append("  []")
                continue
            for j, row in enumerate(rows):
                lines.append(f"  {'[' if j == 0 else ' '}{_flow(row)},  # {i}")
                i += 1
            lines.append("  ]")
        else:
            lines.append(f"{part}:")
            for row in rows:
                lines.append(f"  - {_flow(row)}  # {i}")
                i += 1
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if classic:
        path.write_text(text.encode("ascii", "replace").decode("ascii"), encoding="ascii")
    else:
        path.write_text(text)
    return path


def make_attention_yaml(
    model: str | Path,
    attn: str,
    at="neck",
    out: str | Path | None = None,
    args=(),
    kwargs=None,
    gated: bool = False,
) -> Path:
    """Write ``<model>-<attn>-<place>.yaml`` (or ``out``) with ``attn`` inserted at ``at``; return its path."""
    from ultralytics.nn.tasks import guess_model_scale

    d, stem = load_model_yaml(model)
    info = get_attention_info(attn)
    ins = insert_attention(d, attn, at, args, kwargs, gated)
    place = str(at).replace(",", "_") if not isinstance(at, (list, tuple)) else "_".join(map(str, at))
    out = Path(out) if out is not None else Path(f"{stem}-{info.name}-{place}.yaml")
    scale = ins.yaml.get("scale")
    if ins.yaml.get("scales") and scale and guess_model_scale(out) != scale:
        # ultralytics takes the scale from the file name; a name without it would build the first scale
        ins.yaml["scales"] = {scale: ins.yaml["scales"][scale]}
    header = (
        f"{stem} with {info.cls.__name__} ({info.citation}) inserted at {at}: new layers "
        f"{ins.inserted}.\nGenerated by yolo-attention from ultralytics' bundled YAML; needs `import yolo_attention` "
        "(or the `yolo-attention yolo` command)."
    )
    return dump_model_yaml(ins.yaml, out, header)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="yolo-attention yaml", description="Write a model YAML with an attention module inserted."
    )
    parser.add_argument("model", help="family and scale (yolov8n, yolo11s, yolov5nu, yolov10n, ...) or a YAML path")
    parser.add_argument("--attn", required=True, help="registered module name (se, a2, bam, bra, biformer, ...)")
    parser.add_argument("--at", default="neck", help="backbone, neck, sppf and/or layer indices, comma-separated")
    parser.add_argument("--format", choices=("ultralytics", "classic"), default="ultralytics")
    parser.add_argument("--gated", action="store_true", help="wrap in GatedAttention (starts as the identity)")
    parser.add_argument("--kwargs", default="", help="module keywords as YAML/JSON, e.g. '{rd_ratio: 0.25}'")
    parser.add_argument("-o", "--out", default=None, help="output path (default <model>-<attn>-<at>.yaml)")
    a = parser.parse_args(argv)
    import yaml

    try:
        kwargs = yaml.safe_load(a.kwargs) if a.kwargs else {}
        if not isinstance(kwargs, dict):
            raise ValueError(f"--kwargs must be a mapping, got {a.kwargs!r}")
        get_attention_info(a.attn)
        if a.format == "classic":
            from .classic import make_classic_yaml

            path = make_classic_yaml(a.model, a.attn, a.at, out=a.out, kwargs=kwargs, gated=a.gated)
        else:
            path = make_attention_yaml(a.model, a.attn, a.at, out=a.out, kwargs=kwargs, gated=a.gated)
    except (KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"yolo-attention yaml: error: {msg}", file=sys.stderr)
        return 2
    print(path)
    return 0
