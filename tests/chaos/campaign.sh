#!/usr/bin/env bash
# The chaos campaign: two nodes (network namespaces joined by a veth) x 2
# workers training the tiny Fashion-MNIST CNN under `kiln run`, meeting
# through a `kiln store serve` on node a. One fault per trial:
#   worker-kill  SIGKILL a worker on node b
#   worker-stop  SIGSTOP a worker on node b (a hang)
#   node-loss    SIGKILL node b's agent and its workers
#   link-down    the veth goes down; node a re-forms alone after the TTL,
#                then the link comes back and node b rejoins (scale-up at a
#                checkpoint boundary)
#   etcd-restart the job rendezvouses through etcd (--rdzv-backend etcd,
#                etcd on node a); etcd is SIGKILLed and started again
#
# Every trial must finish its steps and meet its fault's bounds
# (DETECT_MAX, RECOVER_MAX, WORLD_AFTER below): detected_s (fault -> the first agent's failure decision),
# recovery_s (fault -> the first step rank 0 completes after it) and the
# world size at the end (4, or 2 after a lost node); where the world ends
# as it began the final parameters must equal a fault-free run's. Prints
# one JSON line per trial, then one table per fault (median and worst), and
# exits 1 if any trial missed a bound.
#
#   tests/chaos/campaign.sh PATH/TO/kiln [--trials N] [--table FILE] [SCENARIO...]
#
# Default: every fault, one trial each (what `make test` runs); `make chaos`
# runs 10 trials of each. --table also writes the table to FILE. With
# CHAOS_LOCK=FILE each trial holds FILE shared (flock -s), so on a shared
# machine whoever takes it exclusively (a benchmark) runs between trials,
# never beside one, and never waits for the whole campaign.
# Needs root (ip netns). Exit: 0 pass, 1 fail, 77 skip.
set -euo pipefail
KILN=$(readlink -f "$1"); shift
TRIALS=1 TABLE_FILE=
SCENARIOS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --trials) TRIALS=$2; shift 2 ;;
    --table) TABLE_FILE=$2; shift 2 ;;
    *) SCENARIOS+=("$1"); shift ;;
  esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(worker-kill worker-stop node-loss link-down etcd-restart)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$ROOT/tests/elastic/lib.sh"
source "$ROOT/scripts/lib/netns.sh"
command -v ip >/dev/null || { echo "SKIP: 'ip' (iproute2) not found"; exit 77; }
command -v jq >/dev/null || { echo "SKIP: jq not found"; exit 77; }

NS_A="kilnch_a_$$" NS_B="kilnch_b_$$" VETH_A="kca$$" VETH_B="kcb$$"
ADDR_A=10.234.0.1 ADDR_B=10.234.0.2 STORE_PORT=29400
TTL=3 HANG=3 FAULT_AT_STEP=40
# Steps per run: 150, and 300 for link-down, where node b must rejoin (a
# scale-up at a checkpoint boundary) before the job ends.
STEPS_DEFAULT=150
declare -A STEPS_FOR=([link-down]=300)

# Bounds per fault, seconds: detection, and recovery (which includes the
# detection, the backoff, the new round, starting 4 LibTorch processes and
# loading the checkpoint on 2 shared cores), and the world size after.
# etcd-restart detects nothing when etcd is back within the TTL (the
# workers meet through a TCP store): "-" means no decision is expected.
# The recovery bounds leave room for a loaded machine: with other builds
# and tests beside it a LibTorch process takes seconds to start.
declare -A DETECT_MAX=([worker-kill]=2 [worker-stop]=$((HANG + 2)) [node-loss]=$((TTL + 2))
                       [link-down]=$((TTL + 2)) [etcd-restart]=-)
declare -A RECOVER_MAX=([worker-kill]=30 [worker-stop]=$((HANG + 30)) [node-loss]=$((TTL + 30))
                        [link-down]=$((TTL + 30)) [etcd-restart]=30)
