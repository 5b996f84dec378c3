#!/usr/bin/env bash
# The chaos campaign: two nodes (network namespaces joined by a veth) x 2
# workers training the Fashion-MNIST CNN under `kiln run`, meeting through a
# `kiln store serve` on node a. One fault per run:
#   worker-kill  SIGKILL a worker on node b
#   worker-stop  SIGSTOP a worker on node b (a hang)
#   node-loss    SIGKILL node b's agent and its workers
#   link-down    the veth goes down; node a re-forms alone after the TTL,
#                then the link comes back and node b rejoins (scale-up at a
#                checkpoint boundary)
#   etcd-restart the job rendezvouses through etcd (--rdzv-backend etcd,
#                etcd on node a); etcd is SIGKILLed and started again
# Every run must finish its steps; where the world size ends as it began
# (worker-kill, worker-stop, etcd-restart) the final parameters must equal a fault-free
# run's. Prints one JSON line per run: recovery_s (fault -> first step
# completed after it), detected_s (fault -> the first agent's failure
# decision), lost_steps (steps done before the fault that were
# redone), the world sizes and whether the parameters match.
#
#   tests/chaos/campaign.sh PATH/TO/kiln [SCENARIO...]   (default: all four)
# Needs root (ip netns). Exit: 0 pass, 1 fail, 77 skip.
set -euo pipefail
KILN=$(readlink -f "$1"); shift
SCENARIOS=("$@"); [ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(worker-kill worker-stop node-loss link-down etcd-restart)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$ROOT/tests/elastic/lib.sh"
source "$ROOT/scripts/lib/netns.sh"
command -v ip >/dev/null || { echo "SKIP: 'ip' (iproute2) not found"; exit 77; }

NS_A="kilnch_a_$$" NS_B="kilnch_b_$$" VETH_A="kca$$" VETH_B="kcb$$"
ADDR_A=10.234.0.1 ADDR_B=10.234.0.2 STORE_PORT=29400
TTL=3 HANG=3 STEPS=300
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-chaos.XXXXXX")
PIDS=()
cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for ns in "$NS_A" "$NS_B"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then echo "chaos: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if ! err=$(ip netns add "$NS_A" 2>&1); then echo "SKIP: cannot create network namespaces: $err"; exit 77; fi
join_namespaces "$NS_A" "$NS_B" "$VETH_A" "$VETH_B" "$ADDR_A" "$ADDR_B"

CONFIG=$(tiny_config "$WORK")
"$KILN" data convert fashion-mnist "$WORK/data" > /dev/null

ip netns exec "$NS_A" "$KILN" store serve --host 0.0.0.0 --port "$STORE_PORT" > "$WORK/store.out" 2>&1 &
PIDS+=($!)
wait_until 30 grep -q "listening on" "$WORK/store.out"

fail() { echo "chaos $RUN: $*" >&2; exit 1; }

# The rendezvous store: a `kiln store serve` on node a, or etcd there.
RDZV=(--rdzv-endpoint "$ADDR_A:$STORE_PORT")
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

# agent RUN NODE NS ADDR: one node's agent, in the background; sets AGENT_PID.
agent() {
  local run=$1 node=$2 ns=$3 addr=$4
  ip netns exec "$ns" env KILN_COMM_ADDR="$addr" KILN_COMM_TIMEOUT=10 \
    "$KILN" run --nnodes 1:2 -n 2 "${RDZV[@]}" --rdzv-id "$run" \
      --node-id "$node" --node-ttl "$TTL" --hang-timeout "$HANG" --last-call 10 --backoff-base 0.2 \
      --events "$WORK/$run.$node.events" -- \
    "$KILN" train "$CONFIG" --no-progress --max-steps "$STEPS" --ckpt-dir "$WORK/$run.ckpt" \
      --metrics-json "$WORK/$run.$node.metrics" >> "$WORK/$run.$node.log" 2>&1 &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
}

start_run() {  # RUN: both agents; sets A_PID, B_PID
  agent "$1" a "$NS_A" "$ADDR_A"; A_PID=$AGENT_PID
  agent "$1" b "$NS_B" "$ADDR_B"; B_PID=$AGENT_PID
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
  start_run reference
  wait "$A_PID" && wait "$B_PID" || fail "the fault-free run failed"
  REFERENCE=$(final_line reference | grep -o 'params_xxh3 [0-9a-f]*')
  [ -n "$REFERENCE" ] || fail "the fault-free run printed no final line"
}

for RUN in "${SCENARIOS[@]}"; do
  case "$RUN" in worker-kill|worker-stop|etcd-restart) reference ;; esac
  if [ "$RUN" = etcd-restart ]; then
    command -v etcd >/dev/null || { echo "chaos: etcd not installed, skipping etcd-restart"; continue; }
    start_etcd
    RDZV=(--rdzv-backend etcd --rdzv-endpoint "$ADDR_A:2379")
  fi
  start_run "$RUN"
  wait_until 180 at_least_step "$WORK/$RUN.ckpt" 40
  fault_time=$(date +%s.%N)
  cp "$WORK/$RUN.a.metrics" "$WORK/$RUN.a.metrics.at-fault"
  case "$RUN" in
    worker-kill) kill -9 "$(worker_pid "$B_PID" 2)" ;;
    worker-stop) kill -STOP "$(worker_pid "$B_PID" 2)" ;;
    node-loss) kill -9 "$B_PID" "$(worker_pid "$B_PID" 2)" "$(worker_pid "$B_PID" 3)" ;;
    etcd-restart) kill -9 "$ETCD_PID"; wait "$ETCD_PID" 2>/dev/null || true; start_etcd ;;
    link-down)
      ip -n "$NS_A" link set "$VETH_A" down
      wait_until 60 jq -e -s '[.[] | select(.event == "round_formed" and .nodes == 1)] | length > 0' \
        "$WORK/$RUN.a.events"
      ip -n "$NS_A" link set "$VETH_A" up
      ;;
    *) echo "chaos: unknown scenario $RUN" >&2; exit 2 ;;
  esac
  wait "$A_PID" || { tail -20 "$WORK/$RUN.a.log" >&2; fail "node a's agent failed"; }
  if [ "$RUN" != node-loss ]; then
    wait "$B_PID" || { tail -20 "$WORK/$RUN.b.log" >&2; fail "node b's agent failed"; }
  fi
  final=$(final_line "$RUN")
  echo "$final" | grep -q "final: step $STEPS " || fail "did not finish step $STEPS: $final"
  world_after=$(echo "$final" | grep -o '[0-9]* ranks)' | grep -o '^[0-9]*')
  match=null
  if [ "$RUN" = worker-kill ] || [ "$RUN" = worker-stop ] || [ "$RUN" = etcd-restart ]; then
    [ "$world_after" = 4 ] || fail "ended on $world_after ranks, not 4"
    got=$(echo "$final" | grep -o 'params_xxh3 [0-9a-f]*')
    [ "$got" = "$REFERENCE" ] || fail "$got differs from the fault-free run's $REFERENCE"
    match=true
  fi
  recovered=$(first_step_after "$RUN" "$fault_time")
  detected=$(detected_at "$RUN" "$fault_time")
  before=$(last_step_before "$RUN" "$fault_time")
  resumed=$(resumed_from "$RUN")
  jq -n -c --arg s "$RUN" --argjson f "$fault_time" --argjson r "${recovered:-null}" --argjson d "${detected:-null}" \
     --argjson before "$before" --argjson resumed "${resumed:-null}" --argjson w "$world_after" \
     --argjson m "$match" --argjson ttl "$TTL" --argjson hang "$HANG" \
     '{scenario: $s, detected_s: (if $d then ($d - $f) * 100 | round / 100 else null end), recovery_s: (if $r then ($r - $f) * 100 | round / 100 else null end),
       restarted: ($resumed != null),
       lost_steps: (if $resumed then [$before - $resumed, 0] | max else 0 end), world_before: 4, world_after: $w,
       params_match_fault_free: $m, node_ttl_s: $ttl, hang_timeout_s: $hang}'
  PIDS=("${PIDS[0]}")  # keep the store
  RDZV=(--rdzv-endpoint "$ADDR_A:$STORE_PORT")
done
