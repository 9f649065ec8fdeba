#!/bin/bash
# Run recipes one after the other (each in its own process), skipping those with a result.
# usage: benchmarks/recipe/queue.sh NAME...
cd "$(dirname "$0")/../.." || exit 1
export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 YOLO_OFFLINE=1 MPLBACKEND=Agg
export YOLO_CONFIG_DIR=${RECIPE_WORK:-/tmp/recipe-work}/cfg
mkdir -p "${RECIPE_WORK:-/tmp/recipe-work}/logs"
for name in "$@"; do
  [ -f "benchmarks/results/recipe/$name.json" ] && { echo "skip $name"; continue; }
  timeout 7200 python benchmarks/recipe/harness.py "$name" > "${RECIPE_WORK:-/tmp/recipe-work}/logs/$name.log" 2>&1
  grep -a "^$name\|^  ft-" "${RECIPE_WORK:-/tmp/recipe-work}/logs/$name.log" | tail -8
done