declare -A WORLD_AFTER=([worker-kill]=4 [worker-stop]=4 [node-loss]=2 [link-down]=4 [etcd-restart]=4)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-chaos.XXXXXX")
SHM="/dev/shm/kiln-chaos-$$"  # the runs' in-memory checkpoint tiers
PIDS=()
cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for ns in "$NS_A" "$NS_B"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "$SHM"
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then echo "chaos: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if ! err=$(ip netns add "$NS_A" 2>&1); then echo "SKIP: cannot create network namespaces: $err"; exit 77; fi
join_namespaces "$NS_A" "$NS_B" "$VETH_A" "$VETH_B" "$ADDR_A" "$ADDR_B"

BASE_CONFIG=$(tiny_config "$WORK")
"$KILN" data convert fashion-mnist "$WORK/data" > /dev/null

ip netns exec "$NS_A" "$KILN" store serve --host 0.0.0.0 --port "$STORE_PORT" > "$WORK/store.out" 2>&1 &
STORE_PID=$!
PIDS+=("$STORE_PID")
wait_until 30 grep -q "listening on" "$WORK/store.out"

fail() { echo "chaos $RUN: $*" >&2; exit 1; }

# The rendezvous store: a `kiln store serve` on node a, or etcd there.
RDZV=()
ETCD_PID=
start_etcd() {
  ip netns exec "$NS_A" etcd --name chaos --data-dir "$WORK/etcd" \
    --listen-client-urls "http://$ADDR_A:2379" --advertise-client-urls "http://$ADDR_A:2379" \
    --listen-peer-urls "http://$ADDR_A:2380" --initial-advertise-peer-urls "http://$ADDR_A:2380" \
    --initial-cluster "chaos=http://$ADDR_A:2380" --heartbeat-interval 20 --election-timeout 200 \
    >> "$WORK/etcd.log" 2>&1 &
  ETCD_PID=$!
  PIDS+=("$ETCD_PID")
  wait_until 30 ip netns exec "$NS_A" curl -sf "http://$ADDR_A:2379/health"
}
stop_etcd() {
  [ -n "$ETCD_PID" ] || return 0
  kill -9 "$ETCD_PID" 2>/dev/null || true
  wait "$ETCD_PID" 2>/dev/null || true
  ETCD_PID=
}

# agent RUN NODE NS ADDR: one node's agent, in the background; sets AGENT_PID.
# Each run has its own config so its in-memory tier lives under $SHM.
agent() {
  local run=$1 node=$2 ns=$3 addr=$4 steps=$5
  ip netns exec "$ns" env KILN_COMM_ADDR="$addr" KILN_COMM_TIMEOUT=10 \
    "$KILN" run --nnodes 1:2 -n 2 "${RDZV[@]}" --rdzv-id "$run" \
      --node-id "$node" --node-ttl "$TTL" --hang-timeout "$HANG" --last-call 10 --backoff-base 0.2 \
      --events "$WORK/$run.$node.events" -- \
    "$KILN" train "$WORK/$run.toml" --no-progress --max-steps "$steps" --ckpt-dir "$WORK/$run.ckpt" \
      --metrics-json "$WORK/$run.$node.metrics" >> "$WORK/$run.$node.log" 2>&1 &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
}

start_run() {  # RUN STEPS: both agents; sets A_PID, B_PID
  { cat "$BASE_CONFIG"; echo "memory_dir = \"$SHM/$1\""; } > "$WORK/$1.toml"
  agent "$1" a "$NS_A" "$ADDR_A" "$2"; A_PID=$AGENT_PID
  agent "$1" b "$NS_B" "$ADDR_B" "$2"; B_PID=$AGENT_PID
}

# final_line RUN: node a's last "final:" line (rank 0 lives on node a).
final_line() { grep -o 'final: .*' "$WORK/$1.a.log" | tail -1; }

