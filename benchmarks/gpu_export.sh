#!/usr/bin/env bash
# GPU export parity for every registered module inside yolov8n (attention at the neck):
# ONNX Runtime CUDA (dynamic shapes, TF32 off) and TensorRT float32 engines (static, i.e. the
# default with a constant top-k, and dynamic), against PyTorch, as the tests in
# tests/test_export_detectors.py define them (they skip on machines without CUDA).
#
#   bash benchmarks/gpu_export.sh                 # every registered module
#   MODULES="se or bra" bash benchmarks/gpu_export.sh   # a pytest -k expression over module names
#
# Needs tensorrt and onnxruntime-gpu installed (onnxruntime-gpu replaces the CPU onnxruntime).
# Each TensorRT engine build takes a while: time one module first (MODULES=se).
# Writes benchmarks/results/export_cuda.{log,md} (and copies them to $OUT when it is set).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" YOLO_OFFLINE=1
RES=benchmarks/results
mkdir -p "$RES"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())
for name in ("tensorrt", "onnxruntime"):
    try:
        m = importlib.import_module(name)
        extra = m.get_available_providers() if name == "onnxruntime" else ""
        print(name, m.__version__, extra)
    except ImportError:
        print(name, "NOT INSTALLED: its tests will skip")
EOF

K="cuda or tensorrt"
[ -n "${MODULES:-}" ] && K="($K) and ($MODULES)"
$PY -m pytest tests/test_export_detectors.py -k "$K" -p no:cacheprovider -q -s -rA --timeout 1800 \
    2>&1 | tee "$RES/export_cuda.log"
status=${PIPESTATUS[0]}

$PY - "$RES/export_cuda.log" > "$RES/export_cuda.md" <<'EOF'
import re, sys
text = open(sys.argv[1], errors="replace").read()
rows = re.findall(r"^parity (\S+) (\S+) at \(([^)]*)\): box (\S+) \(max \|box\| (\S+)\) score (\S+)", text, re.M)
results = re.findall(r"^(PASSED|FAILED|SKIPPED|ERROR) (\S+)", text, re.M)
print("# GPU export parity (yolov8n, attention at the neck)\n")
print("| module | runtime | input | max abs diff boxes (px) | max abs box | max abs diff scores |")
print("|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print("\n| test | result |\n|---|---|")
for outcome, test in results:
    print(f"| {test.split('::')[-1]} | {outcome} |")
EOF
cat "$RES/export_cuda.md"
if [ -n "${OUT:-}" ]; then cp "$RES"/export_cuda.* "$OUT"/; fi
exit "$status"
