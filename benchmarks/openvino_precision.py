#!/usr/bin/env python
"""What OpenVINO's default inference precision does to detection accuracy, per attention module.

OpenVINO's CPU plugin runs a model at bfloat16 on CPUs with AVX512-BF16 or AMX and at float32
elsewhere, unless the caller asks (``INFERENCE_PRECISION_HINT``); ultralytics' OpenVINO predictor
and validator never ask on x86 Linux. For each variant (yolov8n without attention, and with each
module at the neck) this script

1. trains yolov8n on the generated dataset with the ablation runner's default recipe
   (``yolo_attention.ablate``: SGD, lr0 0.02, one warm-up epoch, no mosaic; same data options),
2. exports it with ``model.export(format="openvino")`` (float32 weights, static shape: the default),
3. validates with ultralytics (``YOLO(...).val``, mAP50-95 and mAP50 on the validation split, all
   columns with ``rect=False``, i.e. on the same imgsz x imgsz inputs as the static export):

   * ``pytorch``: the trained ``last.pt``,
   * ``pytorch bf16 (emulated)``: the same model with every operation of the backbone, neck and
     attention reading bfloat16-rounded inputs and writing bfloat16-rounded outputs (computing in
     float32, as bfloat16 matrix units accumulate); the Detect head stays float32, as OpenVINO keeps
     the tail of a graph in float32. This is what bfloat16 inference does on a CPU that has it,
     measured on any CPU; OpenVINO fuses operations, so it rounds less often than this emulation,
   * ``openvino default``: the export as ultralytics runs it, at the CPU plugin's default precision
     (the precision it really ran at is recorded),
   * ``openvino f32``: the same inside ``openvino_precision("f32")``;

4. records the largest output differences from PyTorch (boxes in pixels, class scores) on the
   validation images, for the three other columns.

    python benchmarks/openvino_precision.py                     # none + every registered module
    python benchmarks/openvino_precision.py --attn none,se,bra --epochs 10

Writes ``benchmarks/results/openvino_precision.json`` and ``.md`` (``--tag`` appends a suffix).
Trained weights and measured rows are kept under ``--workdir`` and reused by later runs with the
same settings (``--remeasure`` measures again), so variants can be run by several processes
(``--attn`` lists without overlap) and tabled at once by a last run over all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-attention-cfg-"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_map  # noqa: E402

import yolo_attention  # noqa: E402
from yolo_attention.ablate import DEFAULT_DATA, DEFAULT_TRAIN_ARGS, DEFAULTS  # noqa: E402
from yolo_attention.bench import machine_info  # noqa: E402
from yolo_attention.data.synthetic import generate_synthetic  # noqa: E402
from yolo_attention.integrations.openvino_precision import compiled_precision, openvino_precision  # noqa: E402

COLUMNS = ("pytorch", "pytorch_bf16_emulated", "openvino_default", "openvino_f32")
N_GAP_IMAGES = 16  # validation images used for the raw output differences


@dataclass(frozen=True)
class Settings:
    """Everything that changes the trained weights (a run with other settings retrains)."""

    epochs: int
    imgsz: int
    batch: int
    n_train: int
    n_val: int
    seed: int = 0

    def key(self) -> str:
        return f"e{self.epochs}-i{self.imgsz}-b{self.batch}-t{self.n_train}-v{self.n_val}-s{self.seed}"


@dataclass
class Accuracy:
    map50_95: float
    map50: float
    precision: str  # what the model ran at: "f32", "bf16 (emulated)", or what OpenVINO reported


@dataclass
class OutputGap:
    """Largest absolute differences from PyTorch float32 on the same images."""

    box_px: float
    score: float


@dataclass
class Row:
    variant: str
    accuracy: dict[str, Accuracy] = field(default_factory=dict)
    gap: dict[str, OutputGap] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- bf16 emulation


def _round_bf16(t):
    if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
        return t.to(torch.bfloat16).to(torch.float32)
    return t


def _round_bf16_in_place(t):
    if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
        t.copy_(t.to(torch.bfloat16))
    return t


class BF16Rounding(TorchDispatchMode):
    """While ``active``: every operation reads bfloat16-rounded float32 inputs and its float32
    outputs are rounded to bfloat16; the operation itself computes in float32.

    Views pass through untouched (a rounded copy would no longer alias its base), and in-place
    operations round what they wrote, in place."""

    active = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.active or func.is_view:
            return func(*args, **kwargs)
        if func._schema.is_mutable:
            return tree_map(_round_bf16_in_place, func(*args, **kwargs))
        args, kwargs = tree_map(_round_bf16, (args, kwargs))
        return tree_map(_round_bf16, func(*args, **kwargs))


@contextlib.contextmanager
def bf16_emulation(det: torch.nn.Module):
    """Emulate bfloat16 inference of ``det`` (an ultralytics DetectionModel) up to its Detect head."""
    mode = BF16Rounding()

    def start(*_):
        mode.active = True

    def stop(*_):
        mode.active = False

    handles = [det.register_forward_pre_hook(start), det.model[-1].register_forward_pre_hook(stop),
               det.register_forward_hook(stop)]
    try:
        with mode:
            yield
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------------------------ OpenVINO probes


@contextlib.contextmanager
def recorded_precisions(out: list[str]):
    """Append the inference precision of every OpenVINO model compiled in the block to ``out``."""
    import openvino as ov

    original = ov.Core.compile_model

    def compile_model(self, *args, **kwargs):
        compiled = original(self, *args, **kwargs)
        out.append(compiled_precision(compiled))
        return compiled

    ov.Core.compile_model = compile_model
    try:
        yield
    finally:
        ov.Core.compile_model = original


def cpu_low_precision_support() -> dict:
    """What this CPU offers OpenVINO: its ISA flags for bfloat16 and the plugin's own view."""
    import openvino as ov

    flags: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    core = ov.Core()
    return {
        "openvino": ov.__version__,
        "cpu_flags_bf16": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
        "openvino_cpu_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "openvino_cpu_default_precision": str(core.get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()),
    }


