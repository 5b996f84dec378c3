#!/usr/bin/env bash
# Two agents (nodes a and b, one worker each) on loopback, meeting through a
# standalone `kiln store serve`. Node b is lost (its agent and worker
# SIGKILLed); node a sees b's heartbeat stop for the TTL, classifies it as
# permanent, re-forms alone (world size 2 -> 1) and resumes from the newest
# checkpoint to the last step.
#   tests/elastic/node_loss.sh PATH/TO/kiln
set -euo pipefail
KILN=$1
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ]; then echo "node_loss: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
CONFIG=$(tiny_config "$WORK")
TTL=3
start_store "$WORK"
PIDS+=("$STORE_PID")

agent() {  # agent NODE: one node of the job, in the background
  "$KILN" run --nnodes 1:2 -n 1 --rdzv-endpoint "127.0.0.1:$STORE_PORT" --rdzv-id loss \
    --node-id "$1" --node-ttl "$TTL" --last-call 10 --events "$WORK/events-$1.jsonl" -- \
    "$KILN" train "$CONFIG" --no-progress --max-steps 150 --ckpt-dir "$WORK/ckpt" > "$WORK/$1.log" 2>&1 &
}
agent a; A=$!; PIDS+=("$A")
agent b; B=$!; PIDS+=("$B")
wait_until 120 at_least_step "$WORK/ckpt" 30
victim=$(worker_pid "$B" 1)
fault_time=$(date +%s.%N)
kill -9 "$B" "$victim"
wait "$A" || { echo "node a failed after losing node b" >&2; tail -30 "$WORK/a.log" >&2; exit 1; }

grep -q "final: step 150 .*(.*, 1 ranks)" "$WORK/a.log" \
  || { echo "node a did not finish step 150 on 1 rank" >&2; tail -5 "$WORK/a.log" >&2; exit 1; }
EV="$WORK/events-a.jsonl"
jq -e -s '[.[] | select(.event == "node_lost")] | length == 1 and .[0].failed_node == "b"
          and .[0].class == "permanent" and .[0].action == "exclude_node"' "$EV" > /dev/null \
  || { echo "expected one permanent node_lost decision for b:" >&2; cat "$EV" >&2; exit 1; }
jq -e -s '[.[] | select(.event == "round_formed")] | length == 2 and .[1].nodes == 1
          and .[1].world_size == 1 and (.[1].note | test("left: b"))' "$EV" > /dev/null \
  || { echo "expected round 2 without b:" >&2; cat "$EV" >&2; exit 1; }
reformed=$(event_time "$EV" '.event == "round_formed" and .generation == 2')
echo "node_loss: b lost at $fault_time; a re-formed alone after $(awk -v a="$reformed" -v b="$fault_time" 'BEGIN { printf "%.2f", a - b }') s (TTL $TTL s)"
