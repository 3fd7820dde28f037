#!/usr/bin/env bash
# Development: every check that needs a CUDA GPU, in one pass of about 5 minutes on one H100/H200
# (torch, triton, pytest and pytest-benchmark installed).
#
#   bash scripts/dev/gpu_check.sh            (outputs under $OUT, default ./gpu_out)
#   bash scripts/dev/gpu_check.sh --dry-run  (no GPU, a few seconds; .ci/run runs it on every CI run)
#
# No install step: wsol_fast and its Triton kernels are imported from this checkout (PYTHONPATH; the
# package maps kernels/ to wsol_fast.kernels itself, wsol_fast/__init__.py), so nothing depends on the
# machine's setuptools or wheel (an `pip install -e .` failed on setuptools < 70.1 without wheel).
#
# --dry-run: every step's command line is checked instead of run. The environment and import checks run
# as they are; each pytest command is collected (pytest --collect-only with the same arguments: the files,
# the -k selections and the plugins' options must still exist and select at least one test); the
# precompile script lists its jobs (--dry-run); the summary and bench_table.py run on no rows. Exit 1 if
# any check fails, so the script cannot rot between GPU runs.
#
# Outputs: $OUT/gpu_results.json (every benchmark row, pytest-benchmark format, plus an "environment"
# block: GPU, driver, versions, test counts) and $OUT/gpu_log.txt (everything printed). Tables from it:
#   python scripts/bench_table.py gpu_out/gpu_results.json             # the README's GPU tables
#   python scripts/bench_table.py --targets gpu_out/gpu_results.json   # issue 15's targets, met / missed
#   python scripts/bench_table.py --policy gpu_out/gpu_results.json   # attention backward policy
#
# Steps, each under its own `timeout` and all under one deadline (GPU_CHECK_DEADLINE_S, default 290 s);
# a failing step does not stop the next:
#   env         nvidia-smi, versions, the GPU -> environment block
#   source      the tools (torch, triton, pytest, pytest-benchmark) import, and wsol_fast and its Triton
#               kernels import from this checkout (PYTHONPATH, no install; the C++ ops are not built)
#   precompile  (in the background, beside the tests) scripts/dev/gpu_precompile.py: every Triton config the
#               op benchmarks will autotune, compiled in parallel into Triton's cache, and one ICL step
#               per backbone
#   tests       tests/ops/test_kernels_triton.py compiled on CUDA (TRITON_INTERPRET=0): fp32/fp16/bf16, every
#               autotune config, every backward variant, opcheck, torch.compile(fullgraph=True), an ICL
#               block's training steps against the reference
#   bench-*     the CUDA rows: masked GAP; attention B=32, N=784 C' 128/256/512/1024 and N=3136 C'
#               128/512, bf16 and fp32, every backward variant; one training step per backbone (ICL,
#               plain CAM, ICL on the reference ops)
# Exit status 1 if any step failed or timed out (all steps still ran).
set -o pipefail
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,/^set -o pipefail/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (only --dry-run)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/../.." || exit 1
REPO=$(pwd)
# This checkout's wsol_fast (and, through it, its kernels/) first, whatever else is installed.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-$REPO/gpu_out}
WORK=$(mktemp -d /tmp/wsol_fast_gpu.XXXXXX)
(( DRY_RUN )) && OUT=$WORK/out   # a dry run leaves nothing in the checkout
mkdir -p "$OUT"
LOG=$OUT/gpu_log.txt
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

export PY=${PYTHON:-python3} REPO OUT WORK DRY_RUN
DEADLINE_S=${GPU_CHECK_DEADLINE_S:-290}
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 WSOL_FAST_SKIP_CPP=1 WSOL_FAST_DISABLE_CPP=1
# Autotune decisions persist on disk per kernel, key and config list (a shape tuned by one pytest run is
# not tuned again by the next); TRITON_PRINT_AUTOTUNING logs each key's chosen config.
export TRITON_CACHE_AUTOTUNING=1 TRITON_PRINT_AUTOTUNING=1
START=$(date +%s)
SUMMARY=()
FAILED_STEPS=0

