"""GPU check for the context / self-attention modules at YOLO P3 size (not yet run: no GPU so far).

    python benchmarks/gpu_context_modules.py          # from the repository root, one CUDA GPU, ~2 min

1. Which ``scaled_dot_product_attention`` backends accept the shapes that MHSA and the non-local
   block produce (MHSA's q, k and zero-padded v carry d + H + W columns; a fused backend that
   rejects them means SDPA falls back to the math kernel, which keeps the HW x HW matrix), and
   whether v of width d alone would do (then the padding could go on CUDA).
2. Forward + backward of one module on (16, C, 80, 80), float32 and bfloat16 autocast: median
   time of 5 and torch.cuda.max_memory_allocated, SE as the reference row. A module that runs
   out of memory gets "OOM" in its row.

Writes benchmarks/results/context_cuda.{json,md} (and copies them to $OUT when it is set).
"""

from __future__ import annotations

import json
import os
import shutil
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from yolo_attention import create_attention

NAMES = ["se", "gc", "nonlocal", "crisscross", "polarized", "mhsa", "dat"]
SHAPES = [(16, 64, 80, 80), (16, 256, 40, 40)]
dev = torch.device("cuda")


def backends_for(q, k, v) -> dict:
    ok = {}
    for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        try:
            with sdpa_kernel(b):
                F.scaled_dot_product_attention(q, k, v, scale=1.0).sum().backward()
            ok[b.name] = True
        except RuntimeError:
            ok[b.name] = False
    return ok


def sdpa_table() -> dict:
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        # MHSA at (16, 64, 80, 80): 4 heads, d = 16, q/k/v width 16 + 160 = 176 (v zero-padded)
        q = torch.randn(16, 4, 6400, 176, device=dev, dtype=dtype, requires_grad=True)
        out[f"mhsa {dtype}"] = backends_for(q, q, q)
        v = torch.randn(16, 4, 6400, 16, device=dev, dtype=dtype, requires_grad=True)
        out[f"mhsa, v unpadded {dtype}"] = backends_for(q, q, v)
        # non-local at (16, 64, 80, 80): 1 head, C' = 32, 1600 pooled keys
        q = torch.randn(16, 1, 6400, 32, device=dev, dtype=dtype, requires_grad=True)
        kv = torch.randn(16, 1, 1600, 32, device=dev, dtype=dtype, requires_grad=True)
        out[f"nonlocal {dtype}"] = backends_for(q, kv, kv)
    return out


def time_module(name: str, shape, bf16: bool):
    torch.manual_seed(0)
    m = create_attention(name, shape[1]).to(dev).train()
    x = torch.randn(*shape, device=dev, requires_grad=True)
    times = []
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    try:
        for _ in range(6):
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                y = m(x)
            y.float().sum().backward()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    except torch.OutOfMemoryError:
        return {"ms": "OOM", "peak_mib": "OOM"}
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return {"ms": round(sorted(times[1:])[2] * 1e3, 2), "peak_mib": round(peak)}


def main():
    assert torch.cuda.is_available(), "no CUDA device"
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "sdpa_backends": sdpa_table()}
    rows = []
    for shape in SHAPES:
        for name in NAMES:
            for bf16 in (False, True):
                r = time_module(name, shape, bf16)
                rows.append({"module": name, "shape": list(shape), "dtype": "bf16-autocast" if bf16 else "fp32", **r})
                print(rows[-1], flush=True)
    result["rows"] = rows
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/context_cuda.json", "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"# Context modules on {result['device']} (torch {result['torch']}), forward + backward, one module", "",
             "| module | shape | dtype | median ms | peak MiB |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['module']} | {tuple(r['shape'])} | {r['dtype']} | {r['ms']} | {r['peak_mib']} |" for r in rows]
    lines += ["", "SDPA backends accepting the shapes (forward + backward):", ""]
    lines += [f"- {k}: {v}" for k, v in result["sdpa_backends"].items()]
    with open("benchmarks/results/context_cuda.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    if os.environ.get("OUT"):
        for ext in ("json", "md"):
            shutil.copy(f"benchmarks/results/context_cuda.{ext}", os.environ["OUT"])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
