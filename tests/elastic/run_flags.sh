#!/usr/bin/env bash
# kiln run's torchrun flags, with shell workers (seconds, no LibTorch):
#   standalone    --standalone: one node on an embedded store under a fresh
#                 job id; rendezvous flags ignored; --nnodes above 1 refused
#   restarts      --max-restarts counts failures only: a job with
#                 --max-restarts 1 scales up (node b joins), is preempted
#                 down (node b leaves), then survives one worker failure;
#                 TORCHELASTIC_RESTART_COUNT reads 0, 0, 0, then 1. A second
#                 failure then ends it (the budget is spent).
#   tests/elastic/run_flags.sh PATH/TO/kiln [SCENARIO...]
set -euo pipefail
KILN=$(readlink -f "$1"); shift
SCENARIOS=("$@"); [ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(standalone restarts)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/../lib/scratch.sh"
PIDS=()
stop_started() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
}
scratch run_flags stop_started
fail() { echo "run_flags $SCENARIO: $*" >&2; exit 1; }

for SCENARIO in "${SCENARIOS[@]}"; do
  case "$SCENARIO" in
    standalone)
      show='echo "id=$TORCHELASTIC_RUN_ID world=$WORLD_SIZE addr=$MASTER_ADDR"'
      # An endpoint nobody serves: --standalone must ignore it.
      "$KILN" run --standalone -n 2 --rdzv-endpoint 192.0.2.1:1 --rdzv-id mine -- sh -c "$show" \
        > "$WORK/s1.log" 2>&1 || { cat "$WORK/s1.log" >&2; fail "kiln run --standalone failed"; }
      "$KILN" run --standalone -n 1 -- sh -c "$show" > "$WORK/s2.log" 2>&1 || fail "second run failed"
      [ "$(grep -c 'world=2 addr=127.0.0.1' "$WORK/s1.log")" = 2 ] \
        || { cat "$WORK/s1.log" >&2; fail "expected 2 workers of world 2 on loopback"; }
      grep -q "ignores --rdzv-backend" "$WORK/s1.log" || fail "the ignored flags were not reported"
      id1=$(grep -o 'id=[^ ]*' "$WORK/s1.log" | sort -u)
      id2=$(grep -o 'id=[^ ]*' "$WORK/s2.log" | sort -u)
      [ "$(echo "$id1" | wc -l)" = 1 ] || fail "the workers of one job got different ids: $id1"
      case "$id1" in id=standalone-*) ;; *) fail "not a fresh standalone id: $id1" ;; esac
      [ "$id1" != "$id2" ] || fail "two standalone jobs share the id $id1"
      if "$KILN" run --standalone --nnodes 2 -n 1 -- true > "$WORK/s3.log" 2>&1; then
        fail "--standalone --nnodes 2 was accepted"
      fi
      grep -q -- "--standalone runs one node" "$WORK/s3.log" || { cat "$WORK/s3.log" >&2; fail "no clear error"; }
      ;;
    restarts)
      start_store "$WORK"
      PIDS+=("$STORE_PID")
      # Round 1: a alone, until b waits (scale-up stops it). Round 2: a and
      # b, until b is preempted. Round 3: a alone, its worker fails. Round 4:
      # a alone again, finishing. SIGTERM is a clean stop (exit 0), as a
      # checkpointing trainer's would be.
      export LOG="$WORK/restarts.log"
      worker='echo "gen=$KILN_GENERATION world=$WORLD_SIZE restarts=$TORCHELASTIC_RESTART_COUNT" >> "$LOG"
        trap "exit 0" TERM
        case "$KILN_GENERATION" in
          1|2) while :; do sleep 0.05; done ;;
          3) exit 3 ;;
        esac'
      node() {
        "$KILN" run --nnodes 1:2 -n 1 --max-restarts 1 --rdzv-endpoint "127.0.0.1:$STORE_PORT"           --rdzv-id budget --node-id "$1" --last-call 0.3 --backoff-base 0.1           --events "$WORK/$1.events" -- sh -c "$worker" >> "$WORK/$1.log" 2>&1 &
        AGENT_PID=$!
        PIDS+=("$AGENT_PID")
      }
      node a; A_PID=$AGENT_PID
      wait_until 30 grep -q "gen=1 world=1" "$LOG" || fail "round 1 did not start"
      node b; B_PID=$AGENT_PID
      two() { [ "$(grep -c 'gen=2 world=2' "$LOG")" = 2 ]; }
      wait_until 30 two || { cat "$WORK/a.log" >&2; fail "round 2 (scale-up) did not start"; }
      kill -TERM "$B_PID"
      wait "$B_PID" || fail "the preempted agent did not exit 0"
      wait "$A_PID" || { cat "$WORK/a.log" >&2; fail "the job did not survive its one failure"; }
      expected='gen=1 world=1 restarts=0
gen=2 world=2 restarts=0
gen=2 world=2 restarts=0
gen=3 world=1 restarts=0
gen=4 world=1 restarts=1'
      [ "$(cat "$LOG")" = "$expected" ] || { cat "$LOG" >&2; fail "TORCHELASTIC_RESTART_COUNT did not count failures only"; }
      jq -e -s '[.[] | select(.event == "worker_exit")] | length == 1' "$WORK/a.events" > /dev/null \
        || fail "expected exactly one failure decision"
      # A second failure spends the budget: the job gives up.
      export LOG="$WORK/spent.log"
      if "$KILN" run -n 1 --max-restarts 1 --backoff-base 0.05 -- \
          sh -c 'echo "restarts=$TORCHELASTIC_RESTART_COUNT" >> "$LOG"; exit 3' > "$WORK/spent.out" 2>&1; then
        fail "a job failing twice with --max-restarts 1 succeeded"
      fi
      grep -q "giving up on job" "$WORK/spent.out" || { cat "$WORK/spent.out" >&2; fail "no give-up message"; }
      [ "$(cat "$LOG" | tr '\n' ' ')" = "restarts=0 restarts=1 " ] || fail "expected 2 attempts: $(cat "$LOG")"
      ;;
    *) echo "run_flags: unknown scenario $SCENARIO" >&2; exit 2 ;;
  esac
  echo "run_flags: $SCENARIO ok"
done
