#!/usr/bin/env bash
# Run on a lent GPU machine (Python 3.12, CuPy, torch, torchvision, no internet):
#   bash scripts/gpu_check.sh OUTDIR
# Builds the Cython kernels, runs the GPU-marked tests and the torchvision parity test, then the GPU
# benchmarks, and prints a short summary table last. Everything is logged under OUTDIR.
set -uo pipefail
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
cd "$(dirname "$0")/.."

status() { printf '%-34s %s\n' "$1" "$2" >> "$OUT/summary.txt"; }
: > "$OUT/summary.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
status "gpu" "$(head -n1 "$OUT/gpu.txt")"

if python setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then status "build" ok; else status "build" FAILED; fi

python -m pytest -q -m gpu tests > "$OUT/gpu_tests.log" 2>&1
status "pytest -m gpu" "$(tail -n1 "$OUT/gpu_tests.log")"
python -m pytest -q tests/test_convert.py > "$OUT/convert.log" 2>&1
status "torchvision parity" "$(tail -n1 "$OUT/convert.log")"

for b in conv boxes model gpu; do
  if [ -f "benchmarks/$b.py" ]; then
    timeout 240 python "benchmarks/$b.py" --device cuda --quick > "$OUT/bench_$b.txt" 2>&1
    status "benchmarks/$b.py" "exit $?"
  fi
done

echo "==== summary ===="
cat "$OUT/summary.txt"
