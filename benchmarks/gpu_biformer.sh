#!/usr/bin/env bash
# GPU table for BRA (arXiv:2303.08810): our fast path vs the official algorithm, one go (< 5 min on an H100).
#
#   bash benchmarks/gpu_biformer.sh            # from the repository root, on a machine with one CUDA GPU
#
# 1. CUDA correctness checks: in float64, ours (SDPA backend, both training modes) == official
#    on divisible sizes (and the modes agree on a non-divisible one); the Triton kernels (the
#    CUDA default, never run on a GPU before this script: tested in the Triton interpreter on
#    CPU, whose bfloat16 dots are broken) == the SDPA backend in float32, float16, bfloat16;
# 2. the benchmark: shapes (16,64,84²) (16,128,42²) (16,256,21²) (4,128,154²) in float32,
#    float16 and bfloat16, forward + backward of one module, interleaved, median of ratios,
#    torch.cuda.max_memory_allocated for peak memory; rows: ours (defaults: SDPA), ours-triton (opt-in Triton kernels),
#    ours-saved and ours-recompute (SDPA backend).
#
# Writes benchmarks/results/biformer_cuda.{json,md} (and copies them to $OUT when it is set).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY - <<'EOF'
import sys, torch
sys.path.insert(0, "benchmarks")
from official_bra import OfficialBRA
import yolo_attention.modules.biformer as bm
assert torch.cuda.is_available(), "no CUDA device"
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(), "triton kernels:", bm._bra_fwd is not None)
torch.manual_seed(0)
dev = torch.device("cuda")
# float64 (SDPA backend): saved == recompute == official
for shape, divisible in [((2, 64, 28, 28), True), ((2, 64, 30, 41), False)]:
    m = bm.BiLevelRoutingAttention(64, num_heads=8).to(dev, torch.float64)
    x = torch.randn(*shape, device=dev, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(x)
    outs = {}
    for mode in (True, False):
        m.kernel, m.recompute = "sdpa", mode
        y = m(x)
        outs[mode] = (y, torch.autograd.grad(y, [x, *m.parameters()], g))
    if divisible:
        off = OfficialBRA(64, num_heads=8).to(dev, torch.float64)
        off.load_state_dict(m.state_dict())
        y = off(x)
        outs["official"] = (y, torch.autograd.grad(y, [x, *off.parameters()], g))
    ref_y, ref_g = outs[False]
    for k, (y, gr) in outs.items():
        torch.testing.assert_close(y, ref_y)
        for a, b in zip(gr, ref_g):
            torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref_y)
    print("cuda check ok (float64, sdpa)", shape, list(outs))
# Triton kernels vs the SDPA backend in each dtype
for dtype, tol in [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)]:
    for shape in [(2, 64, 28, 28), (2, 64, 30, 41), (1, 128, 21, 21), (1, 32, 5, 7)]:
        m = bm.BiLevelRoutingAttention(shape[1], num_heads=8).to(dev, dtype)
        x = torch.randn(*shape, device=dev, dtype=dtype, requires_grad=True)
        g = torch.randn_like(x)
        res = {}
        for kernel in ("sdpa", "triton"):
            m.kernel = kernel
            y = m(x)
            res[kernel] = [y.float()] + [t.float() for t in torch.autograd.grad(y, [x, *m.parameters()], g)]
            with torch.no_grad():
                torch.testing.assert_close(m(x).float(), res[kernel][0])
        errs = [((a - b).abs().max() / (b.abs().max() + 1e-6)).item() for a, b in zip(res["triton"], res["sdpa"])]
        print(f"triton vs sdpa {str(dtype):15s} {shape}: max relative error output {errs[0]:.2e}, grads {max(errs[1:]):.2e}")
        assert errs[0] < tol and max(errs[1:]) < 10 * tol, errs
assert not bm._TRITON_FAILED, bm._TRITON_FAILED
print("triton check ok")
EOF

$PY benchmarks/bench_biformer.py --device cuda --dtype float32,float16,bfloat16 \
    --shapes 16x64x84,16x128x42,16x256x21,4x128x154 --ours-modes auto,triton,saved,recompute --repeats 30 --warmup 5

if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/biformer_cuda.json benchmarks/results/biformer_cuda.md "$OUT"/
fi
