#!/usr/bin/env bash
# kiln run on one node, end to end, with real kiln train workers. Each
# scenario injects one fault into a 2-worker job and checks that the job
# still reaches its last step with exactly the parameters of a fault-free
# run (same world size, deterministic data order):
#   crash    SIGKILL a worker -> transient, the group restarts after a
#            backoff and resumes from the newest checkpoint;
#   hang     SIGSTOP a worker -> no heartbeat for --hang-timeout -> the
#            same recovery;
#   preempt  SIGTERM the agent -> the workers agree on a step, checkpoint
#            it and exit 0, the agent exits 0; a new `kiln run` resumes there.
#   slow-final  the final evaluation takes longer than --hang-timeout
#            (--inject eval-delay): the workers keep beating through it
#            (WorkerLink::busy), so nothing is taken for a hang.
#   tests/elastic/one_node.sh PATH/TO/kiln [SCENARIO...]
set -euo pipefail
KILN=$1; shift
SCENARIOS=("$@"); [ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(crash hang preempt slow-final)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/../lib/scratch.sh"
AGENT=
stop_started() {
  [ -n "$AGENT" ] && kill -9 "$AGENT" 2>/dev/null || true
}
scratch one_node stop_started
CONFIG=$(tiny_config "$WORK")
STEPS=150
TRAIN=("$KILN" train "$CONFIG" --no-progress --max-steps "$STEPS")

fail() { echo "one_node $SCENARIO: $*" >&2; exit 1; }

# The fault-free reference (it also converts the dataset).
"$KILN" run -n 2 --rdzv-id ref -- "${TRAIN[@]}" --ckpt-dir "$WORK/ref" > "$WORK/ref.log" 2>&1
EXPECTED=$(params_digest "$WORK/ref.log")
[ -n "$EXPECTED" ] || { cat "$WORK/ref.log" >&2; echo "reference run printed no final line" >&2; exit 1; }

# start_job NAME [kiln run flags...]: the job in the background, AGENT set.
start_job() {
  local name=$1; shift
  "$KILN" run -n 2 --rdzv-id "$name" --events "$WORK/$name.events" --backoff-base 0.2 "$@" -- \
    "${TRAIN[@]}" --ckpt-dir "$WORK/$name" >> "$WORK/$name.log" 2>&1 &
  AGENT=$!
}

# finish_job NAME: waits for the job and checks its parameters.
finish_job() {
  wait "$AGENT" || { tail -30 "$WORK/$1.log" >&2; fail "kiln run failed"; }
  AGENT=
  local got
  got=$(params_digest "$WORK/$1.log")
  [ "$got" = "$EXPECTED" ] || fail "parameters $got differ from the fault-free run's $EXPECTED"
}

# one_decision NAME EVENT RANKS: exactly one decision EVENT, transient,
# restarting the group, blaming a local rank in RANKS (a JSON array).
one_decision() {
  jq -e -s --arg e "$2" --argjson ranks "$3" '[.[] | select(.event == $e)] | length == 1
      and .[0].class == "transient" and .[0].action == "restart_group"
      and (.[0].local_rank as $r | $ranks | index($r) != null)' "$WORK/$1.events" > /dev/null \
    || { cat "$WORK/$1.events" >&2; fail "expected one transient $2 of local rank in $3"; }
  jq -e -s '[.[] | select(.event == "round_formed")] | map(.generation) == [1, 2]' \
    "$WORK/$1.events" > /dev/null || { cat "$WORK/$1.events" >&2; fail "expected rounds 1 and 2"; }
}

# resumed_at_least NAME STEP: the restarted workers resumed from >= STEP
# (a save in flight at the fault may still have committed).
resumed_at_least() {
  local resumed
  resumed=$(grep -Eo 'resumed from (memory, )?[^ ]*/step-[0-9]+' "$WORK/$1.log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  [ "$resumed" -ge "$2" ] || fail "resumed from step $resumed, not >= $2"
}

# resumed_from_memory NAME: kiln run's restart recovered every rank from the
# in-memory checkpoint tier, not from storage.
resumed_from_memory() {
  [ "$(grep -c 'resumed from memory, ' "$WORK/$1.log")" = 2 ] \
    || fail "the restarted workers did not both resume from memory"
}

for SCENARIO in "${SCENARIOS[@]}"; do
  case "$SCENARIO" in
    crash)
      start_job crash
      wait_until 120 at_least_step "$WORK/crash" 30
      kill -9 "$(worker_pid "$AGENT" 1)"
      step=$(committed_step "$WORK/crash")
      finish_job crash
      one_decision crash worker_exit '[1]'
      jq -e -s '[.[] | select(.event == "worker_exit")][0].detail | test("signal 9")' \
        "$WORK/crash.events" > /dev/null || fail "the decision does not name signal 9"
      resumed_at_least crash "$step"
      resumed_from_memory crash
      ;;
    hang)
      start_job hang --hang-timeout 5
      wait_until 120 at_least_step "$WORK/hang" 30
      kill -STOP "$(worker_pid "$AGENT" 1)"
      step=$(committed_step "$WORK/hang")
      finish_job hang
      # Rank 0 blocks on rank 1 and goes quiet too; when both stopped at
      # the same step either may be named.
      one_decision hang worker_hang '[0, 1]'
      resumed_at_least hang "$step"
      resumed_from_memory hang
      ;;
    preempt)
      start_job preempt
      wait_until 120 at_least_step "$WORK/preempt" 30
      kill -TERM "$AGENT"
      wait "$AGENT" || fail "the preempted agent did not exit 0"
      AGENT=
      grep -q "stopped: step [0-9]* checkpointed on request" "$WORK/preempt.log" \
        || fail "the workers did not stop at a checkpoint"
      stopped=$(grep -o 'stopped: step [0-9]*' "$WORK/preempt.log" | grep -o '[0-9]*$')
      [ "$(committed_step "$WORK/preempt")" = "$stopped" ] || fail "step $stopped is not the newest commit"
      [ "$stopped" -lt "$STEPS" ] || fail "the job had already finished: nothing was preempted"
      start_job preempt
      finish_job preempt
      resumed_at_least preempt "$stopped"
      ;;
    slow-final)
      # 6 s of evaluation against a 2 s hang timeout.
      "$KILN" run -n 2 --rdzv-id slow --events "$WORK/slow.events" --hang-timeout 2 -- \
        "${TRAIN[@]}" --ckpt-dir "$WORK/slow" --inject eval-delay=6000 > "$WORK/slow.log" 2>&1 \
        || { tail -30 "$WORK/slow.log" >&2; fail "kiln run failed"; }
      jq -e -s '[.[] | select(.event == "round_formed")] | length == 1' "$WORK/slow.events" > /dev/null \
        || { cat "$WORK/slow.events" >&2; fail "the job was restarted"; }
      [ "$(params_digest "$WORK/slow.log")" = "$EXPECTED" ] || fail "parameters differ"
      ;;
    *) echo "one_node: unknown scenario $SCENARIO" >&2; exit 2 ;;
  esac
  echo "one_node: $SCENARIO recovered to step $STEPS with the fault-free parameters"
done