elapsed() { echo $(( $(date +%s) - START )); }

# step NAME MAX_SECONDS COMMAND...: run under min(MAX_SECONDS, time left before the deadline - 10 s).
step() {
  local name=$1 max=$2; shift 2
  local left=$(( DEADLINE_S - $(elapsed) - 10 ))
  local limit=$(( max < left ? max : left ))
  if (( limit < 15 )); then
    echo "=== [$name] SKIPPED: only ${left}s left before the ${DEADLINE_S}s deadline"
    SUMMARY+=("$name: skipped (deadline)")
    return
  fi
  echo
  echo "=== [$name] start at $(elapsed)s, limit ${limit}s: $*"
  local t0=$(date +%s) rc
  if (( DRY_RUN )) && ! declare -F "$1" >/dev/null; then   # a command: recorded, checked at the end
    printf '%s\0' "$name" "$@" >"$WORK/dry_step.$(printf '%02d' ${#SUMMARY[@]})"
    echo "=== [$name] recorded for the dry-run check"
    SUMMARY+=("$name: recorded")
    return
  fi
  if declare -F "$1" >/dev/null; then          # a function of this script: run it in a child bash
    timeout -k 5 "$limit" bash -c "$1"
  else
    timeout -k 5 "$limit" "$@"
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
  "$PY" - "$WORK/env.json" <<'EOF'
import datetime, importlib, json, platform, subprocess, sys
env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "python": sys.version.split()[0], "machine": platform.machine()}
for name in ("torch", "triton", "pytest", "pytest_benchmark", "xdist", "numpy"):
    try:
        env[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as exc:
        env[name] = f"MISSING ({type(exc).__name__})"
import torch
env["cuda"] = torch.version.cuda
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    env.update(gpu=props.name, sm=f"{props.major}{props.minor}", sm_count=props.multi_processor_count,
               memory_gib=round(props.total_memory / 2**30, 1))
try:
    env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20).stdout.strip()
except Exception:
    pass
env["float32_matmul_precision"] = torch.get_float32_matmul_precision()
print(json.dumps(env, indent=1))
json.dump(env, open(sys.argv[1], "w"), indent=1)
EOF
}

source_tree() {   # the tools import, and wsol_fast and its Triton kernels are this checkout's (PYTHONPATH)
  (cd /tmp && "$PY" - "$REPO" <<'EOF'
import importlib, os, sys
missing = []
for name in ("torch", "triton", "pytest", "pytest_benchmark"):
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
if missing:
    print("missing tools:", "; ".join(missing))
    sys.exit(4)
import wsol_fast, wsol_fast.kernels.nonlocal_attention as k
repo = os.path.realpath(sys.argv[1])
where = os.path.realpath(k.__file__), os.path.realpath(wsol_fast.__file__)
print("wsol_fast from", os.path.dirname(wsol_fast.__file__), "| kernels from", os.path.dirname(k.__file__))
sys.exit(0 if all(w.startswith(repo + os.sep) for w in where) else 3)
EOF
  )
}

export -f env_info source_tree
step env 40 env_info
step source 60 source_tree

# Compiles beside the tests: both are CPU-bound compilation, the GPU is nearly idle.
PRECOMPILE_S=$(( DEADLINE_S / 2 ))
PRECOMPILE=("$PY" scripts/dev/gpu_precompile.py --steps --workers 8 --deadline "$PRECOMPILE_S")
if (( DRY_RUN )); then
  step precompile "$PRECOMPILE_S" "${PRECOMPILE[@]}"
  : >"$WORK/precompile.log"
  true &
else
  echo "=== [precompile] background, deadline ${PRECOMPILE_S}s"
  timeout -k 5 $(( PRECOMPILE_S + 10 )) "${PRECOMPILE[@]}" >"$WORK/precompile.log" 2>&1 &
fi
PRECOMPILE_PID=$!

