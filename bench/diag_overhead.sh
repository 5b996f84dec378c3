#!/usr/bin/env bash
# The cost of diagnosis: the same 2-rank `kiln train` with diagnosis off and
# on (--trace-dir, --diag-every 50, system sampling, /metrics), in the same
# invocation, as PAIRS runs alternating which goes first. Each run's step
# rate is taken from rank 0's --metrics-json (both runs write it): wall time
# from the start of step SKIP to the end of the last step, over the steps,
# so work between steps (the trace, the summary exchange) counts too.
# Prints one JSON line per pair and a summary with the median on/off ratio,
# the CPU seconds of all ranks on over off (cpu_ratio), and what the trainer
# measures directly ("diag:" log line), each as a share of the step time:
# the training thread's recording, the summary exchange, the sampler
# thread's CPU; their sum is measured_cost_pct. On a shared machine whose
# step time moves by 10% from run to run the pairs cannot resolve 1%; the
# direct measurement can.
# --on "FLAGS" replaces what "on" adds (to measure one part alone, e.g.
# --on "--metrics-port 0"; DIR in it becomes the run's trace directory).
# --together runs each pair's two trainings at the same time instead of one
# after the other, and compares them over the interval both were training:
# drift of the machine then hits both alike (4 ranks share the cores, so
# any extra CPU diagnosis needs shows as a slower "on").
# --ab N measures inside one process instead (Note [Diagnosis overhead, A/B
# in one process], kiln/diag/overhead_ab.h): each of PAIRS runs trains with
# diagnosis on and KILN_DIAG_AB_STEPS=N, recording only every other block of
# N steps, and reports the median over block pairs of recorded/unrecorded.
#   bench/diag_overhead.sh [--pairs 5] [--steps 300] [--skip 20] [--on FLAGS] [--together | --ab N]
#                          [--kiln PATH] [CONFIG]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN="$ROOT/build/kiln"
PAIRS=5 STEPS=300 SKIP=20 CONFIG= TOGETHER=0 AB=0 ON_FLAGS="--trace-dir DIR --diag-every 50 --metrics-port 0"
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) PAIRS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --kiln) KILN=$2; shift 2 ;;
    --on) ON_FLAGS=$2; shift 2 ;;
    --together) TOGETHER=1; shift ;;
    --ab) AB=$2; shift 2 ;;
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

# launch MODE N: trains once, writing $WORK/MODE-N.{jsonl,log,cpu}.
launch() {
  local mode=$1 n=$2 extra=()
  [ "$mode" = on ] && read -r -a extra <<< "${ON_FLAGS//DIR/$WORK/trace-$n}"
  # A fresh checkpoint directory and no resume: both runs train the same
  # steps from scratch whatever the config's checkpoint section says.
  # /usr/bin/time: the CPU seconds of every rank (launch waits for them).
  /usr/bin/time -f "%U %S" -o "$WORK/$mode-$n.cpu" \
    "$KILN" launch -n 2 -- "$KILN" train "$CONFIG" --no-progress --max-steps "$STEPS" \
    --no-resume --ckpt-dir "$WORK/ckpt-$mode-$n" \
    --metrics-json "$WORK/$mode-$n.jsonl" "${extra[@]}" > "$WORK/$mode-$n.log" 2>&1 ||
    { cat "$WORK/$mode-$n.log" >&2; exit 1; }
}

# step_time FILE T0 T1: rank 0's wall seconds per step over the steps from
# SKIP on that started at or after T0 and ended by T1 (unix seconds).
step_time() {
  jq -s --argjson skip "$SKIP" --argjson t0 "$2" --argjson t1 "$3" \
    '[.[] | select(.type == "step" and .step >= $skip and .t >= $t0 and .t + .step_s <= $t1)] |
     ((.[-1].t + .[-1].step_s - .[0].t) / length)' "$1"
}
# first_t FILE / last_t FILE: when step SKIP started, when the last step ended.
first_t() { jq -s --argjson skip "$SKIP" '[.[] | select(.type == "step" and .step >= $skip)][0].t' "$1"; }
last_t() { jq -s '[.[] | select(.type == "step")][-1] | .t + .step_s' "$1"; }

# run MODE N: launch, then print seconds per step from step SKIP on.
run() {
  launch "$1" "$2"
  step_time "$WORK/$1-$2.jsonl" 0 1e12
}

# run_together N: both modes at once (4 ranks on the machine), so whatever
# the machine does meanwhile slows both alike; each mode's seconds per step
# over the wall interval both were training in, "OFF ON".
run_together() {
  local n=$1 off_pid on_pid
  # Which starts first alternates, as in the sequential pairs.
  if [ $((n % 2)) -eq 1 ]; then
    launch off "$n" & off_pid=$!
    launch on "$n" & on_pid=$!
  else
    launch on "$n" & on_pid=$!
    launch off "$n" & off_pid=$!
  fi
  wait "$off_pid"; wait "$on_pid"
  local t0 t1
  t0=$(jq -n "[$(first_t "$WORK/off-$n.jsonl"), $(first_t "$WORK/on-$n.jsonl")] | max")
  t1=$(jq -n "[$(last_t "$WORK/off-$n.jsonl"), $(last_t "$WORK/on-$n.jsonl")] | min")
  echo "$(step_time "$WORK/off-$n.jsonl" "$t0" "$t1") $(step_time "$WORK/on-$n.jsonl" "$t0" "$t1")"
}

