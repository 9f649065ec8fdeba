#!/usr/bin/env bash
# Everything a session lent a GPU should run, as ONE script (about 10 minutes on an H100/H200):
#
#   OUT=/some/dir bash benchmarks/gpu_session.sh
#
# 1. benchmarks/gpu_biformer.sh      BRA checks, the Triton record (yolo_attention/ops/triton_verified.json),
#                                    the BRA benchmark (benchmarks/results/biformer_cuda.*)
# 2. yolo-attention bench --device cuda   every registered module at the YOLOv8 n/s P3-P5 maps, float32
#                                    and float16 (benchmarks/results/bench_cuda*.{json,md})
# 3. benchmarks/gpu_context_modules.py  which fused attention kernels MHSA/non-local reach on CUDA
# 4. benchmarks/gpu_export.sh        ONNX Runtime CUDA / TensorRT parity (skips what is not installed),
#                                    for the modules in $MODULES (default "se or bra": TensorRT builds are slow)
#
# Every step runs even when an earlier one fails; the exit status is the first failure's. Results are
# copied to $OUT when it is set. Bring them into BENCHMARKS.md (and commit the Triton record).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" YOLO_OFFLINE=1
status=0
step() { echo "=== $*"; "$@" || { rc=$?; echo "=== FAILED ($rc): $*"; [ $status -eq 0 ] && status=$rc; }; }

step bash benchmarks/gpu_biformer.sh
step $PY -m yolo_attention bench --device cuda --dtype float32 --name bench_cuda
step $PY -m yolo_attention bench --device cuda --dtype float16 --no-thop --name bench_cuda_float16
step $PY benchmarks/gpu_context_modules.py
MODULES=${MODULES:-se or bra} step bash benchmarks/gpu_export.sh

if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/bench_cuda*.json benchmarks/results/bench_cuda*.md "$OUT"/ 2>/dev/null || true
fi
exit $status