PARALLEL=()
"$PY" -c "import xdist" 2>/dev/null && PARALLEL=(-n 6)
TEST_TIMEOUT=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TEST_TIMEOUT=(--timeout 120)
# Stop the session (reports and junit still written) before the step's own timeout kills it.
"$PY" -m pytest --help 2>/dev/null | grep -q -- "--session-timeout" && TEST_TIMEOUT+=(--session-timeout 130)
step tests 140 "$PY" -m pytest -q -rfEs -p no:cacheprovider "${PARALLEL[@]}" "${TEST_TIMEOUT[@]}" \
  --durations=8 --junitxml "$WORK/tests_junit.xml" tests/ops/test_kernels_triton.py

wait "$PRECOMPILE_PID"
echo "=== [precompile] rc=$? after $(elapsed)s"
cat "$WORK/precompile.log"

# One pytest run per group of rows: pytest-benchmark writes its JSON only at the end of a run, so a
# timeout loses that run's rows and no other's.
BENCH=(-m pytest -q -p no:cacheprovider --benchmark-only --benchmark-columns=median,rounds --benchmark-sort=name)
step bench-gap 40 "$PY" "${BENCH[@]}" -k cuda --benchmark-json "$WORK/bench_gap.json" benchmarks/test_bench_masked_gap.py
step bench-attention-bf16 70 "$PY" "${BENCH[@]}" -k "cuda and bf16" --benchmark-json "$WORK/bench_attention_bf16.json" \
  benchmarks/test_bench_nonlocal_attention.py
step bench-attention-fp32 50 "$PY" "${BENCH[@]}" -k "cuda and fp32" --benchmark-json "$WORK/bench_attention_fp32.json" \
  benchmarks/test_bench_nonlocal_attention.py
step bench-step 60 "$PY" "${BENCH[@]}" --benchmark-json "$WORK/bench_step.json" benchmarks/test_bench_icl_step_cuda.py

if (( DRY_RUN )); then   # every recorded command, checked in one process
  echo
  echo "=== [dry-run] checking the recorded commands"
  if "$PY" scripts/dev/gpu_check_dry.py "$WORK"/dry_step.*; then
    SUMMARY+=("dry-run check: ok")
  else
    SUMMARY+=("dry-run check: FAILED")
    FAILED_STEPS=$(( FAILED_STEPS + 1 ))
  fi
fi

echo
"$PY" - "$WORK/env.json" "$WORK/tests_junit.xml" <<'EOF'
import json, os, sys
import xml.etree.ElementTree as ET
env_path, junit = sys.argv[1], sys.argv[2]
env = json.load(open(env_path)) if os.path.exists(env_path) else {}
if os.path.exists(junit):
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    env["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    env["tests"]["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                              if c.find("failure") is not None or c.find("error") is not None][:40]
json.dump(env, open(env_path, "w"), indent=1)
EOF
JSONS=()
for json in "$WORK"/bench_*.json; do [[ -s $json ]] && JSONS+=("$json"); done
if (( ${#JSONS[@]} )); then
  ENV_ARG=()
  [[ -s $WORK/env.json ]] && ENV_ARG=(--env "$WORK/env.json")
  "$PY" scripts/bench_table.py --merge "$OUT/gpu_results.json" "${ENV_ARG[@]}" "${JSONS[@]}"
  echo
  echo "=== tables"
  "$PY" scripts/bench_table.py "$OUT/gpu_results.json"
  echo "=== targets"
  "$PY" scripts/bench_table.py --targets "$OUT/gpu_results.json"
  echo "=== attention backward policy the rows support"
  "$PY" scripts/bench_table.py --policy "$OUT/gpu_results.json"
else
  echo "no benchmark rows"
fi
echo
echo "=== summary after $(elapsed)s"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
"$PY" -c "import json; print('  tests:', json.load(open('$WORK/env.json')).get('tests'))" 2>/dev/null
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null   # let tee write the last lines
exit $(( FAILED_STEPS > 0 ? 1 : 0 ))
