#!/usr/bin/env bash
# Development: `python -m wsol_fast.ablate` on both built-in sets at the built-in (CPU) profile, on one CUDA GPU,
# inside one short device lease: every (set, seed) is its own process (`--only-seeds`), all at once, then one
# plain call per set writes its table. Optionally (PARTS128=1) the rows ROWS128 (default CAM, ADL, ICL) of
# builtin-parts at 128 x 128 crops, launched beside it at lower CPU priority.
#
#   bash scripts/dev/gpu_ablate.sh                     (outputs under $OUT, default ./gpu_out)
#   DEVICE=cpu SEEDS=1 ROWS="cam icl" EXTRA="--max-steps-per-epoch 2" bash scripts/dev/gpu_ablate.sh   # a smoke run
#
# Outputs: $OUT/gpu_ablate_log.txt (everything printed, the tables at the end) and $OUT/gpu_ablate_runs.tar.gz
# (each set's ablation.json/.csv/.md, every run's config.json, metrics.csv and results.json, one log per
# process; no checkpoints) and $OUT/gpu_ablate_overlays.tar.gz (seed 0's CAM and ICL test overlays on builtin-parts). Every process stops at the deadline (DEADLINE_S, default 450 s from the start);
# what finished by then is in the outputs, and the same command resumes the rest where the runs folder is kept.
#
# The ICL ops run as the pure-PyTorch reference (IMPL=reference, the default here): the Triton kernels' autotuner
# compiles every config on first use, minutes on a fresh machine, and the reference computes the same maps
# (tests/ops). IMPL=auto uses the fastest live implementation instead.
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1
REPO=$(pwd)
OUT=${OUT:-$REPO/gpu_out}
RUNS=${RUNS:-$REPO/runs/gpu_ablate}
DEADLINE_S=${DEADLINE_S:-450}
SEEDS=${SEEDS:-3}
DEVICE=${DEVICE:-cuda}
IMPL=${IMPL:-reference}
SETS=${SETS-"builtin builtin-parts"}   # SETS="" runs no set of the CPU profile (PARTS128 only)
ROWS=${ROWS:-"cam adl icl no_ca no_fc no_nonlocal no_dfg icl_paper"}
EXTRA=${EXTRA:-}
PARTS128=${PARTS128:-0}
ROWS128=${ROWS128:-"cam adl icl"}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} WSOL_FAST_DISABLE_CPP=${WSOL_FAST_DISABLE_CPP:-1}
mkdir -p "$OUT" "$RUNS/logs"
LOG=$OUT/gpu_ablate_log.txt
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

echo "=== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
nproc
"$PY" -c "import torch, torchvision, numpy, cv2; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'available', torch.cuda.is_available(), '| torchvision', torchvision.__version__, '| numpy', numpy.__version__,
'| cv2', cv2.__version__)"

echo "=== generating the datasets at $(elapsed)s"
GEN=()
for ds in $SETS; do
  "$PY" -c "from wsol_fast.data import builtin; builtin.generate(dataset='$ds', progress=False)" &
  GEN+=($!)
done
for pid in "${GEN[@]}"; do wait "$pid" || echo "generation failed (pid $pid)"; done   # not a bare wait: tee is a child too
echo "=== generated at $(elapsed)s"

# ablate ARGS...: one ablate call with the ICL ops forced to IMPL, stopped at the deadline.
RUNNER="import sys
if '$IMPL' == 'reference':
    import wsol_fast.ops._triton as t
    t.TRITON_CUDA_AVAILABLE = False
from wsol_fast import ablate
sys.exit(ablate.main(sys.argv[1:]))"
COMMON=(--backbone inceptionv3 --seeds "$SEEDS" --device "$DEVICE" --workers 2 --loader opencv
        --no-tensorboard $EXTRA)
JOB_START=$(elapsed)
PIDS=()
launch() {   # launch NAME NICE ARGS...
  local name=$1 nice=$2; shift 2
  nice -n "$nice" timeout -k 10 $(( DEADLINE_S - $(elapsed) )) "$PY" -c "$RUNNER" "$@" >"$RUNS/logs/$name.log" 2>&1 &
  PIDS+=($!)
  echo "launched $name (pid $!): ablate $*"
}
for ds in $SETS; do
  for s in $(seq 0 $(( SEEDS - 1 ))); do
    launch "$ds-seed$s" 0 --dataset "$ds" --output "$RUNS/$ds" --only-seeds "$s" --rows $ROWS "${COMMON[@]}"
  done
done
if [[ $PARTS128 == 1 ]]; then
  for s in $(seq 0 $(( SEEDS - 1 ))); do
    launch "builtin-parts-128-seed$s" 10 --dataset builtin-parts --output "$RUNS/builtin-parts-128" --only-seeds "$s" \
      --resize-size 146 --crop-size 128 "${COMMON[@]}" --rows $ROWS128
  done
fi
FAILED=0
for pid in "${PIDS[@]}"; do
  wait "$pid" || FAILED=$(( FAILED + 1 ))
done
echo "=== every process ended at $(elapsed)s (the jobs took $(( $(elapsed) - JOB_START ))s); $FAILED did not finish"
for f in "$RUNS"/logs/*.log; do
  echo "--- tail of $f"
  tail -c 1500 "$f" | tr '\r' '\n' | tail -n 6
done

echo "=== tables (--table-only: the seeds that finished every row)"
for ds in $SETS; do
  timeout 60 "$PY" -c "$RUNNER" --dataset "$ds" --output "$RUNS/$ds" --table-only --rows $ROWS "${COMMON[@]}" 2>/dev/null | tail -n 40
done
if [[ $PARTS128 == 1 ]]; then
  timeout 60 "$PY" -c "$RUNNER" --dataset builtin-parts --output "$RUNS/builtin-parts-128" --table-only \
    --resize-size 146 --crop-size 128 "${COMMON[@]}" --rows $ROWS128 2>/dev/null | tail -n 40
fi
(cd "$RUNS" && tar czf "$OUT/gpu_ablate_runs.tar.gz" --exclude='*.pt' --exclude='*.png' --exclude='events.*' \
  --exclude='.lock' .) && echo "packed $(du -h "$OUT/gpu_ablate_runs.tar.gz" | cut -f1)"
# Seed 0's test overlays of CAM and ICL on builtin-parts (pictures for the docs).
(cd "$RUNS" && tar czf "$OUT/gpu_ablate_overlays.tar.gz" $(ls -d builtin-parts*/seed0/{cam,icl}/overlays 2>/dev/null)) \
  && echo "packed $(du -h "$OUT/gpu_ablate_overlays.tar.gz" | cut -f1)"
echo "=== done at $(elapsed)s"
exec 1>&- 2>&-
wait
exit $(( FAILED > 0 ? 1 : 0 ))