# first_step_after RUN T: the end time of the first step rank 0 completed after T.
first_step_after() {
  jq -s -r --argjson t "$2" '[.[] | select(.type == "step") | .t + .step_s | select(. > $t)] | min // empty' \
    "$WORK/$1.a.metrics"
}
# last_step_before RUN T: the highest step rank 0 completed before T (from
# the copy taken at the fault: a restarted rank 0 starts the file afresh).
last_step_before() {
  jq -s -r --argjson t "$2" '[.[] | select(.type == "step" and .t + .step_s < $t) | .step + 1] | max // 0' \
    "$WORK/$1.a.metrics.at-fault"
}
# detected_at RUN T: when the first agent logged a failure after T.
detected_at() {
  cat "$WORK/$1".*.events | jq -s -r --argjson t "$2" '[.[] | select(.time > $t and
    (.event | IN("worker_exit", "worker_hang", "comm_error", "node_lost", "store_lost"))) | .time] | min // empty'
}
resumed_from() {  # RUN: the step the first restart resumed from ("" if none restarted)
  grep -hEo 'resumed from (memory, )?[^ ]*/step-[0-9]+' "$WORK/$1".*.log | head -1 | grep -o '[0-9]*$' || true
}

REFERENCE=
reference() {
  [ -n "$REFERENCE" ] && return 0
  local RUN=reference
  RDZV=(--rdzv-endpoint "$ADDR_A:$STORE_PORT")
  start_run reference "$STEPS_DEFAULT"
  wait "$A_PID" && wait "$B_PID" || fail "the fault-free run failed"
  REFERENCE=$(final_line reference | grep -o 'params_xxh3 [0-9a-f]*')
  [ -n "$REFERENCE" ] || fail "the fault-free run printed no final line"
}

# trial SCENARIO N: one run with one fault; appends its JSON line to
# $WORK/results.jsonl (and prints it).
trial() {
  local scenario=$1 n=$2
  RUN="$scenario.$n"
  RDZV=(--rdzv-endpoint "$ADDR_A:$STORE_PORT")
  if [ "$scenario" = etcd-restart ]; then
    start_etcd
    RDZV=(--rdzv-backend etcd --rdzv-endpoint "$ADDR_A:2379")
  fi
  local steps=${STEPS_FOR[$scenario]:-$STEPS_DEFAULT}
  start_run "$RUN" "$steps"
  wait_until 180 at_least_step "$WORK/$RUN.ckpt" "$FAULT_AT_STEP"
  local fault_time
  fault_time=$(date +%s.%N)
  cp "$WORK/$RUN.a.metrics" "$WORK/$RUN.a.metrics.at-fault"
  case "$scenario" in
    worker-kill) kill -9 "$(worker_pid "$B_PID" 2)" ;;
    worker-stop) kill -STOP "$(worker_pid "$B_PID" 2)" ;;
    node-loss) kill -9 "$B_PID" "$(worker_pid "$B_PID" 2)" "$(worker_pid "$B_PID" 3)" ;;
    etcd-restart) stop_etcd; start_etcd ;;
    link-down)
      ip -n "$NS_A" link set "$VETH_A" down
      wait_until 60 jq -e -s '[.[] | select(.event == "round_formed" and .nodes == 1)] | length > 0' \
        "$WORK/$RUN.a.events"
      ip -n "$NS_A" link set "$VETH_A" up
      ;;
    *) echo "chaos: unknown scenario $scenario" >&2; exit 2 ;;
  esac
  wait "$A_PID" || { tail -20 "$WORK/$RUN.a.log" >&2; fail "node a's agent failed"; }
  if [ "$scenario" != node-loss ]; then
    wait "$B_PID" || { tail -20 "$WORK/$RUN.b.log" >&2; fail "node b's agent failed"; }
  fi
  stop_etcd
  local final world_after match=null got
  final=$(final_line "$RUN")
  echo "$final" | grep -q "final: step $steps " || fail "did not finish step $steps: $final"
  world_after=$(echo "$final" | grep -o '[0-9]* ranks)' | grep -o '^[0-9]*')
  if [ "$world_after" = 4 ] && [ "$scenario" != link-down ]; then
    got=$(echo "$final" | grep -o 'params_xxh3 [0-9a-f]*')
    match=false
    [ "$got" = "$REFERENCE" ] && match=true
  fi
  local recovered detected before resumed
  recovered=$(first_step_after "$RUN" "$fault_time")
  detected=$(detected_at "$RUN" "$fault_time")
  before=$(last_step_before "$RUN" "$fault_time")
  resumed=$(resumed_from "$RUN")
  jq -n -c --arg s "$scenario" --argjson n "$n" --argjson f "$fault_time" \
     --argjson r "${recovered:-null}" --argjson d "${detected:-null}" \
     --argjson before "$before" --argjson resumed "${resumed:-null}" --argjson w "$world_after" \
     --argjson m "$match" --arg dmax "${DETECT_MAX[$scenario]}" \
     --argjson rmax "${RECOVER_MAX[$scenario]}" --argjson wexp "${WORLD_AFTER[$scenario]}" '
     {scenario: $s, trial: $n,
      detected_s: (if $d then ($d - $f) * 100 | round / 100 else null end),
      recovery_s: (if $r then ($r - $f) * 100 | round / 100 else null end),
      restarted: ($resumed != null),
      lost_steps: (if $resumed then [$before - $resumed, 0] | max else 0 end),
      world_before: 4, world_after: $w, params_match_fault_free: $m,
      detect_max_s: (if $dmax == "-" then null else ($dmax | tonumber) end),
      recover_max_s: $rmax, world_expected: $wexp}
     | .violations = ([
         (if $dmax == "-" then empty
          elif .detected_s == null then "no failure detected"
          elif .detected_s > ($dmax | tonumber) then "detected after \(.detected_s) s > \($dmax) s"
          else empty end),
         (if .recovery_s == null then "no step after the fault"
          elif .recovery_s > $rmax then "recovered after \(.recovery_s) s > \($rmax) s"
          else empty end),
         (if $w != $wexp then "ended on \($w) ranks, not \($wexp)" else empty end),
         (if $m == false then "parameters differ from the fault-free run" else empty end)])
     | .ok = (.violations | length == 0)' | tee -a "$WORK/results.jsonl"
  rm -rf "$SHM/$RUN" "$WORK/$RUN.ckpt"
}

