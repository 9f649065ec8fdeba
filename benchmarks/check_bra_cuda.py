#!/usr/bin/env python
"""Correctness checks of BRA (arXiv:2303.08810) on a GPU; records the Triton check that ``backend="auto"`` reads.

1. float64, SDPA backend: ours (both training modes) == the official algorithm on divisible
   sizes, and the two modes agree on a non-divisible size (output and every gradient);
2. the Triton kernels == the SDPA backend in float32, float16 and bfloat16 (output and every
   gradient; largest error relative to the largest SDPA value). The result is written as a
   record (:mod:`yolo_attention.ops.trust`) to ``yolo_attention/ops/triton_verified.json``:
   from then on ``kernel="auto"`` uses the kernels for the dtypes that passed, on GPUs of this
   compute capability with this triton version and kernel source.

Run by ``benchmarks/gpu_biformer.sh``. Exit status 1 when a check failed (the record is
written anyway and says which). ``--device cpu`` (with ``TRITON_INTERPRET=1``) runs the same
steps in the Triton interpreter to test this script; it writes no record.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from official_bra import OfficialBRA  # noqa: E402

from yolo_attention.modules.biformer import BiLevelRoutingAttention  # noqa: E402
from yolo_attention.ops import triton_bra, trust  # noqa: E402

DTYPES = {"float32": (torch.float32, 1e-4), "float16": (torch.float16, 2e-2), "bfloat16": (torch.bfloat16, 5e-2)}
SHAPES = "2x64x28x28,2x64x30x41,1x128x21x21,1x32x5x7"


def step(m, x, g):
    """Output and gradients (input, parameters) of one training step, as float32."""
    y = m(x)
    return [y.float()] + [t.float() for t in torch.autograd.grad(y, [x, *m.parameters()], g)]


def check_sdpa_float64(device) -> None:
    """Both SDPA training modes == the official algorithm (divisible) and each other; asserts."""
    torch.manual_seed(0)
    for shape, divisible in [((2, 64, 28, 28), True), ((2, 64, 30, 41), False)]:
        m = BiLevelRoutingAttention(64, num_heads=8).to(device, torch.float64)
        x = torch.randn(*shape, device=device, dtype=torch.float64, requires_grad=True)
        g = torch.randn_like(x)
        m.kernel = "sdpa"
        outs = {}
        for mode in (True, False):
            m.recompute = mode
            outs[f"recompute={mode}"] = step(m, x, g)
        if divisible:
            off = OfficialBRA(64, num_heads=8).to(device, torch.float64)
            off.load_state_dict(m.state_dict())
            outs["official"] = step(off, x, g)
        ref = outs["recompute=False"]
        for res in outs.values():
            for a, b in zip(res, ref):
                torch.testing.assert_close(a, b)
        with torch.no_grad():
            torch.testing.assert_close(m(x).float(), ref[0])
        print(f"float64 sdpa check ok {shape}: {list(outs)}", flush=True)


def check_triton(device, dtype_name: str, shape) -> trust.TritonCheck:
    """One comparison of the Triton kernels with the SDPA backend (no-grad output too)."""
    dtype, tol = DTYPES[dtype_name]
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(shape[1], num_heads=8).to(device, dtype)
    x = torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn_like(x)
    failed_before = len(triton_bra.FAILED_CONFIGS)
    res = {}
    for kernel in ("sdpa", "triton"):
        m.kernel = kernel
        res[kernel] = step(m, x, g)
        with torch.no_grad():
            res[kernel].append(m(x).float())
    errs = [((a - b).abs().max() / (b.abs().max() + 1e-6)).item() for a, b in zip(res["triton"], res["sdpa"])]
    return trust.TritonCheck(
        dtype=dtype_name,
        shape=tuple(shape),
        output_error=max(errs[0], errs[-1]),
        grad_error=max(errs[1:-1]),
        tolerance=tol,
        fell_back=len(triton_bra.FAILED_CONFIGS) > failed_before,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the Triton interpreter, no record")
    p.add_argument("--dtype", default=",".join(DTYPES), help="comma-separated Triton check dtypes")
    p.add_argument("--shapes", default=SHAPES, help="comma-separated NxCxHxW for the Triton checks")
    p.add_argument("--record", default=str(trust.RECORD_PATH), help="the record file to update")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("CUDA is not available")
    if not triton_bra.available(torch.empty(0, device=device)):
        p.error("the Triton kernels cannot run here (triton missing, or --device cpu without TRITON_INTERPRET=1)")
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "Triton interpreter (CPU)"
    print(f"torch {torch.__version__}, cuda {torch.version.cuda}, triton {triton.__version__}, {name}", flush=True)

    check_sdpa_float64(device)
    checks = []
    for dtype_name in args.dtype.split(","):
        for shape in (tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")):
            c = check_triton(device, dtype_name, shape)
            checks.append(c)
            print(f"triton vs sdpa {dtype_name:9s} {shape}: output {c.output_error:.2e}, grads {c.grad_error:.2e}, "
                  f"tolerance {c.tolerance:.0e}{', FELL BACK to SDPA' if c.fell_back else ''}: "
                  f"{'ok' if c.passed else 'FAILED'}", flush=True)  # fmt: skip

    if device.type == "cuda":
        record = trust.TritonRecord(
            device=name,
            capability=tuple(torch.cuda.get_device_capability(device)),
            triton=triton.__version__,
            kernel_sha256=trust.kernel_sha256(),
            torch=torch.__version__,
            cuda=str(torch.version.cuda),
            date_utc=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            checks=tuple(checks),
        )
        trust.record_check(record, args.record)
        auto = [d for d in args.dtype.split(",") if trust.auto_trusts(device, DTYPES[d][0], args.record)]
        print(f"wrote {args.record}; kernel='auto' now uses the Triton kernels here for: {auto or 'no dtype'}")
    failed = [c for c in checks if not c.passed]
    print("triton check ok" if not failed else f"triton check FAILED: {len(failed)} of {len(checks)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
