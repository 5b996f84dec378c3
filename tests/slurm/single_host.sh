#!/usr/bin/env bash
# Kiln under a real single-host Slurm (cluster.sh: munged, slurmctld and
# slurmd from Debian's packages, a generated slurm.conf):
#   srun    `srun -n 2 kiln train` on the tiny CNN: the tasks take rank,
#           world size and the rendezvous host from the step and end with
#           the parameters of `kiln launch -n 2`;
#   run     `srun -n 2 kiln run --nproc-per-node 1`: one agent per task, the
#           same parameters (the job token from the environment; without
#           one it is refused, saying why); `srun -n 2 kiln launch` is
#           refused, saying why;
#   sbatch  examples/slurm/train.sbatch (`sbatch --wait`) runs to completion
#           with the same parameters;
#   kill    one task of a running step is SIGKILLed: the step fails within
#           seconds and srun names the task.
# Where Slurm cannot start this test fails, naming why: it never skips.
#   tests/slurm/single_host.sh PATH/TO/kiln
set -euo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$ROOT/tests/slurm/cluster.sh"
source "$ROOT/tests/elastic/lib.sh"
WORK=$(mktemp -d /tmp/kiln-slurm.$$.XXXX)
SRUN_PID=
cleanup() {
  local rc=$?
  [ -n "$SRUN_PID" ] && kill -9 "$SRUN_PID" 2>/dev/null || true
  stop_slurm
  if [ "$rc" -ne 0 ]; then echo "single_host: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
fail() { echo "single_host $1: $2" >&2; [ -f "$WORK/$1.log" ] && tail -30 "$WORK/$1.log" >&2; exit 1; }

start_slurm "$WORK/slurm" || { echo "single_host: Slurm did not start on this machine; this test needs it" >&2; exit 1; }
CONFIG=$(tiny_config "$WORK")
STEPS=60
TRAIN=("$KILN" train "$CONFIG" --no-progress --max-steps "$STEPS")

# The reference (it also converts the dataset).
timeout 240 "$KILN" launch -n 2 -- "${TRAIN[@]}" --ckpt-dir "$WORK/ref" > "$WORK/ref.log" 2>&1 ||
  fail ref "kiln launch failed"
EXPECTED=$(params_digest "$WORK/ref.log")
[ -n "$EXPECTED" ] || fail ref "no final line"

# srun: nothing but the step tells the tasks where they stand.
(cd "$WORK" && env -u RANK -u WORLD_SIZE -u MASTER_ADDR -u MASTER_PORT \
  timeout 240 srun -n 2 --kill-on-bad-exit=1 "${TRAIN[@]}" --ckpt-dir "$WORK/srun") \
  > "$WORK/srun.log" 2>&1 || fail srun "srun -n 2 kiln train failed"
[ "$(params_digest "$WORK/srun.log")" = "$EXPECTED" ] || fail srun "parameters differ from kiln launch's"

# kiln run under srun: each task is one node's agent; the step gives
# --nnodes, the rendezvous host and the node ids.
(cd "$WORK" && timeout 240 srun -n 2 --kill-on-bad-exit=1 "$KILN" run --nproc-per-node 1 -- \
  "${TRAIN[@]}" --ckpt-dir "$WORK/run") > "$WORK/run.log" 2>&1 || fail run "srun -n 2 kiln run failed"
[ "$(params_digest "$WORK/run.log")" = "$EXPECTED" ] || fail run "parameters differ from kiln launch's"
grep -q "Slurm step .* task 1/2" "$WORK/run.log" || fail run "kiln run did not recognise the step"

# Across nodes the agents need one shared job token; without it kiln run
# refuses at once, saying how to give one (lib.sh exported one above).
(cd "$WORK" && env -u KILN_JOB_TOKEN timeout 60 srun -n 2 "$KILN" run --nproc-per-node 1 -- true) \
  > "$WORK/notoken.log" 2>&1 && fail notoken "kiln run started a 2-node job without a job token"
grep -q "KILN_JOB_TOKEN" "$WORK/notoken.log" || fail notoken "no reason given"

# kiln launch runs one node: several tasks of a step are refused, saying why.
(cd "$WORK" && timeout 60 srun -n 2 "$KILN" launch -n 1 -- true) > "$WORK/launch.log" 2>&1 &&
  fail launch "kiln launch ran in a 2-task step"
grep -q "kiln launch runs one node" "$WORK/launch.log" || fail launch "no reason given"

# The sbatch example, on the tiny config.
(cd "$ROOT" && KILN="$KILN" timeout 300 sbatch --wait --output "$WORK/sbatch.log" \
  examples/slurm/train.sbatch "$CONFIG" --no-progress --max-steps "$STEPS" --ckpt-dir "$WORK/sbatch") \
  > "$WORK/sbatch.submit" 2>&1 || fail sbatch "the sbatch example failed: $(cat "$WORK/sbatch.submit")"
[ "$(params_digest "$WORK/sbatch.log")" = "$EXPECTED" ] || fail sbatch "parameters differ from kiln launch's"

# kill: SIGKILL task 1 of a running step.
(cd "$WORK" && exec srun -n 2 --kill-on-bad-exit=1 "$KILN" train "$CONFIG" --no-progress \
  --max-steps 100000 --ckpt-dir "$WORK/kill") > "$WORK/kill.log" 2>&1 &
SRUN_PID=$!
task_pid() {
  local p
  for p in $(pgrep -x kiln); do
    tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "SLURM_PROCID=1" || continue
    tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF" && { echo "$p"; return 0; }
  done
  return 1
}
wait_until 120 at_least_step "$WORK/kill" 1 || fail kill "the step never checkpointed"
VICTIM=$(task_pid) || fail kill "task 1 not found"
start=$(date +%s.%N)
kill -9 "$VICTIM"
rc=0
timeout 60 tail --pid="$SRUN_PID" -f /dev/null || fail kill "srun still runs 60 s after task 1 died"
wait "$SRUN_PID" || rc=$?
SRUN_PID=
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
[ "$rc" -ne 0 ] || fail kill "srun exited 0 after a task was killed"
grep -qE "task 1: (Killed|Terminated)" "$WORK/kill.log" || fail kill "srun does not name task 1"
awk -v s="$secs" 'BEGIN { exit !(s < 20) }' || fail kill "the step took $secs s to fail"
echo "single_host: ok (srun and sbatch match kiln launch; a killed task failed the step in $secs s)"
