#!/usr/bin/env bash
# The fair CAM / ADL / ICL comparison (issue #23, docs/tune.md): every method tuned with the same budget of
# val (train-fullsup) on builtin-parts at the CPU profile, every trial forked from one shared CAM warm-up
# (seed 0), then each method's best config trained over SEEDS seeds (each seed forked from its own CAM
# warm-up) and scored on test. Writes OUT/comparison.md (the table) and OUT/comparison.json.
#
#   bash scripts/fair_comparison.sh                          # the full budget: 30 trials per method
#   TRIALS=12 bash scripts/fair_comparison.sh                # a smaller budget, the same for every method
#   TRIALS=2 SEEDS=2 OUT=runs/fair-smoke bash scripts/fair_comparison.sh --max-steps-per-epoch 2
#                                                            # a smoke run: extra flags go to every train run
#   WORKERS=2 TRIALS=12 bash scripts/fair_comparison.sh      # two processes at a time, one thread each
#
# Resumable: rerun the same command; a finished warm-up or final run is kept, each tune study continues to
# TRIALS. Environment: BACKBONE (inceptionv3), DATASET (builtin-parts), TRIALS (30), SEEDS (3),
# SAMPLER (random), OUT (runs/fair-<backbone>-<dataset>), STORAGE (each method's SQLite file by default; a
# postgresql:// URL lets several machines share the studies: run the same command on each), WORKERS (1: one
# process at a time with torch's threads; N > 1: N tune workers on each study, the later warm-ups and the
# final runs N at a time, each process at OMP_NUM_THREADS=1 unless set, for a CPU with about N cores).
set -euo pipefail
BACKBONE=${BACKBONE:-inceptionv3}
DATASET=${DATASET:-builtin-parts}
TRIALS=${TRIALS:-30}
SEEDS=${SEEDS:-3}
SAMPLER=${SAMPLER:-random}
WORKERS=${WORKERS:-1}
OUT=${OUT:-runs/fair-$BACKBONE-$DATASET}
EXTRA=("$@")
PY=${PYTHON:-python}
# The CPU profile: 6 epochs, the first 5 the CAM warm-up (the block warm-up of the built-in profile).
WARMUP_EPOCHS=${WARMUP_EPOCHS:-5}
EPOCHS=${EPOCHS:-6}
COMMON=(--backbone "$BACKBONE" --dataset "$DATASET" "${EXTRA[@]}")

warmup() {   # seed -> OUT/warmup-seed<S>/last.pt (CAM, the block warm-up epochs, test never scored)
  local dir="$OUT/warmup-seed$1"
  if [ -f "$dir/last.pt" ] && [ -f "$dir/metrics.csv" ] \
     && [ "$(tail -n +2 "$dir/metrics.csv" | wc -l)" -ge "$WARMUP_EPOCHS" ]; then return; fi
  if [ -f "$dir/last.pt" ]; then
    "$PY" -m wsol_fast.train --resume "$dir/last.pt"
  else
    "$PY" -m wsol_fast.train "${COMMON[@]}" --method cam --epochs "$WARMUP_EPOCHS" --seed "$1" \
      --output "$dir" --num-overlays 0 --no-test
  fi
}

final() {   # method seed -> OUT/final/<method>/seed<S>/results.json
  local dir="$OUT/final/$1/seed$2"
  [ -f "$dir/results.json" ] && return
  if [ -f "$dir/last.pt" ]; then "$PY" -m wsol_fast.train --resume "$dir/last.pt"; return; fi
  # The best config of the search, this seed, forked from this seed's warm-up, scored on test at the end.
  # The extra flags of the command line too (--amp off, say), so every train run of the comparison gets them.
  "$PY" -m wsol_fast.train --config "$OUT/tune-$1/best_config.json" --seed "$2" --output "$dir" \
    --init-from "$OUT/warmup-seed$2/last.pt" --num-overlays 0 "${EXTRA[@]}"
}
# jobs: run "$@" in the background while fewer than WORKERS jobs of ours run, else wait for one first;
# a failed job fails the script at the `wait`s below.
# `started` is the pid of the job just started (empty when it ran in the foreground).
pids=()
started=""
start() {
  started=""
  if [ "$WORKERS" -le 1 ]; then "$@"; return; fi
  while [ "$(jobs -rp | wc -l)" -ge "$WORKERS" ]; do wait -n; done
  "$@" & pids+=($!); started=$!
}
drain() { local p; for p in "${pids[@]}"; do wait "$p"; done; pids=(); }
# await PID: wait for one job (its failure fails the script) and drop it from the ones drain waits for.
await() {
  local p rest=()
  wait "$1"
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || rest+=("$p"); done
  pids=("${rest[@]}")
}
declare -A warming=()   # seed -> pid of its warm-up while it runs in the background
if [ "$WORKERS" -gt 1 ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi

# A search whose best.json says TRIALS finished is skipped: rerunning needs no tune start-up, and on another
# machine the committed results (docs/tune-results/<run>/<method>/best.json and best_config.json, copied to
# OUT/tune-<method>/) take the searches' place.
searched() {
  [ -f "$OUT/tune-$1/best_config.json" ] && [ -f "$OUT/tune-$1/best.json" ] && "$PY" -c \
    'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["finished"] >= int(sys.argv[2]) else 1)' \
    "$OUT/tune-$1/best.json" "$TRIALS"
}

mkdir -p "$OUT"
# With every search done already (the committed results copied in), all warm-ups run side by side; else the
# warm-up of seed 0 comes first, since every trial forks from it.
todo=()   # the methods whose search is still to run
for m in cam adl icl; do
  if searched "$m"; then echo "tune-$m: $TRIALS trials finished (its best.json); search skipped" >&2; else todo+=("$m"); fi
done
if [ "${#todo[@]}" -eq 0 ]; then
  for s in $(seq 0 $((SEEDS - 1))); do start warmup "$s"; warming[$s]=$started; done
else
  warmup 0
fi
FORK=(--epochs "$EPOCHS" --block-warmup-epochs 0 --fork-weights-only)
for m in "${todo[@]}"; do
  storage=()
  if [ -n "${STORAGE:-}" ]; then storage=(--storage "$STORAGE"); fi
  for w in $(seq 1 "$WORKERS"); do   # WORKERS processes on one study: exactly TRIALS trials finish
    start "$PY" -m wsol_fast.tune --method "$m" --trials "$TRIALS" --sampler "$SAMPLER" --output "$OUT/tune-$m" \
      --study-name "fair-$m" "${storage[@]}" --search-only --keep-checkpoints best \
      "${COMMON[@]}" "${FORK[@]}" --init-from "$OUT/warmup-seed0/last.pt" --num-overlays 0
    if [ "$w" -lt "$WORKERS" ]; then sleep 10; fi   # the first worker creates the study
  done
  drain
done
if [ "${#todo[@]}" -gt 0 ]; then
  for s in $(seq 1 $((SEEDS - 1))); do start warmup "$s"; warming[$s]=$started; done
fi
# A seed's final runs start as soon as its own warm-up is done, beside the later seeds' warm-ups.
for s in $(seq 0 $((SEEDS - 1))); do
  if [ -n "${warming[$s]:-}" ]; then await "${warming[$s]}"; fi
  for m in cam adl icl; do start final "$m" "$s"; done
done
drain
"$PY" -m wsol_fast.compare "$OUT" --seeds "$SEEDS"   # OUT/comparison.md and comparison.json
