#!/usr/bin/env bash
# The cost of diagnosis: the same 2-rank `kiln train` with diagnosis off and
# on (--trace-dir, --diag-every 50, system sampling, /metrics), in the same
# invocation, as PAIRS runs alternating which goes first. Each run's step
# rate is taken from rank 0's --metrics-json (both runs write it): wall time
# from the start of step SKIP to the end of the last step, over the steps,
# so work between steps (the trace, the summary exchange) counts too.
# Prints one JSON line per pair and a summary with the median on/off ratio,
# and the trainer's directly measured recording cost per step ("diag:" log
# line) as a fraction of the step time.
#   bench/diag_overhead.sh [--pairs 5] [--steps 300] [--skip 20] [--kiln PATH] [CONFIG]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN="$ROOT/build/kiln"
PAIRS=5 STEPS=300 SKIP=20 CONFIG=
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) PAIRS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --kiln) KILN=$2; shift 2 ;;
    -*) echo "diag_overhead: unknown option $1" >&2; exit 2 ;;
    *) CONFIG=$1; shift ;;
  esac
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ -z "$CONFIG" ]; then
  sed "s|DATA_DIR|$WORK/data|" "$ROOT/tests/diag/tiny.toml" > "$WORK/tiny.toml"
  CONFIG=$WORK/tiny.toml
fi

# run MODE N: prints seconds per step of rank 0 from step SKIP on.
run() {
  local mode=$1 n=$2 extra=()
  [ "$mode" = on ] && extra=(--trace-dir "$WORK/trace-$n" --diag-every 50 --metrics-port 0)
  "$KILN" launch -n 2 -- "$KILN" train "$CONFIG" --no-progress --max-steps "$STEPS" \
    --metrics-json "$WORK/$mode-$n.jsonl" "${extra[@]}" > "$WORK/$mode-$n.log" 2>&1 ||
    { cat "$WORK/$mode-$n.log" >&2; exit 1; }
  jq -s --argjson skip "$SKIP" '[.[] | select(.type == "step" and .step >= $skip)] |
      ((.[-1].t + .[-1].step_s - .[0].t) / length)' "$WORK/$mode-$n.jsonl"
}

ratios=() costs=()
for i in $(seq 1 "$PAIRS"); do
  if [ $((i % 2)) -eq 1 ]; then off=$(run off "$i"); on=$(run on "$i")
  else on=$(run on "$i"); off=$(run off "$i"); fi
  ratio=$(jq -n "$on / $off")
  # Rank 0's "diag:" line: recording cost (% of step) and the exchange (us per step).
  diag_line=$(grep -h '\[rank 0\].*diag: recording cost' "$WORK/on-$i.log" | head -1)
  cost=$(echo "$diag_line" | grep -o '[0-9.]*% of' | tr -d '% of')
  exchange_us=$(echo "$diag_line" | grep -o 'exchange [0-9.]* us' | grep -o '[0-9.]*')
  ratios+=("$ratio"); costs+=("${cost:-null}")
  echo "{\"pair\":$i,\"off_step_s\":$off,\"on_step_s\":$on,\"ratio\":$ratio,\"recording_cost_pct\":${cost:-null},\"exchange_us_per_step\":${exchange_us:-null}}"
done
median() { printf '%s\n' "$@" | jq -s 'sort | if length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end'; }
echo "{\"pairs\":$PAIRS,\"steps\":$STEPS,\"skip\":$SKIP,\"median_ratio\":$(median "${ratios[@]}"),\"median_recording_cost_pct\":$(median "${costs[@]}")}"
