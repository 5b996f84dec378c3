#!/usr/bin/env bash
# Predicted vs measured step time of kiln train's miniature layouts on this
# host (docs/plan.md "CPU hosts"). For each layout TxPxD it runs
#   kiln launch -n T·P·D -- kiln train CONFIG [--tp T --pp P] --metrics-json ...
# RUNS times, takes the median step time after WARMUP steps of each run and
# the median over runs, and asks
#   kiln plan PLAN --profile PROFILE --tp T --pp P --dp D --microbatches M --json
# for the prediction. Prints one Markdown table row per layout.
#
#   examples/plan/measure_host_layouts.sh [--kiln build/kiln] [--config examples/train/gpt_3d.toml]
#       [--plan examples/plan/gpt_3d-cpu.toml] [--profile examples/plan/cpu-host-2core.toml]
#       [--microbatches 4] [--steps 30] [--warmup 5] [--runs 3] LAYOUT...
#   e.g. ... 1x1x1 1x1x2 2x2x2 1x4x2
#
# Run it under the CPU lock (/work/bin/cpu-lock timed on the CI host): it is a benchmark.
# bench/plan_vs_runtime.py does the same for every layout in one sitting, with a fresh
# calibration first, round-robin runs and a record of the host's other load.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KILN="$ROOT/build/kiln"
CONFIG="$ROOT/examples/train/gpt_3d.toml"
PLAN="$ROOT/examples/plan/gpt_3d-cpu.toml"
PROFILE="$ROOT/examples/plan/cpu-host-2core.toml"
MICRO=4 STEPS=30 WARMUP=5 RUNS=3
LAYOUTS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --kiln) KILN=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --plan) PLAN=$2; shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --microbatches) MICRO=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    [0-9]*x[0-9]*x[0-9]*) LAYOUTS+=("$1"); shift ;;
    *) echo "measure_host_layouts: unknown argument $1 (layouts look like 2x2x2 = TPxPPxDP)" >&2; exit 2 ;;
  esac
done
[ ${#LAYOUTS[@]} -gt 0 ] || { echo "measure_host_layouts: name at least one layout, e.g. 2x2x2" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-layouts-$$-XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Median step_s of one metrics file, skipping the first WARMUP steps.
median_step() {
  python3 - "$1" "$WARMUP" <<'PY'
import json, statistics, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if '"step_s"' in l]
times = [s["step_s"] for s in steps if s["step"] > int(sys.argv[2])]
print(statistics.median(times))
PY
}

echo "| layout (TP×PP×DP) | ranks | predicted s | measured s (median of $RUNS, range) | error |"
echo "|---|---|---|---|---|"
for layout in "${LAYOUTS[@]}"; do
  IFS=x read -r T P D <<<"$layout"
  N=$((T * P * D))
  # Always both: the config's [parallel] may name other values (gpt_3d.toml: 2 and 2).
  EXTRA=(--tp "$T" --pp "$P")
  # With tp = pp = 1 kiln train runs its data-parallel loop, which takes each
  # replica's batch in one piece (train.grad_accum = 1), not in micro-batches.
  M_RUN=$MICRO
  [ "$T" = 1 ] && [ "$P" = 1 ] && M_RUN=1
  PRED=$("$KILN" plan "$PLAN" --profile "$PROFILE" --tp "$T" --pp "$P" --dp "$D" \
    --microbatches "$M_RUN" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["step_time_s"])')
  RESULTS=()
  for run in $(seq "$RUNS"); do
    M="$WORK/$layout-$run.jsonl"
    # /usr/bin/time: CPU seconds and context switches of the whole job (the
    # launcher waits for its ranks), for diagnosis on stderr.
    /usr/bin/time -o "$WORK/$layout-$run.time" -f "%e %U %S %w %c" \
      "$KILN" launch -n "$N" -- "$KILN" train "$CONFIG" "${EXTRA[@]}" --max-steps "$STEPS" \
      --no-progress --metrics-json "$M" >"$WORK/$layout-$run.log" 2>&1 ||
      { echo "measure_host_layouts: $layout run $run failed:" >&2; tail -20 "$WORK/$layout-$run.log" >&2; exit 1; }
    RESULTS+=("$(median_step "$M")")
    read -r WALL USR SYS VOL INVOL <"$WORK/$layout-$run.time"
    echo "measure_host_layouts: $layout run $run: step ${RESULTS[-1]} s; job ${WALL} s wall, ${USR} s user," \
      "${SYS} s system, $VOL voluntary and $INVOL involuntary context switches" >&2
  done
  python3 - "$layout" "$N" "$PRED" "${RESULTS[@]}" <<'PY'
import statistics, sys
layout, n, pred = sys.argv[1], sys.argv[2], float(sys.argv[3])
runs = [float(x) for x in sys.argv[4:]]
m = statistics.median(runs)
t, p, d = layout.split("x")
print(f"| {t}×{p}×{d} | {n} | {pred:.3f} | {m:.3f} ({min(runs):.3f}–{max(runs):.3f}) | {100 * (pred / m - 1):+.1f}% |")
PY
done