# ------------------------------------------------------------------------------------ train and measure


def train(variant: str, data: str, s: Settings, root: Path) -> Path:
    """Train (or reuse) the variant; return its last.pt."""
    from ultralytics import YOLO

    from yolo_attention.integrations.yaml_gen import make_attention_yaml

    run = root / s.key() / variant
    weights, done = run / "train" / "weights" / "last.pt", run / "trained"
    if done.exists():  # not last.pt alone: ultralytics writes it after every epoch
        return weights
    run.mkdir(parents=True, exist_ok=True)
    cfg = "yolov8n.yaml" if variant == "none" else str(make_attention_yaml("yolov8n", variant, "neck",
                                                                               out=run / f"yolov8n-{variant}.yaml"))
    YOLO(cfg).train(data=data, epochs=s.epochs, imgsz=s.imgsz, batch=s.batch, device="cpu", seed=s.seed,
                    deterministic=True, workers=0, project=str(run), name="train", exist_ok=True, plots=False,
                    verbose=False, amp=False, **DEFAULT_TRAIN_ARGS)
    done.touch()
    return weights


def export_openvino(weights: Path, s: Settings) -> str:
    from ultralytics import YOLO

    return YOLO(str(weights)).export(format="openvino", imgsz=s.imgsz, device="cpu", verbose=False)


def validate(source, data: str, s: Settings) -> tuple[float, float]:
    from ultralytics import YOLO

    model = source if not isinstance(source, (str, Path)) else YOLO(str(source), task="detect")
    # rect=False: the static OpenVINO export is validated on imgsz x imgsz letterboxed inputs, while
    # ultralytics' rectangular validation of a .pt pads by half a stride (160 x 160 for 128 px
    # images); the same input for every column leaves precision as the only difference
    m = model.val(data=data, imgsz=s.imgsz, batch=s.batch, rect=False, device="cpu", workers=0, plots=False,
                  verbose=False)
    return float(m.box.map), float(m.box.map50)


def _val_images(data: str, n: int, imgsz: int) -> torch.Tensor:
    from PIL import Image

    files = sorted((Path(data).parent / "images" / "val").glob("*.png"))[:n]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((imgsz, imgsz))) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def _outputs(run, x: torch.Tensor) -> np.ndarray:
    """Decoded outputs (N, 4 + nc, anchors), one image at a time (static OpenVINO exports take batch 1)."""
    outs = []
    for i in range(len(x)):
        y = run(x[i : i + 1])
        y = y[0] if isinstance(y, (list, tuple)) else y
        outs.append(y.detach().numpy() if isinstance(y, torch.Tensor) else np.asarray(y))
    return np.concatenate(outs)


def _gap(a: np.ndarray, ref: np.ndarray) -> OutputGap:
    return OutputGap(float(np.abs(a[:, :4] - ref[:, :4]).max()), float(np.abs(a[:, 4:] - ref[:, 4:]).max()))


def measure(variant: str, data: str, s: Settings, root: Path) -> Row:
    from ultralytics import YOLO
    from ultralytics.nn.autobackend import AutoBackend

    row, t = Row(variant), time.time()
    weights = train(variant, data, s, root)
    row.seconds["train_or_reuse"] = time.time() - t

    t = time.time()
    row.accuracy["pytorch"] = Accuracy(*validate(weights, data, s), "f32")
    emulated = YOLO(str(weights))
    with bf16_emulation(emulated.model):
        row.accuracy["pytorch_bf16_emulated"] = Accuracy(*validate(emulated, data, s), "bf16 (emulated)")
    ov_dir = export_openvino(weights, s)
    for column, ctx in (("openvino_default", contextlib.nullcontext()), ("openvino_f32", openvino_precision("f32"))):
        ran: list[str] = []
        with ctx, recorded_precisions(ran):
            acc = validate(ov_dir, data, s)
        row.accuracy[column] = Accuracy(*acc, "/".join(sorted(set(ran))) or "?")
    row.seconds["measure"] = time.time() - t

    x = _val_images(data, N_GAP_IMAGES, s.imgsz)
    det = YOLO(str(weights)).model.fuse().eval()
    with torch.no_grad():
        ref = _outputs(det, x)
        with bf16_emulation(det):
            row.gap["pytorch_bf16_emulated"] = _gap(_outputs(det, x), ref)
    for column, ctx in (("openvino_default", contextlib.nullcontext()), ("openvino_f32", openvino_precision("f32"))):
        with ctx:
            backend = AutoBackend(ov_dir, device=torch.device("cpu"), verbose=False)
        row.gap[column] = _gap(_outputs(backend, x), ref)
    return row


