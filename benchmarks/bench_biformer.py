#!/usr/bin/env python
"""Training-step cost of BRA (arXiv:2303.08810): our fast path vs the official algorithm.

One training step = forward + backward of one module (input and all parameters require
gradients; a fixed random output gradient). Both modules get the same weights
(``num_heads=8, n_win=7, topk=4, side_dwconv=3``, the official defaults) and the same input.

Time: the two implementations are run interleaved, round after round (the order alternates
each round), after warm-up steps; the table reports the median step time of each and the
median of the per-round ratios (robust to other processes loading the machine). On CUDA each
step is bracketed by ``torch.cuda.synchronize()``.

Peak memory is measured separately, one step per implementation:

* CUDA: ``torch.cuda.max_memory_allocated()`` during the step minus the memory allocated
  before it (input, weights); the absolute peak is kept in the JSON too.
* CPU: the peak of the running sum of all allocations and frees that the PyTorch CPU
  allocator reports to ``torch.profiler`` (``profile_memory=True``) during the step, i.e.
  also measured above what was allocated before the step. The JSON also keeps the bytes of
  the tensors autograd saves for backward (a ``saved_tensors_hooks`` tally, unique storages).

    python benchmarks/bench_biformer.py --device cpu
    python benchmarks/bench_biformer.py --device cuda --dtype float32,float16,bfloat16

Writes ``benchmarks/results/biformer_{device}.json`` and ``.md`` (``--tag`` appends a suffix).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from official_bra import OfficialBRA  # noqa: E402

from yolo_attention.bench import machine_info  # noqa: E402
from yolo_attention.modules.biformer import BiLevelRoutingAttention  # noqa: E402
from yolo_attention.ops import triton_bra, trust  # noqa: E402

DEFAULT_SHAPES = {
    "cpu": "2x64x84,2x128x42,2x256x21",
    "cuda": "16x64x84,16x128x42,16x256x21,4x128x154",
}
DEFAULT_DTYPES = {"cpu": "float32", "cuda": "float32,float16,bfloat16"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MIB = 2**20
# ours: (kernel, recompute) attributes of BiLevelRoutingAttention per --ours-modes name
MODES = {
    "auto": ("auto", None),  # the defaults: Triton where a recorded GPU check passed, else SDPA (see ops/trust.py)
    "triton": ("triton", None),
    "saved": ("sdpa", False),  # SDPA on gathered K/V, kept for backward
    "recompute": ("sdpa", True),  # SDPA, recomputed chunk by chunk in backward
}


def machine_description(device: str) -> dict:
    """The package's machine description, with this script's key for the load at start."""
    info = machine_info(device)
    info["date_utc"] = info["date_utc"].removesuffix(" UTC")  # the report appends " UTC"
    if "load_average_1m_5m_15m" in info:
        info["load_average_at_start"] = info.pop("load_average_1m_5m_15m")
    return info


def parse_shapes(text: str):
    shapes = []
    for item in text.split(","):
        n, c, s = (int(v) for v in item.lower().split("x")[:3])
        shapes.append((n, c, s))
    return shapes


def make_modules(channels: int, device, dtype, ours_modes):
    torch.manual_seed(0)
    ours = BiLevelRoutingAttention(channels, num_heads=8, n_win=7, topk=4, side_dwconv=3)
    official = OfficialBRA(channels, num_heads=8, n_win=7, topk=4, side_dwconv=3)
    official.load_state_dict(ours.state_dict())
    impls = {"official": official.to(device, dtype)}
    for mode in ours_modes:
        m = ours if mode == ours_modes[0] else BiLevelRoutingAttention(channels, 8, 7, 4, 3)
        m.load_state_dict(ours.state_dict())
        m.kernel, m.recompute = MODES[mode]
        impls["ours" if mode == "auto" else f"ours-{mode}"] = m.to(device, dtype)
    return impls


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(module, x, grad):
    module.zero_grad(set_to_none=True)
    x.grad = None
    module(x).backward(grad)


def timed_step(module, x, grad, device) -> tuple[float, float]:
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    train_step(module, x, grad)
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def saved_bytes(module, x, grad) -> int:
    """Bytes of the (unique) tensors autograd saves for backward in one step."""
    seen = {}

    def pack(t):
        try:
            key = (t.untyped_storage().data_ptr(), t.device)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except Exception:  # noqa: BLE001  (tensor subclasses without storage)
            pass
        return t

    module.zero_grad(set_to_none=True)
    x.grad = None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    y.backward(grad)
    return sum(seen.values())


def peak_memory(module, x, grad, device) -> dict:
    if device.type == "cuda":
        module.zero_grad(set_to_none=True)
        x.grad = None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train_step(module, x, grad)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mib": (peak - base) / MIB, "peak_abs_mib": peak / MIB}
    from torch.profiler import ProfilerActivity, profile

    module.zero_grad(set_to_none=True)
    x.grad = None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(module, x, grad)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events = [e for e in events if str(e.device_type()).endswith("CPU")]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return {"peak_mib": peak / MIB}


def bench_shape(shape, dtype_name, device, args, ours_modes) -> dict:
    n, c, s = shape
    dtype = DTYPES[dtype_name]
    impls = make_modules(c, device, dtype, ours_modes)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, s, s, generator=gen).to(device, dtype).requires_grad_(True)
    grad = torch.randn(n, c, s, s, generator=gen).to(device, dtype)

    with torch.no_grad():  # same function (routing may differ on low-precision near-ties)
        ref = impls["official"](x).float()
        diffs = {k: float((m(x).float() - ref).abs().max()) for k, m in impls.items() if k != "official"}

    names = list(impls)
    for _ in range(args.warmup):
        for k in names:
            timed_step(impls[k], x, grad, device)
    wall = {k: [] for k in names}
    cpu = {k: [] for k in names}
    ratios = {k: [] for k in names if k != "official"}
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        this = {}
        for k in order:
            tw, tc = timed_step(impls[k], x, grad, device)
            wall[k].append(tw)
            cpu[k].append(tc)
            this[k] = tw
        for k in ratios:
            ratios[k].append(this["official"] / this[k])

    out = {
        "shape": list(shape),
        "dtype": dtype_name,
        "max_abs_diff_vs_official": diffs,
        "impls": {},
    }
    for k in names:
        mem = peak_memory(impls[k], x, grad, device)
        out["impls"][k] = {
            "median_ms": 1e3 * statistics.median(wall[k]),
            "min_ms": 1e3 * min(wall[k]),
            "median_cpu_ms": 1e3 * statistics.median(cpu[k]),
            "saved_for_backward_mib": saved_bytes(impls[k], x, grad) / MIB,
            **mem,
        }
    for k in ratios:
        o, m = out["impls"]["official"], out["impls"][k]
        m["speedup_median_of_ratios"] = statistics.median(ratios[k])
        m["speedup_of_medians"] = o["median_ms"] / m["median_ms"]
        m["memory_ratio"] = o["peak_mib"] / m["peak_mib"] if m["peak_mib"] > 0 else float("inf")
    del impls
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def render(results, machine, args, memory_method) -> str:
    lines = [
        f"BRA training step (forward + backward, one module), device `{args.device}`",
        "",
        f"- machine: {machine.get('gpu', machine['cpu'])}; CPU {machine['cpu']} ({machine['logical_cpus']} logical CPUs), "
        f"torch {machine['torch']}, {machine['torch_threads']} torch threads, {machine['date_utc']} UTC",
    ]
    if "load_average_at_start" in machine:
        lines.append(
            f"- load average (1/5/15 min) at start {machine['load_average_at_start']}, "
            f"at end {machine.get('load_average_at_end')}"
        )
    lines += [
        f"- {args.warmup} warm-up steps, then {args.repeats} interleaved rounds; speed-up = median of per-round "
        "official/ours time ratios; ms = median step time",
        f"- peak memory: {memory_method}",
        "- impl `ours`: the module's defaults (`kernel='auto'`: the Triton kernels for the dtypes in "
        f"`auto_uses_triton` = {machine.get('auto_uses_triton')}, otherwise SDPA on gathered K/V, recomputed in "
        "backward on CUDA, kept for backward on CPU); `ours-saved` / `ours-recompute`: SDPA backend with "
        "`recompute=False` / `True`; `ours-triton`: `kernel='triton'`",
        "",
        "| shape (N, C, H=W) | dtype | impl | official ms | ours ms | speed-up | official peak MiB | ours peak MiB | memory ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        o = r["impls"]["official"]
        for k, m in r["impls"].items():
            if k == "official":
                continue
            lines.append(
                f"| {tuple(r['shape'])} | {r['dtype']} | {k} | {o['median_ms']:.1f} | {m['median_ms']:.1f} | "
                f"{m['speedup_median_of_ratios']:.2f}x | {o['peak_mib']:.1f} | {m['peak_mib']:.1f} | {m['memory_ratio']:.1f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", default=None, help="comma-separated: float32,float16,bfloat16")
    p.add_argument("--shapes", default=None, help="comma-separated NxCxS (H=W=S)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default: cpu 15, cuda 50)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per implementation (cpu 2, cuda 10)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--ours-modes",
        default="auto",
        help="comma-separated variants of ours: auto (the module's defaults), triton, saved (SDPA, "
        "recompute=False), recompute (SDPA, recompute=True)",
    )
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tag", default="", help="suffix for the output file names")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("CUDA is not available")
    args.repeats = args.repeats or (15 if device.type == "cpu" else 50)
    args.warmup = args.warmup if args.warmup is not None else (2 if device.type == "cpu" else 10)
    shapes = parse_shapes(args.shapes or DEFAULT_SHAPES[device.type])
    dtypes = (args.dtype or DEFAULT_DTYPES[device.type]).split(",")
    ours_modes = args.ours_modes.split(",")
    memory_method = (
        "torch.cuda.max_memory_allocated() during the step minus memory allocated before it"
        if device.type == "cuda"
        else "peak of the running sum of CPU allocator allocations/frees recorded by torch.profiler "
        "(profile_memory=True) during the step, above what was allocated before it"
    )
    machine = machine_description(device.type)
    machine["auto_uses_triton"] = [  # what kernel="auto" chose here (a GPU record or YOLO_ATTENTION_TRITON)
        d for d in dtypes if triton_bra.available(torch.empty(0, device=device)) and trust.auto_trusts(device, DTYPES[d])
    ]

    print(f"machine: {json.dumps(machine)}")
    header = f"{'shape':<18}{'dtype':<10}{'impl':<16}{'off ms':>9}{'ours ms':>9}{'speedup':>9}{'off MiB':>10}{'ours MiB':>10}{'mem x':>8}"
    print(header)
    results = []
    for dtype_name in dtypes:
        for shape in shapes:
            try:
                r = bench_shape(shape, dtype_name, device, args, ours_modes)
            except torch.OutOfMemoryError as e:  # the official operator may not fit
                print(f"{str(shape):<18}{dtype_name:<10}out of memory: {str(e).splitlines()[0]}")
                results.append({"shape": list(shape), "dtype": dtype_name, "error": "out of memory"})
                torch.cuda.empty_cache()
                continue
            results.append(r)
            o = r["impls"]["official"]
            for k, m in r["impls"].items():
                if k != "official":
                    print(
                        f"{str(tuple(shape)):<18}{dtype_name:<10}{k:<16}{o['median_ms']:>9.1f}{m['median_ms']:>9.1f}"
                        f"{m['speedup_median_of_ratios']:>8.2f}x{o['peak_mib']:>10.1f}{m['peak_mib']:>10.1f}{m['memory_ratio']:>7.1f}x",
                        flush=True,
                    )
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    machine["triton_configs_ok"] = sorted(str(c) for c in triton_bra.OK_CONFIGS)
    machine["triton_configs_failed"] = sorted(str(c) for c in triton_bra.FAILED_CONFIGS)
    if triton_bra.FAILED_CONFIGS:
        print(f"WARNING: Triton configurations fell back to SDPA: {machine['triton_configs_failed']}")

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"biformer_{device.type}{('_' + args.tag) if args.tag else ''}"
    ok = [r for r in results if "error" not in r]
    payload = {
        "benchmark": "BRA training step (forward + backward of one module), ours vs the official algorithm",
        "module": {"num_heads": 8, "n_win": 7, "topk": 4, "side_dwconv": 3},
        "machine": machine,
        "settings": {"repeats": args.repeats, "warmup": args.warmup, "ours_modes": ours_modes},
        "memory_method": memory_method,
        "results": results,
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(render(ok, machine, args, memory_method))
    print(f"wrote {out_dir / (stem + '.json')} and {out_dir / (stem + '.md')}")


if __name__ == "__main__":
    main()