for scenario in "${SCENARIOS[@]}"; do
  if [ "$scenario" = etcd-restart ] && ! command -v etcd >/dev/null; then
    echo "chaos: etcd not installed, skipping etcd-restart"
    continue
  fi
  case "$scenario" in worker-kill|worker-stop|etcd-restart) reference ;; esac
  for n in $(seq 1 "$TRIALS"); do
    if [ -n "${CHAOS_LOCK:-}" ]; then
      exec {lock_fd}>>"$CHAOS_LOCK"
      flock -s "$lock_fd"
      trial "$scenario" "$n"
      exec {lock_fd}>&-
    else
      trial "$scenario" "$n"
    fi
  done
done

# One row per fault: median and worst of every trial.
TABLE=$(jq -s -r '
  def r2: . * 100 | round / 100;
  def median: sort | if length % 2 == 1 then .[length / 2 | floor]
                     else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def stat(f): [.[] | f | select(. != null)] as $v
    | if ($v | length) == 0 then "—" else "\($v | median | r2) / \($v | max | r2)" end;
  def bound(f): (.[0] | f) as $b | if $b == null then "none expected" else "≤ \($b)" end;
  def set(f): [.[] | f] | unique | map(if . == null then "n/a" else tostring end) | join(", ");
  "| fault | trials | met every bound | detected s, median / worst | bound | recovery s, median / worst | bound | lost steps, median / worst | world after (expected) | params = fault-free |",
  "|---|---:|---:|---:|---|---:|---|---:|---|---|",
  ([to_entries[] | .value + {i: .key}] | group_by(.scenario) | sort_by(.[0].i)[]
   | "| \(.[0].scenario) | \(length) | \([.[] | select(.ok)] | length) | \(stat(.detected_s)) | \(bound(.detect_max_s)) | \(stat(.recovery_s)) | \(bound(.recover_max_s)) | \(stat(.lost_steps)) | \(set(.world_after)) (\(.[0].world_expected)) | \(set(.params_match_fault_free)) |")
  ' "$WORK/results.jsonl")
echo "$TABLE"
[ -z "$TABLE_FILE" ] || echo "$TABLE" > "$TABLE_FILE"
if jq -e -s 'all(.ok)' "$WORK/results.jsonl" > /dev/null; then exit 0; fi
jq -c 'select(.ok | not) | {scenario, trial, violations}' "$WORK/results.jsonl" >&2
RUN=campaign
fail "some trials missed their bounds"
