#!/usr/bin/env bash
# `kiln run --rdzv-backend etcd` end to end, against a real etcd this test
# starts: two agents (nodes a and b, --nnodes 2, one kiln train worker
# each). Mid-run node b's worker is SIGKILLed: the job restarts from its
# checkpoint (TORCHELASTIC_RESTART_COUNT becomes 1); once it trains again
# etcd itself is SIGKILLed and started again. The job must finish on both
# nodes (world size 2 again) with a fault-free run's parameters.
# Everything runs in a network namespace of its own, so etcd's fixed ports
# are on a loopback nobody else uses.
#
#   tests/elastic/etcd.sh PATH/TO/kiln        Exit: 0 pass, 1 fail, 77 skip.
set -euo pipefail
KILN=$(readlink -f "$1")
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
for tool in etcd ip jq curl; do
  command -v "$tool" > /dev/null || { echo "SKIP: $tool not installed"; exit 77; }
done
NS="kiln_etcd_$$"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-etcd-e2e.XXXXXX")
SHM="/dev/shm/kiln-etcd-e2e-$$"
PIDS=()
cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for p in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  rm -rf "$SHM"
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then echo "etcd e2e: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if ! err=$(ip netns add "$NS" 2>&1); then echo "SKIP: cannot create a network namespace: $err"; exit 77; fi
ip -n "$NS" link set lo up
# (Started directly, not through a shell function: the pids the test
# signals must be the processes themselves.)
in_ns() { ip netns exec "$NS" "$@"; }
fail() { echo "etcd e2e: $*" >&2; exit 1; }

STEPS=200
CONFIG=$(tiny_config "$WORK")
echo "memory_dir = \"$SHM\"" >> "$CONFIG"
TRAIN=("$KILN" train "$CONFIG" --no-progress --max-steps "$STEPS")

# The fault-free reference: the same world size (2) on the embedded store.
"$KILN" run -n 2 --rdzv-id ref -- "${TRAIN[@]}" --ckpt-dir "$WORK/ref" > "$WORK/ref.log" 2>&1 \
  || { tail -20 "$WORK/ref.log" >&2; fail "the fault-free run failed"; }
EXPECTED=$(params_digest "$WORK/ref.log")
[ -n "$EXPECTED" ] || fail "the fault-free run printed no final line"

ETCD_PID=
start_etcd() {
  ip netns exec "$NS" etcd --name e2e --data-dir "$WORK/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster e2e=http://127.0.0.1:2380 --heartbeat-interval 20 --election-timeout 200 \
    >> "$WORK/etcd.log" 2>&1 &
  ETCD_PID=$!
  PIDS+=("$ETCD_PID")
  wait_until 30 in_ns curl -sf http://127.0.0.1:2379/health \
    || { tail -20 "$WORK/etcd.log" >&2; fail "etcd did not come up"; }
}
start_etcd

# agent NODE: sets AGENT_PID.
agent() {
  ip netns exec "$NS" env KILN_COMM_ADDR=127.0.0.1 "$KILN" run --nnodes 2 -n 1 \
      --rdzv-backend etcd --rdzv-endpoint 127.0.0.1:2379 --rdzv-id e2e --node-id "$1" \
      --node-addr 127.0.0.1 --node-ttl 3 --hang-timeout 10 --backoff-base 0.2 \
      --events "$WORK/$1.events" -- \
    "${TRAIN[@]}" --ckpt-dir "$WORK/ckpt" >> "$WORK/$1.log" 2>&1 &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
}
agent a; A_PID=$AGENT_PID
agent b; B_PID=$AGENT_PID

# 1. A worker dies: the group restarts and resumes.
wait_until 120 at_least_step "$WORK/ckpt" 30 || fail "no checkpoint of step 30"
kill -9 "$(worker_pid "$B_PID" 1)"
restarted() { jq -e -s '[.[] | select(.event == "round_formed" and .generation >= 2)] | length > 0' "$1"; }
wait_until 60 restarted "$WORK/a.events" || fail "node a did not re-form after the kill"
resumed=$(committed_step "$WORK/ckpt")
wait_until 120 at_least_step "$WORK/ckpt" $((resumed + 20)) || fail "no training after the restart"

# 2. etcd dies and comes back while the job trains.
kill -0 "$A_PID" && kill -0 "$B_PID" || fail "the job ended before etcd was restarted"
kill -9 "$ETCD_PID"; wait "$ETCD_PID" 2>/dev/null || true
start_etcd
echo "etcd e2e: etcd restarted at step $(committed_step "$WORK/ckpt") of $STEPS"

wait "$A_PID" || { tail -20 "$WORK/a.log" >&2; fail "node a's agent failed"; }
wait "$B_PID" || { tail -20 "$WORK/b.log" >&2; fail "node b's agent failed"; }
# Rank 0 (node a's worker) prints the final line.
final=$(grep -o 'final: .*' "$WORK/a.log" | tail -1 || true)
echo "$final" | grep -q "final: step $STEPS .*, 2 ranks)" || fail "did not finish on 2 ranks: $final"
got=$(params_digest "$WORK/a.log")
[ "$got" = "$EXPECTED" ] || fail "parameters $got differ from the fault-free run's $EXPECTED"
# One failure decision (the kill), counted once: the last round runs with
# both nodes and TORCHELASTIC_RESTART_COUNT 1.
cat "$WORK/a.events" "$WORK/b.events" > "$WORK/all.events"
jq -e -s '[.[] | select(.event == "worker_exit")] | length == 1 and .[0].action == "restart_group"' \
  "$WORK/all.events" > /dev/null || { cat "$WORK/all.events" >&2; fail "expected one worker_exit restart"; }
jq -e -s '[.[] | select(.event == "round_formed")] | last | .world_size == 2 and .restarts == 1' \
  "$WORK/a.events" > /dev/null || { cat "$WORK/a.events" >&2; fail "the last round is not whole with 1 restart"; }
echo "etcd e2e: finished on 2 ranks with the fault-free parameters"
