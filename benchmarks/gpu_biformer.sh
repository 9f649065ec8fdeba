#!/usr/bin/env bash
# The one GPU script for BRA (arXiv:2303.08810): checks, Triton record, benchmark (< 5 min on an H100).
#
#   bash benchmarks/gpu_biformer.sh            # from the repository root, on a machine with one CUDA GPU
#
# 1. benchmarks/check_bra_cuda.py: in float64, ours (SDPA backend, both training modes) ==
#    official on divisible sizes; the Triton kernels == the SDPA backend in float32, float16,
#    bfloat16. Writes the result to yolo_attention/ops/triton_verified.json (a record per GPU
#    compute capability and triton version; see yolo_attention/ops/trust.py): kernel="auto" uses
#    the Triton kernels for the dtypes that passed, on matching GPUs. Commit that file.
# 2. the benchmark: shapes (16,64,84²) (16,128,42²) (16,256,21²) (4,128,154²) in float32,
#    float16 and bfloat16, forward + backward of one module, interleaved, median of ratios,
#    torch.cuda.max_memory_allocated for peak memory; rows: ours (kernel="auto", i.e. Triton
#    where step 1 passed), ours-triton, ours-saved and ours-recompute (SDPA backend).
#
# Writes benchmarks/results/biformer_cuda.{json,md} and the record (and copies all three to
# $OUT when it is set). Exits with step 1's status: the benchmark runs even when a check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
RECORD=yolo_attention/ops/triton_verified.json

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
$PY benchmarks/check_bra_cuda.py --record "$RECORD" || status=$?

$PY benchmarks/bench_biformer.py --device cuda --dtype float32,float16,bfloat16 \
    --shapes 16x64x84,16x128x42,16x256x21,4x128x154 --ours-modes auto,triton,saved,recompute --repeats 30 --warmup 5

if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/biformer_cuda.json benchmarks/results/biformer_cuda.md "$OUT"/
    if [ -f "$RECORD" ]; then cp "$RECORD" "$OUT"/; fi
fi
exit $status
