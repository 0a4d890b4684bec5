#!/usr/bin/env bash
# The first run on a lent GPU machine (Python 3.12, CuPy, torch, torchvision, no internet):
#
#   bash scripts/gpu_check.sh OUTDIR [all|tests|bench]      (default all)
#
# Every invocation first logs the environment to OUTDIR/env.txt (python, pip list, nvidia-smi, nvcc,
# cupy.show_config(), torch) and smoke-tests CuPy with (cupy.arange(3) + 1).sum(). Without a usable
# GPU it says so in one line and exits 3. Then the steps, each bounded by `timeout` so that one step
# stays well inside a 10-minute call (run `tests` and `bench` as two calls where calls are limited):
#   tests  build (pip install --no-build-isolation --no-deps -e .), then the GPU tests
#          (pytest -m gpu) and the torchvision parity test, with MINISSD_REQUIRE_GPU=1 so that a
#          missing CuPy/GPU fails instead of skipping;
#   bench  benchmarks/boxes.py --device cuda, benchmarks/gpu.py with TF32 off, then (if the step's
#          time budget still allows) TF32 on.
# Every exit code is collected; a table of the steps comes last (also in OUTDIR/summary.md) and the
# script exits 1 when any step failed, 2 on bad usage, 3 without a GPU. Logs: one file per step in OUTDIR.
# Timeouts and the benchmark flags can be overridden from the environment (see below).
set -u -o pipefail

usage() { echo "usage: bash scripts/gpu_check.sh OUTDIR [all|tests|bench]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] && [ -n "$1" ] || usage
STEP=${2:-all}
case "$STEP" in
  all|tests|bench) ;;
  *) echo "gpu_check.sh: step '$STEP' is not one of all, tests, bench" >&2; exit 2 ;;
esac
mkdir -p -- "$1" 2>/dev/null || { echo "gpu_check.sh: cannot create OUTDIR '$1'" >&2; exit 2; }
OUT=$(cd -- "$1" && pwd)                 # absolute: the steps below run from the repository root
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

# Time limits in seconds (each step's sum stays under 9 minutes even when every part hits its limit).
T_BUILD=${GPU_CHECK_T_BUILD:-150}
T_TESTS=${GPU_CHECK_T_TESTS:-240}
T_PARITY=${GPU_CHECK_T_PARITY:-90}
T_BOXES=${GPU_CHECK_T_BOXES:-120}
T_GPU=${GPU_CHECK_T_GPU:-300}             # gpu.py TF32 off, including first-run kernel compilation
BENCH_BUDGET=${GPU_CHECK_BENCH_BUDGET:-540}
MIN_TF32_ON=${GPU_CHECK_MIN_TF32_ON:-120} # run the TF32-on table only with this much budget left
BENCH_FLAGS=${GPU_CHECK_BENCH_FLAGS:---quick}
PARITY_TEST=tests/test_convert.py::test_real_torchvision_ssd300_vgg16

# -- environment, always first --------------------------------------------------------------------
section() { printf '\n==== %s\n' "$1"; }
{
  section "date, host, commit"
  date -u; uname -a
  git log -1 --format='%H %s' 2>&1 || true
  section "python"
  command -v "$PY"; timeout 30 "$PY" -VV 2>&1
  section "pip list"
  timeout 60 "$PY" -m pip list 2>&1
  section "nvidia-smi"
  timeout 30 nvidia-smi 2>&1 || true
  section "nvcc --version"
  timeout 30 nvcc --version 2>&1 || true
  section "cupy.show_config()"
  timeout 60 "$PY" -c "import cupy; cupy.show_config()" 2>&1 || true
  section "torch"
  timeout 60 "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
      'available', torch.cuda.is_available())" 2>&1 || true
  timeout 60 "$PY" -c "import torchvision; print('torchvision', torchvision.__version__)" 2>&1 || true
  section "environment variables CUDA_*, CUPY_*, MINISSD_*"
  env | grep -E '^(CUDA|CUPY|MINISSD)_' | sort || true
} > "$OUT/env.txt" 2>&1

# -- CuPy smoke test: one line to stdout, exit status 0 when usable ----------------------------------
smoke=$(timeout 120 "$PY" - 2>&1 <<'EOF'
import sys
try:
    import cupy
except Exception as e:
    print(f"CuPy does not import ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})")
    sys.exit(1)
try:
    n = cupy.cuda.runtime.getDeviceCount()
    v = int((cupy.arange(3) + 1).sum())
except Exception as e:
    print(f"CuPy finds no usable CUDA device ({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]})")
    sys.exit(1)
if v != 6:
    print(f"(cupy.arange(3) + 1).sum() gave {v}, not 6")
    sys.exit(1)
print(f"CuPy {cupy.__version__}: {n} CUDA device(s); (cupy.arange(3) + 1).sum() = {v}")
EOF
)
smoke_rc=$?
printf '%s\n' "$smoke" > "$OUT/smoke.txt"
if [ "$smoke_rc" -ne 0 ]; then
  echo "gpu_check.sh: no usable GPU here: $(printf '%s' "$smoke" | tail -n 1) (environment in $OUT/env.txt)"
  exit 3
