#!/usr/bin/env bash
# kiln run on one node, end to end: a worker SIGKILLed mid-training brings
# its whole group down; the agent classifies it as transient, restarts the
# group after a backoff, the workers resume from the newest checkpoint and
# finish with exactly the parameters of a run that never failed.
#   tests/elastic/worker_crash.sh PATH/TO/kiln
set -euo pipefail
KILN=$1
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
WORK=$(mktemp -d)
AGENT=
cleanup() {
  local rc=$?
  [ -n "$AGENT" ] && kill -9 "$AGENT" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then echo "worker_crash: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
CONFIG=$(tiny_config "$WORK")
TRAIN=("$KILN" train "$CONFIG" --no-progress --max-steps 240)

# The fault-free reference (it also converts the dataset).
"$KILN" run -n 2 --rdzv-id ref -- "${TRAIN[@]}" --ckpt-dir "$WORK/ref" > "$WORK/ref.log" 2>&1
expected=$(params_digest "$WORK/ref.log")
[ -n "$expected" ] || { echo "reference run printed no final line" >&2; cat "$WORK/ref.log" >&2; exit 1; }

"$KILN" run -n 2 --rdzv-id crash --events "$WORK/events.jsonl" --backoff-base 0.2 -- \
  "${TRAIN[@]}" --ckpt-dir "$WORK/crash" > "$WORK/crash.log" 2>&1 &
AGENT=$!
wait_until 120 at_least_step "$WORK/crash" 40
victim=$(worker_pid "$AGENT" 1)
kill -9 "$victim"
fault_step=$(committed_step "$WORK/crash")
wait "$AGENT" || { echo "kiln run failed after the crash" >&2; tail -30 "$WORK/crash.log" >&2; exit 1; }
AGENT=

got=$(params_digest "$WORK/crash.log")
echo "worker_crash: killed rank 1 (pid $victim) after step $fault_step was committed; params $got, fault-free $expected"
[ "$got" = "$expected" ] || { echo "parameters differ from the fault-free run" >&2; exit 1; }
# One decision, logged: transient worker exit -> restart of the group; then round 2.
jq -e -s '[.[] | select(.event == "worker_exit")] | length == 1 and .[0].class == "transient"
          and .[0].action == "restart_group" and .[0].local_rank == 1
          and (.[0].detail | test("signal 9"))' "$WORK/events.jsonl" > /dev/null \
  || { echo "unexpected decisions:" >&2; cat "$WORK/events.jsonl" >&2; exit 1; }
jq -e -s '[.[] | select(.event == "round_formed")] | map(.generation) == [1, 2]' "$WORK/events.jsonl" > /dev/null \
  || { echo "expected rounds 1 and 2:" >&2; cat "$WORK/events.jsonl" >&2; exit 1; }
# (A save in flight when the worker died may still have committed.)
resumed=$(grep -o 'resumed from [^ ]*/step-[0-9]*' "$WORK/crash.log" | head -1 | grep -o '[0-9]*$' || echo 0)
[ "$resumed" -ge "$fault_step" ] \
  || { echo "the restarted workers resumed from step $resumed, not >= $fault_step" >&2; exit 1; }