median() { printf '%s\n' "$@" | jq -s 'sort | if length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end'; }

if [ "$AB" -gt 0 ]; then
  export KILN_DIAG_AB_STEPS=$AB
  ab_ratios=()
  for i in $(seq 1 "$PAIRS"); do
    launch on "$i"
    ab_line=$(grep -h '\[rank 0\].*diag A/B:' "$WORK/on-$i.log" | head -1 || true)
    [ -n "$ab_line" ] || { echo "diag_overhead: no 'diag A/B:' line in run $i" >&2; exit 1; }
    ratio=$(echo "$ab_line" | grep -o 'recorded/unrecorded [0-9.]*' | grep -o '[0-9.]*$')
    on_ms=$(echo "$ab_line" | grep -o 'recorded blocks [0-9.]*' | grep -o '[0-9.]*$')
    off_ms=$(echo "$ab_line" | grep -o 'unrecorded [0-9.]* ms' | grep -o '[0-9.]*')
    block_pairs=$(echo "$ab_line" | grep -o 'median of [0-9]*' | grep -o '[0-9]*$')
    ab_ratios+=("$ratio")
    echo "{\"run\":$i,\"recorded_ms\":$on_ms,\"unrecorded_ms\":$off_ms,\"ratio\":$ratio,\"block_pairs\":$block_pairs}"
  done
  echo "{\"ab_steps\":$AB,\"runs\":$PAIRS,\"steps\":$STEPS,\"median_ratio\":$(median "${ab_ratios[@]}")}"
  exit 0
fi

ratios=() costs=() cpu_ratios=() totals=()
for i in $(seq 1 "$PAIRS"); do
  if [ "$TOGETHER" = 1 ]; then read -r off on <<< "$(run_together "$i")"
  elif [ $((i % 2)) -eq 1 ]; then off=$(run off "$i"); on=$(run on "$i")
  else on=$(run on "$i"); off=$(run off "$i"); fi
  ratio=$(jq -n "$on / $off")
  # CPU seconds of all ranks per trained step, on over off: extra threads'
  # work shows here even when the step rate is too noisy to show it.
  cpu_ratio=$(jq -n "($(tr ' ' + < "$WORK/on-$i.cpu")) / ($(tr ' ' + < "$WORK/off-$i.cpu"))")
  # Rank 0's "diag:" line: recording cost (% of step) and the exchange (us per step).
  # (Absent when "on" has no trace session, e.g. --on "--metrics-port 0".)
  diag_line=$(grep -h '\[rank 0\].*diag: recording cost' "$WORK/on-$i.log" | head -1 || true)
  cost=$(echo "$diag_line" | grep -o '[0-9.]*% of' | tr -d '% of' || true)
  exchange_us=$(echo "$diag_line" | grep -o 'exchange [0-9.]* us' | grep -o '[0-9.]*' || true)
  exchange_pct=$(echo "$diag_line" | grep -o 'us per step ([0-9.]*%)' | tail -1 | grep -o '[0-9.]*%' | tr -d '%' || true)
  sampler_pct=$(echo "$diag_line" | grep -o 'sampler thread CPU [0-9.]* ms ([0-9.]*%)' | grep -o '([0-9.]*%)' | tr -d '()%' || true)
  # Everything diagnosis adds, measured directly: the training thread's
  # recording, the summary exchange, the sampler thread's CPU.
  total=null
  [ -n "$cost" ] && total=$(jq -n "$cost + ${exchange_pct:-0} + ${sampler_pct:-0}")
  ratios+=("$ratio"); costs+=("${cost:-null}"); cpu_ratios+=("$cpu_ratio"); totals+=("$total")
  echo "{\"pair\":$i,\"off_step_s\":$off,\"on_step_s\":$on,\"ratio\":$ratio,\"cpu_ratio\":$cpu_ratio,\"recording_cost_pct\":${cost:-null},\"exchange_us_per_step\":${exchange_us:-null},\"sampler_cpu_pct\":${sampler_pct:-null},\"measured_cost_pct\":$total}"
done
echo "{\"together\":$TOGETHER,\"pairs\":$PAIRS,\"steps\":$STEPS,\"skip\":$SKIP,\"median_ratio\":$(median "${ratios[@]}"),\"median_cpu_ratio\":$(median "${cpu_ratios[@]}"),\"median_recording_cost_pct\":$(median "${costs[@]}"),\"median_measured_cost_pct\":$(median "${totals[@]}")}"