fi
echo "gpu_check.sh: $smoke; environment in $OUT/env.txt"

# -- steps -----------------------------------------------------------------------------------------
NAMES=(); CODES=(); SECS=(); LOGS=()
record() { NAMES+=("$1"); CODES+=("$2"); SECS+=("$3"); LOGS+=("$4"); }

# run NAME LIMIT LOGFILE CMD...: runs CMD under `timeout LIMIT`, output to OUT/LOGFILE, records the exit code
run() {
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$SECONDS rc
  echo "-- $name (limit ${limit} s): $*"
  timeout --kill-after=15 "$limit" "$@" > "$OUT/$log" 2>&1
  rc=$?
  record "$name" "$rc" $((SECONDS - t0)) "$log"
  echo "   exit $rc after $((SECONDS - t0)) s$([ "$rc" -eq 124 ] && echo ' (timed out)'); log: $OUT/$log"
  tail -n 3 "$OUT/$log" | sed 's/^/   | /'
  return "$rc"
}

built=0
build() {
  [ "$built" -eq 1 ] && return 0
  built=1
  run "build (pip install -e .)" "$T_BUILD" build.log \
    "$PY" -m pip install --no-build-isolation --no-deps -e .
}

if [ "$STEP" = all ] || [ "$STEP" = tests ]; then
  t_step=$SECONDS
  build
  run "pytest -m gpu" "$T_TESTS" gpu_tests.log env MINISSD_REQUIRE_GPU=1 \
    "$PY" -m pytest -q -p no:cacheprovider -m gpu --durations=10 --junitxml="$OUT/gpu_tests.xml" \
    --deselect "$PARITY_TEST" tests
  run "torchvision parity test" "$T_PARITY" parity.log env MINISSD_REQUIRE_GPU=1 \
    "$PY" -m pytest -q -p no:cacheprovider -rP "$PARITY_TEST"
  # it is not a gpu-marked test: a skip (torchvision missing) or a renamed test must not read as a pass
  if [ "${CODES[-1]}" = 0 ] && ! grep -Eq '(^|[^0-9])1 passed' "$OUT/parity.log"; then
    CODES[-1]="did not pass"
    echo "   not counted as a pass: $(tail -n 1 "$OUT/parity.log")"
  fi
  echo "   tests step: $((SECONDS - t_step)) s"
fi

if [ "$STEP" = all ] || [ "$STEP" = bench ]; then
  t_step=$SECONDS
  build
  # shellcheck disable=SC2086  # BENCH_FLAGS is a list of flags
  run "benchmarks/boxes.py" "$T_BOXES" bench_boxes.md "$PY" benchmarks/boxes.py --device cuda $BENCH_FLAGS
  # shellcheck disable=SC2086
  run "benchmarks/gpu.py TF32 off" "$T_GPU" bench_gpu_tf32_off.md \
    "$PY" benchmarks/gpu.py --device cuda --tf32 off $BENCH_FLAGS
  left=$((BENCH_BUDGET - (SECONDS - t_step)))
  if [ "$left" -ge "$MIN_TF32_ON" ]; then
    # shellcheck disable=SC2086
    run "benchmarks/gpu.py TF32 on" $((left - 15)) bench_gpu_tf32_on.md \
      "$PY" benchmarks/gpu.py --device cuda --tf32 on --no-breakdown $BENCH_FLAGS
  else
    echo "-- benchmarks/gpu.py TF32 on: not run, ${left} s of the ${BENCH_BUDGET} s bench budget left"
    record "benchmarks/gpu.py TF32 on" "not run (time)" 0 -
  fi
  echo "   bench step: $((SECONDS - t_step)) s"
fi

# -- summary, last ---------------------------------------------------------------------------------
failed=()
{
  echo "| step | exit | seconds | log |"
  echo "|---|---|---:|---|"
  for i in "${!NAMES[@]}"; do
    code=${CODES[$i]}
    [ "$code" = 124 ] && code="124 (timed out)"
    [ "$code" = 137 ] && code="137 (killed)"
    echo "| ${NAMES[$i]} | $code | ${SECS[$i]} | ${LOGS[$i]} |"
    case "${CODES[$i]}" in 0|not*) ;; *) failed+=("${NAMES[$i]}") ;; esac
  done
} > "$OUT/summary.md"
echo
echo "==== gpu_check.sh $STEP: $smoke"
cat "$OUT/summary.md"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED: $(IFS=';'; echo "${failed[*]}") (logs in $OUT)"
  exit 1
fi
echo "all ${#NAMES[@]} steps passed (logs in $OUT)"
