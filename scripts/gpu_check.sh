#!/usr/bin/env bash
# One pass of every check that needs a CUDA GPU, for a single short loan of a GPU machine with no network.
#
#   bash scripts/gpu_check.sh            (from the repository root; results under $OUT, default ./gpu_out)
#
# Steps, each under its own `timeout` and all under one overall deadline (GPU_CHECK_DEADLINE_S, default
# 560 s), so one hang cannot eat the loan; a failing step does not stop the next:
#   env      nvidia-smi, python / torch / triton / pytest versions, the GPU
#   install  wsol_fast + wsol_fast.kernels importable offline: `pip install -e .` without index, build
#            isolation or the C++ build (its .so is not carried and targets another torch); if that
#            fails, a shadow package on PYTHONPATH (wsol_fast/* linked, kernels/ linked as wsol_fast/kernels)
#   smoke    the Triton ops against the reference on one shape (seconds; still informative if pytest hangs)
#   tests    tests/test_kernels_triton.py compiled on CUDA (TRITON_INTERPRET=0): every dtype incl. bf16,
#            every autotune config, opcheck, torch.compile(fullgraph=True), an ICL training step in
#            fp32 and bf16 autocast against the reference
#   bench-*  the CUDA rows of the two op benchmarks -> $OUT/bench_gap.json, bench_attention.json
#            (both as markdown in bench_gpu.md, scripts/bench_table.py)
#   train    the CUDA row of benchmarks/test_bench_train_step.py -> $OUT/bench_train.json (+ .md)
# Exit status 1 if any step failed or timed out (all steps still ran).
# Outputs (7 files, the loan brings back at most 8): gpu_log.txt (everything), tests_junit.xml,
# bench_gap.json, bench_attention.json, bench_gpu.md, bench_train.json, bench_train.md. The last lines
# printed are a summary: one line per benchmark group (Triton against each other row), step status,
# test counts and failures.
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
OUT=${OUT:-$REPO/gpu_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_log.txt
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

export PY=${PYTHON:-python3} REPO OUT
DEADLINE_S=${GPU_CHECK_DEADLINE_S:-560}
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 WSOL_FAST_SKIP_CPP=1 WSOL_FAST_DISABLE_CPP=1
SHADOW_PATH_FILE=/tmp/wsol_fast_shadow_pythonpath
export SHADOW_PATH_FILE
rm -f "$SHADOW_PATH_FILE"
START=$(date +%s)
SUMMARY=()
FAILED_STEPS=0

elapsed() { echo $(( $(date +%s) - START )); }

# step NAME MAX_SECONDS COMMAND...: run under min(MAX_SECONDS, time left before the deadline - 15 s).
step() {
  local name=$1 max=$2; shift 2
  local left=$(( DEADLINE_S - $(elapsed) - 15 ))
  local limit=$(( max < left ? max : left ))
  if (( limit < 20 )); then
    echo "=== [$name] SKIPPED: only ${left}s left before the ${DEADLINE_S}s deadline"
    SUMMARY+=("$name: skipped (deadline)")
    return
  fi
  echo
  echo "=== [$name] start at $(elapsed)s, limit ${limit}s: $*"
  local t0=$(date +%s) rc
  if declare -F "$1" >/dev/null; then          # a function of this script: run it in a child bash
    timeout -k 10 "$limit" bash -c "$1"
  else
    timeout -k 10 "$limit" "$@"
  fi
  rc=$?
  local took=$(( $(date +%s) - t0 ))
  local status="ok"
  (( rc == 124 || rc == 137 )) && status="TIMEOUT after ${limit}s"
  (( rc != 0 && rc != 124 && rc != 137 )) && status="FAILED rc=$rc"
  [[ $status != ok ]] && FAILED_STEPS=$(( FAILED_STEPS + 1 ))
  echo "=== [$name] $status (${took}s)"
  SUMMARY+=("$name: $status (${took}s)")
}

env_info() {
  nvidia-smi || echo "nvidia-smi failed"
  "$PY" - <<'EOF'
import importlib, platform, sys
print("python", sys.version.split()[0], sys.executable, platform.machine())
for name in ("torch", "triton", "pytest", "pytest_benchmark", "xdist", "pytest_timeout", "setuptools", "numpy"):
    try:
        module = importlib.import_module(name)
        print(f"{name:17s}", getattr(module, "__version__", "?"))
    except Exception as exc:
        print(f"{name:17s} MISSING ({type(exc).__name__}: {exc})")
import torch
print("cuda available", torch.cuda.is_available(), "| torch CUDA", torch.version.cuda)
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print("device", props.name, f"sm_{props.major}{props.minor}", props.multi_processor_count, "SMs",
          f"{props.total_memory / 2**30:.1f} GiB")
print("float32 matmul precision", torch.get_float32_matmul_precision())
EOF
}

importable() {   # wsol_fast and its Triton kernels import from outside the checkout, and are this checkout's
  (cd /tmp && "$PY" - "$REPO" <<'EOF'
import os, sys
import wsol_fast, wsol_fast.kernels.nonlocal_attention as k
repo = os.path.realpath(sys.argv[1])
where = os.path.realpath(k.__file__)
print("wsol_fast from", os.path.dirname(wsol_fast.__file__), "| kernels from", os.path.dirname(k.__file__))
sys.exit(0 if where.startswith(repo + os.sep) else 3)
EOF
  )
}

install() {
  "$PY" -m pip install --no-build-isolation --no-deps --no-index --no-cache-dir --disable-pip-version-check -q -e . \
    && importable && return 0
  echo "pip install -e . did not give an importable wsol_fast; falling back to a shadow package on PYTHONPATH"
  local shadow=/tmp/wsol_fast_shadow
  rm -rf "$shadow" && mkdir -p "$shadow/wsol_fast"
  for entry in "$REPO"/wsol_fast/*; do
    case $(basename "$entry") in __pycache__|*.so) continue;; esac
    ln -s "$entry" "$shadow/wsol_fast/$(basename "$entry")"
  done
  ln -s "$REPO/kernels" "$shadow/wsol_fast/kernels"
  echo "$shadow" >"$SHADOW_PATH_FILE"
  PYTHONPATH=$shadow${PYTHONPATH:+:$PYTHONPATH} PYTHONSAFEPATH=1 importable
}

smoke() {
  "$PY" - <<'EOF'
import time
import torch
import wsol_fast
from wsol_fast import ops
from wsol_fast.ops import reference
print("backends", wsol_fast.backends())
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    t0 = time.time()
    f, g = (torch.randn(2, 300, 64, device="cuda") / 8).to(dtype), torch.randn(2, 300, 64, device="cuda").to(dtype)
    zbar = torch.randn(2, 300, device="cuda").to(dtype)
    a = ops.nonlocal_attention_map(f, g, zbar, impl="triton")
    a_ref = reference.nonlocal_attention_map(f.double(), g.double(), zbar.double())
    x = torch.randn(2, 96, 300, device="cuda").to(dtype)
    pooled, counts, mask = ops.masked_gap(x, a, 0.72, 1.2, impl="triton")
    p_ref, c_ref, m_ref = reference.masked_gap(x.double(), a, 0.72, 1.2)
    torch.cuda.synchronize()
    print(f"{dtype}: attention max|err| {(a.double() - a_ref).abs().max().item():.2e}, masked GAP max|err| "
          f"{(pooled.double() - p_ref).abs().max().item():.2e}, counts equal {torch.equal(counts, c_ref)}, "
          f"masks equal {torch.equal(mask, m_ref)} ({time.time() - t0:.1f}s incl. autotuning)")
EOF
}

export -f env_info importable install smoke
step env 90 env_info
step install 150 install
if [[ -f $SHADOW_PATH_FILE ]]; then   # the fallback: no current directory on sys.path, so ./wsol_fast cannot shadow it
  export PYTHONPATH=$(cat "$SHADOW_PATH_FILE")${PYTHONPATH:+:$PYTHONPATH} PYTHONSAFEPATH=1
fi
step smoke 120 smoke

PARALLEL=()
"$PY" -c "import xdist" 2>/dev/null && PARALLEL=(-n 6)     # compilation dominates: spread it over cores
TEST_TIMEOUT=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TEST_TIMEOUT=(--timeout 200)
step tests 200 "$PY" -m pytest -q -rfEs -p no:cacheprovider "${PARALLEL[@]}" "${TEST_TIMEOUT[@]}" \
  --durations=12 --junitxml "$OUT/tests_junit.xml" tests/test_kernels_triton.py

# One pytest run per benchmark file: pytest-benchmark writes its JSON only at the end of a run, so a
# timeout loses that run's rows and no other's. TRITON_PRINT_AUTOTUNING logs each key's chosen config.
BENCH=(-m pytest -q -p no:cacheprovider --benchmark-only --benchmark-columns=median,iqr,rounds --benchmark-sort=name)
step bench-gap 120 env TRITON_PRINT_AUTOTUNING=1 "$PY" "${BENCH[@]}" -k "cuda or triton" \
  --benchmark-json "$OUT/bench_gap.json" benchmarks/test_bench_masked_gap.py
step bench-attention 240 env TRITON_PRINT_AUTOTUNING=1 "$PY" "${BENCH[@]}" -k "cuda or triton" \
  --benchmark-json "$OUT/bench_attention.json" benchmarks/test_bench_nonlocal_attention.py
if [[ -f benchmarks/test_bench_train_step.py ]]; then
  step train 150 "$PY" "${BENCH[@]}" -k cuda --benchmark-json "$OUT/bench_train.json" benchmarks/test_bench_train_step.py
else
  SUMMARY+=("train: skipped (no benchmarks/test_bench_train_step.py)")
fi

echo
echo "=== tables (full: $OUT/bench_gpu.md, $OUT/bench_train.md)"
OP_JSONS=()
for json in "$OUT/bench_gap.json" "$OUT/bench_attention.json"; do [[ -s $json ]] && OP_JSONS+=("$json"); done
if (( ${#OP_JSONS[@]} )); then
  "$PY" scripts/bench_table.py "${OP_JSONS[@]}" -o "$OUT/bench_gpu.md" >/dev/null
  "$PY" scripts/bench_table.py --summary "${OP_JSONS[@]}"
fi
[[ -s $OUT/bench_train.json ]] && "$PY" scripts/bench_table.py "$OUT/bench_train.json" -o "$OUT/bench_train.md"
echo
echo "=== summary after $(elapsed)s"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
grep -h -o 'tests="[0-9]*"\|failures="[0-9]*"\|errors="[0-9]*"\|skipped="[0-9]*"' "$OUT/tests_junit.xml" 2>/dev/null \
  | head -4 | tr '\n' ' ' | sed 's/^/  junit: /'
echo
grep -E '^(FAILED|ERROR) ' "$LOG" | sort -u | head -40
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null   # let tee write the last lines before the caller reads the output
exit $(( FAILED_STEPS > 0 ? 1 : 0 ))   # 1 if any step failed or timed out
