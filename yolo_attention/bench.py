"""``yolo-attention bench``: parameters, FLOPs, time and memory of each module at YOLO shapes.

For every registered module (or ``--modules``) and every feature-map shape (default: the
P3/P4/P5 maps of a 640x640 input at the YOLOv8 n and s widths), the bench measures

* parameters;
* FLOPs of one forward with :func:`yolo_attention.flops.count_flops` (softmax, gates,
  pooling, norms, top-k included), its matmul/convolution part alone (what torch's
  ``FlopCounterMode`` counts), the figure ultralytics' method reports (thop, when installed)
  and the FLOPs of a training step (train-mode forward + backward);
* forward time (eval mode, ``torch.no_grad()``) and forward+backward time (train mode, the
  input requiring grad as for a module inside a network), each the median of ``--repeats``
  runs after ``--warmup`` runs;
* peak memory of one forward and of one forward+backward, above what was allocated before
  (parameters and input). CUDA: ``torch.cuda.max_memory_allocated()`` after
  ``reset_peak_memory_stats()``. CPU, which has no allocator statistics: every tensor storage
  created by an operation in the step is tracked through a ``TorchDispatchMode`` and released
  through a finalizer on the storage, and the peak of their total size is reported. That
  covers activations, saved tensors and gradients; scratch buffers that kernels allocate
  internally (e.g. im2col, attention workspaces) are not visible to it.

Results are printed as a table and written as JSON and Markdown (with a description of the
machine) under ``benchmarks/results/`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .utils import thop_flops

__all__ = ["main", "run_bench", "machine_info", "time_ms", "peak_mb", "parse_shapes", "DEFAULT_SHAPES", "COLUMNS"]

# P3/P4/P5 maps of a 640x640 input (strides 8/16/32) at the YOLOv8 n and s widths
DEFAULT_SHAPES = {
    "n": [(64, 80, 80), (128, 40, 40), (256, 20, 20)],
    "s": [(128, 80, 80), (256, 40, 40), (512, 20, 20)],
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# (key in JSON rows, table header, format); FLOPs are stored as integers and shown in MFLOPs
COLUMNS = [
    ("module", "module", "{}"),
    ("shape", "C x H x W", "{}"),
    ("params", "params", "{:,}"),
    ("flops", "MFLOPs", "mflops"),
    ("flops_matmul", "matmul-only MFLOPs", "mflops"),
    ("flops_thop", "thop MFLOPs", "mflops"),
    ("other_pct", "not in matmul-only", "{:.1f}%"),
    ("flops_train", "train-step MFLOPs", "mflops"),
    ("fwd_ms", "fwd ms", "{:.2f}"),
    ("fwd_ms_min", "fwd ms (best)", "{:.2f}"),
    ("fwd_bwd_ms", "fwd+bwd ms", "{:.2f}"),
    ("fwd_bwd_ms_min", "fwd+bwd ms (best)", "{:.2f}"),
    ("peak_fwd_mb", "peak fwd MB", "{:.2f}"),
    ("peak_fwd_bwd_mb", "peak fwd+bwd MB", "{:.2f}"),
]


# ----------------------------------------------------------------------------- argument parsing


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """``"64x80x80,128x40x40"`` -> ``[(64, 80, 80), (128, 40, 40)]``; ValueError when malformed."""
    shapes = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)[xX](\d+)[xX](\d+)", item)
        if not m or min(int(g) for g in m.groups()) < 1:
            raise ValueError(
                f"malformed shape {item!r}: expected CxHxW with positive integers, e.g. 64x80x80 "
                "(channels x height x width; separate shapes with commas)"
            )
        shapes.append(tuple(int(g) for g in m.groups()))
    if not shapes:
        raise ValueError("no shape given: expected CxHxW[,CxHxW...], e.g. 64x80x80,128x40x40")
    return shapes


def _parse_modules(text: str | None) -> list[str]:
    from .registry import get_attention_info, list_attention

    if text is None:
        return [info.name for info in list_attention()]
    names = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        try:
            info = get_attention_info(item)
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        if info.name not in names:
            names.append(info.name)
    if not names:
        raise ValueError("no module given: expected names such as se,bam (see `yolo-attention list`)")
    return names


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yolo-attention bench",
        description="Parameters, FLOPs (attention's own operations included), time and peak memory of "
        "attention modules at YOLO feature-map shapes.",
    )
    p.add_argument("--modules", help="comma-separated module names (default: all registered)")
    p.add_argument(
        "--shapes",
        help="comma-separated CxHxW feature maps (default: P3/P4/P5 of a 640 input at the --widths widths)",
    )
    p.add_argument("--widths", default="n,s", help="YOLOv8 widths for the default shapes: n, s or n,s (default: n,s)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="parameter and input dtype (default: float32)")
    p.add_argument("--warmup", type=int, help="untimed runs before timing (default: 1 on CPU, 10 on CUDA)")
    p.add_argument("--repeats", type=int, help="timed runs; the median is reported (default: 5 on CPU, 50 on CUDA)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-backward", action="store_true", help="skip forward+backward time and memory")
    p.add_argument("--no-thop", action="store_true", help="skip ultralytics' thop figure")
    p.add_argument("--out", default="benchmarks/results", help="directory for the JSON and Markdown results (default: benchmarks/results)")
    p.add_argument("--name", help="file stem (default: bench_<device>[_<dtype>][_quick])")
    p.add_argument("--quick", action="store_true", help="n widths only, 1 warm-up, 3 repeats (smoke test)")
    return p


# ----------------------------------------------------------------------------- measurements


class _CPUPeakMemory(TorchDispatchMode):
    """Peak total size of the tensor storages created by operations inside the block.

    A storage counts from the operation that creates it until it is freed (a finalizer on the
    storage; PyTorch keeps one Python object per storage, so the finalizer runs when the last
    tensor, view or autograd reference to it goes). Outputs sharing a storage with an input
    (views, in-place results) are not new memory.
    """

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        if key in self._live:
            self._live.discard(key)
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            id(t.untyped_storage())
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = id(storage)
            nbytes = storage.nbytes()
            if key in inputs or key in self._live or nbytes == 0:
                continue
            self._live.add(key)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, key, nbytes).atexit = False
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, warmup: int, repeats: int, device: torch.device) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def peak_mb(fn, device: torch.device) -> float:
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    tracker = _CPUPeakMemory()
    with tracker:
        fn()
    return tracker.peak / 2**20


def bench_one(
    name: str,
    shape: tuple[int, int, int],
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    warmup: int,
    repeats: int,
    backward: bool = True,
    thop: bool = True,
) -> dict:
    """Measure one module at one shape; returns a result row (see ``COLUMNS``)."""
    from .flops import count_flops
    from .registry import create_attention, get_attention_info

    info = get_attention_info(name)
    c, h, w = shape
    row: dict = {
        "module": info.name,
        "class": info.cls.__name__,
        "kind": info.kind,
        "shape": f"{c}x{h}x{w}",
        "channels": c,
        "height": h,
        "width": w,
        "batch": batch,
    }
    torch.manual_seed(0)
    module = create_attention(name, c).to(device=device, dtype=dtype)
    x = torch.randn(batch, c, h, w, device=device, dtype=dtype)
    row["params"] = sum(p.numel() for p in module.parameters())

    fwd = count_flops(module, x)
    row["flops"] = fwd.total
    row["flops_matmul"] = fwd.matmul
    row["flops_torch_counter"] = fwd.torch_builtin
    row["other_pct"] = 100.0 * fwd.other / fwd.total if fwd.total else 0.0
    row["flops_by_op"] = fwd.by_op
    if fwd.uncounted:
        row["uncounted_ops"] = fwd.uncounted
    row["flops_thop"] = thop_flops(module, x) if thop else None
    row["flops_train"] = count_flops(module, x, training=True).total if backward else None

    module.eval()

    def forward():
        with torch.no_grad():
            module(x)

    row["fwd_ms"], row["fwd_ms_min"] = time_ms(forward, warmup, repeats, device)
    row["peak_fwd_mb"] = peak_mb(forward, device)

    if backward:
        module.train()
        xg = x.detach().clone().requires_grad_(True)
        with torch.no_grad():
            grad = torch.randn_like(module(xg))

        def forward_backward():
            module.zero_grad(set_to_none=True)
            xg.grad = None
            module(xg).backward(grad)

        row["fwd_bwd_ms"], row["fwd_bwd_ms_min"] = time_ms(forward_backward, warmup, repeats, device)
        module.zero_grad(set_to_none=True)
        xg.grad = None
        row["peak_fwd_bwd_mb"] = peak_mb(forward_backward, device)
        module.zero_grad(set_to_none=True)
    else:
        row["fwd_bwd_ms"] = row["fwd_bwd_ms_min"] = row["peak_fwd_bwd_mb"] = None
    return row


# ----------------------------------------------------------------------------- machine and output


def machine_info(device: torch.device | str = "cpu") -> dict:
    """CPU model, core and thread counts, torch/Python versions, GPU when CUDA is used."""
    device = torch.device(device)
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        info["load_average_1m_5m_15m"] = [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        pass
    try:
        import thop

        info["thop"] = str(getattr(thop, "__version__", "?"))
    except ImportError:
        info["thop"] = None
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info["gpu"] = torch.cuda.get_device_name(idx)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def code_info() -> dict:
    """Package version and, in a git checkout, the commit and the package files changed since it."""
    import subprocess

    import yolo_attention

    info = {"yolo_attention": getattr(yolo_attention, "__version__", "?")}
    root = Path(yolo_attention.__file__).resolve().parent.parent
    try:
        run = lambda *cmd: subprocess.run(  # noqa: E731
            ["git", *cmd], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout
        info["git_commit"] = run("rev-parse", "--short", "HEAD").strip()
        status = run("status", "--porcelain", "--", "yolo_attention").splitlines()
        changed = [line[3:].strip() for line in status if len(line) > 3]
        info["uncommitted_package_files"] = sorted(changed)
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if spec == "mflops":
        return f"{value / 1e6:,.3f}"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def format_table(rows: list[dict], markdown: bool = False) -> str:
    headers = [h for _, h, _ in COLUMNS]
    body = []
    for r in rows:
        if r.get("error"):
            body.append([r["module"], r["shape"], f"error: {r['error']}"] + [""] * (len(COLUMNS) - 3))
        else:
            body.append([_fmt(r.get(k), spec) for k, _, spec in COLUMNS])
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(headers) - 2)) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    fmt_row = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    return "\n".join([fmt_row(headers), fmt_row(["-" * w for w in widths])] + [fmt_row(b) for b in body])


_METHOD_NOTES = [
    "MFLOPs: yolo_attention.flops.count_flops, one forward in eval mode; a multiply-add is 2 FLOPs, and "
    "softmax, gates, elementwise products, pooling, norms and top-k are counted too (cost model in "
    "yolo_attention/flops.py).",
    "matmul-only MFLOPs: the matrix-product and convolution part alone, i.e. what torch's FlopCounterMode "
    "counts when it has a formula for every kernel that runs (it has none for CPU flash attention; "
    "'flops_torch_counter' in the JSON is its unmodified figure).",
    "thop MFLOPs: 2 x the multiply-accumulates of the installed thop (version in the machine line) at the full "
    "shape, the method behind ultralytics' GFLOPs. ultralytics-thop >= 2 counts layers with a rule (convolutions, "
    "norms, nn.Softmax modules) and functional matmul/bmm/SDPA products; the original thop 0.1.x counts layers only. "
    "Neither counts functional softmax, sigmoid gates, elementwise products, mean pooling or top-k.",
    "not in matmul-only: share of the total that the matmul-only figure leaves out.",
    "train-step MFLOPs: train-mode forward + backward (parameter and input gradients), no optimizer step.",
    "fwd ms: eval mode under torch.no_grad(); fwd+bwd ms: train mode, input requiring grad, backward from a "
    "fixed random gradient. Median of the timed repeats after the warm-up runs; '(best)': the fastest repeat, "
    "the least disturbed one on a shared machine.",
    "peak MB: memory allocated during one step above what existed before it (parameters, input). CUDA: "
    "torch.cuda.max_memory_allocated after reset_peak_memory_stats. CPU: peak total size of the tensor "
    "storages created during the step (tracked with a TorchDispatchMode and storage finalizers); kernel-"
    "internal scratch buffers are not included.",
]


def _write_results(result: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    m, cfg = result["machine"], result["config"]
    lines = [
        f"# yolo-attention bench ({cfg['device']}, {cfg['dtype']}, batch {cfg['batch']})",
        "",
        f"- Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} with {m['torch_threads']} "
        f"thread{'' if m['torch_threads'] == 1 else 's'}, Python {m['python']}, thop {m.get('thop') or 'not installed'}"
        + (f"; GPU: {m['gpu']} (CUDA {m['cuda']})" if "gpu" in m else ""),
        f"- Date: {m['date_utc']}" + (
            f"; load average at start (1/5/15 min): {m['load_average_1m_5m_15m']}"
            if "load_average_1m_5m_15m" in m
            else ""
        ),
        f"- Timing: {cfg['warmup']} warm-up run(s), median of {cfg['repeats']} timed run(s)",
        f"- Code: yolo_attention {result['code'].get('yolo_attention')}"
        + (f", git {result['code']['git_commit']}" if result["code"].get("git_commit") else "")
        + (
            f" with uncommitted changes in {', '.join(result['code']['uncommitted_package_files'])}"
            if result["code"].get("uncommitted_package_files")
            else ""
        ),
        f"- Command: `{cfg['command']}`",
        "",
        format_table(result["rows"], markdown=True),
        "",
        "Columns:",
        "",
    ]
    lines += [f"- {note}" for note in _METHOD_NOTES]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def run_bench(
    modules: list[str],
    shapes: list[tuple[int, int, int]],
    batch: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    warmup: int = 1,
    repeats: int = 5,
    backward: bool = True,
    thop: bool = True,
    log=print,
) -> list[dict]:
    """Measure every module at every shape; failing configurations give a row with ``error``."""
    device = torch.device(device)
    rows = []
    for name in modules:
        for shape in shapes:
            t0 = time.perf_counter()
            try:
                row = bench_one(name, shape, batch, device, dtype, warmup, repeats, backward, thop)
            except Exception as e:  # noqa: BLE001 - one bad configuration must not end the run
                row = {"module": name, "shape": "x".join(map(str, shape)), "batch": batch, "error": f"{type(e).__name__}: {e}"}
            row["bench_s"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            if log:
                status = f"error: {row['error']}" if row.get("error") else f"{row['flops'] / 1e6:,.2f} MFLOPs, {row['fwd_ms']:.2f} ms"
                log(f"  {name:<10} {row['shape']:<12} {status}  ({row['bench_s']} s)")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    import yolo_attention  # noqa: F401  (registers the built-in modules)

    try:
        modules = _parse_modules(args.modules)
    except ValueError as e:
        parser.error(f"--modules: {e}")
    if args.shapes is not None:
        try:
            shapes = parse_shapes(args.shapes)
        except ValueError as e:
            parser.error(f"--shapes: {e}")
    else:
        widths = [w.strip() for w in args.widths.split(",") if w.strip()]
        if args.quick:
            widths = widths[:1]
        unknown = [w for w in widths if w not in DEFAULT_SHAPES]
        if unknown or not widths:
            parser.error(f"--widths: expected a comma-separated subset of {sorted(DEFAULT_SHAPES)}, got {args.widths!r}")
        shapes = [s for w in widths for s in DEFAULT_SHAPES[w]]
    for flag, value, low in (("--batch", args.batch, 1), ("--warmup", args.warmup, 0), ("--repeats", args.repeats, 1)):
        if value is not None and value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        parser.error(f"--device: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine (torch was built without it or no GPU)")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device: expected cpu or cuda[:N], got {args.device!r}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else (10 if cuda else 1))
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else (50 if cuda else 5))
    dtype = DTYPES[args.dtype]

    machine = machine_info(device)
    print(
        f"yolo-attention bench: {len(modules)} module(s) x {len(shapes)} shape(s), batch {args.batch}, "
        f"{device} {args.dtype}, warm-up {warmup}, repeats {repeats}\n"
        f"machine: {machine['cpu']}, {machine['torch_threads']} torch threads, torch {machine['torch']}"
        + (f", GPU {machine['gpu']}" if "gpu" in machine else "")
    )
    t0 = time.perf_counter()
    rows = run_bench(
        modules, shapes, args.batch, device, dtype, warmup, repeats, backward=not args.no_backward, thop=not args.no_thop
    )
    elapsed = time.perf_counter() - t0
    result = {
        "machine": machine,
        "code": code_info(),
        "config": {
            "modules": modules,
            "shapes": ["x".join(map(str, s)) for s in shapes],
            "batch": args.batch,
            "device": str(device),
            "dtype": args.dtype,
            "warmup": warmup,
            "repeats": repeats,
            "command": " ".join(["yolo-attention bench", *(sys.argv[1:] if argv is None else list(argv))]),
            "elapsed_s": round(elapsed, 1),
        },
        "columns": {key: header for key, header, _ in COLUMNS},
        "notes": _METHOD_NOTES,
        "rows": rows,
    }
    stem = args.name or "bench_" + device.type + ("" if args.dtype == "float32" else f"_{args.dtype}") + (
        "_quick" if args.quick else ""
    )
    json_path, md_path = _write_results(result, Path(args.out), stem)
    print()
    print(format_table(rows))
    print(f"\n{elapsed:.1f} s; wrote {json_path} and {md_path}")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