def measured(variant: str, data: str, s: Settings, root: Path, remeasure: bool = False) -> Row:
    """The variant's row, measured now or read back from an earlier run with the same settings."""
    saved = root / s.key() / variant / "measured.json"
    if saved.exists() and not remeasure:
        d = json.loads(saved.read_text())
        return Row(d["variant"], {k: Accuracy(**v) for k, v in d["accuracy"].items()},
                   {k: OutputGap(**v) for k, v in d["gap"].items()}, d["seconds"])
    row = measure(variant, data, s, root)
    saved.write_text(json.dumps(asdict(row), indent=1) + "\n")
    return row


# ------------------------------------------------------------------------------------------- report


def markdown(rows: list[Row], s: Settings, cpu: dict, machine: dict) -> str:
    head = ("| variant | PyTorch f32 | PyTorch bf16 (emulated) | OpenVINO default | OpenVINO f32 | "
            "max Δ bf16 emul. (box px / score) | max Δ OV default | max Δ OV f32 |")
    lines = [
        "# OpenVINO inference precision and detection accuracy (yolov8n, attention at the neck)",
        "",
        f"Generated dataset ({s.n_train} train / {s.n_val} val images at {s.imgsz} px, the ablation runner's "
        f"data options), {s.epochs} epochs, batch {s.batch}, seed {s.seed}, CPU. Cells: mAP50-95 (mAP50) "
        "of ultralytics' validation (rect=False: every column sees the same inputs); OpenVINO cells name the "
        "precision OpenVINO reported for the compiled model.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        cells = [f"{r.accuracy[c].map50_95:.4f} ({r.accuracy[c].map50:.4f})"
                 + (f" [{r.accuracy[c].precision}]" if c.startswith("openvino") else "") for c in COLUMNS]
        gaps = [f"{r.gap[c].box_px:.3g} / {r.gap[c].score:.3g}" for c in COLUMNS[1:]]
        lines.append(f"| {r.variant} | " + " | ".join(cells + gaps) + " |")
    lines += [
        "",
        f"- OpenVINO {cpu['openvino']}; CPU {machine.get('cpu')}: bfloat16 ISA flags "
        f"{cpu['cpu_flags_bf16'] or 'none'}, plugin capabilities {cpu['openvino_cpu_capabilities']}, "
        f"default inference precision **{cpu['openvino_cpu_default_precision']}**.",
        "- PyTorch bf16 (emulated): every operation of backbone, neck and attention reads and writes "
        "bfloat16-rounded values and computes in float32; the Detect head runs in float32.",
        f"- max Δ: largest absolute difference from PyTorch float32 on {N_GAP_IMAGES} validation images, "
        "box coordinates in pixels and class scores (sigmoid) separately.",
    ]
    return "\n".join(lines) + "\n"


def _variants(spec: str) -> list[str]:
    if spec == "all":
        return ["none"] + [i.name for i in yolo_attention.list_attention()]
    return [v.strip() for v in spec.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attn", default="all", help="comma-separated variants ('none' = no attention) or 'all'")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--imgsz", type=int, default=DEFAULTS["imgsz"])
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"])
    p.add_argument("--n-train", type=int, default=DEFAULTS["n_train"])
    p.add_argument("--n-val", type=int, default=DEFAULTS["n_val"])
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "yolo-attention-openvino-precision"))
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tag", default="")
    p.add_argument("--remeasure", action="store_true", help="measure again variants measured by an earlier run")
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    s = Settings(a.epochs, a.imgsz, a.batch, a.n_train, a.n_val)
    root = Path(a.workdir)
    data = str(generate_synthetic(root / "data", seed=s.seed, n_train=s.n_train, n_val=s.n_val, imgsz=max(64, s.imgsz),
                                  **DEFAULT_DATA))
    cpu, machine = cpu_low_precision_support(), machine_info("cpu")
    print(f"OpenVINO CPU default precision: {cpu['openvino_cpu_default_precision']} "
          f"(bf16 flags: {cpu['cpu_flags_bf16'] or 'none'})", flush=True)
    rows = []
    for v in _variants(a.attn):
        t = time.time()
        rows.append(measured(v, data, s, root, a.remeasure))
        print(f"{v}: " + ", ".join(f"{c} {rows[-1].accuracy[c].map50_95:.4f}" for c in COLUMNS)
              + f" ({time.time() - t:.0f} s)", flush=True)
    md = markdown(rows, s, cpu, machine)
    print(md)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "openvino_precision" + (f"_{a.tag}" if a.tag else "")
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(json.dumps(
        {"settings": asdict(s), "cpu": cpu, "machine": machine, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
