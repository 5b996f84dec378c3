#!/usr/bin/env bash
# A stock PyTorch script (init_process_group("gloo"), env://) under Kiln's
# launchers, as under torchrun: rank 0 hosts PyTorch's TCPStore on
# MASTER_PORT, so that port must be free (Note [The script's MASTER_PORT]).
#   launch   `kiln launch -n 2`: both ranks allreduce and finish;
#   run      `kiln run -n 2`: the same;
#   restart  `kiln run -n 2`, rank 1 SIGKILLs itself on attempt 0: the group
#            restarts once (a fresh MASTER_PORT) and finishes on attempt 1.
#   tests/torch/launchers.sh PATH/TO/kiln PYTHON
set -euo pipefail
KILN=$1 PYTHON=$2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$(dirname "${BASH_SOURCE[0]}")/../lib/scratch.sh"
scratch launchers
fail() { echo "launchers $1: $2" >&2; tail -40 "$WORK/$1.log" >&2; exit 1; }
# finished LOG ATTEMPT: both ranks printed their final line on ATTEMPT.
finished() {
  for r in 0 1; do
    grep -q "stock-gloo ok rank=$r world=2 attempt=$2 " "$WORK/$1.log" ||
      fail "$1" "rank $r did not finish on attempt $2"
  done
}

timeout 120 "$KILN" launch -n 2 -- "$PYTHON" "$HERE/stock_gloo.py" > "$WORK/launch.log" 2>&1 ||
  fail launch "kiln launch failed"
finished launch 0
grep -q "run_id=launch-" "$WORK/launch.log" || fail launch "TORCHELASTIC_RUN_ID is not the launch's"

timeout 120 "$KILN" run -n 2 --rdzv-id stock -- "$PYTHON" "$HERE/stock_gloo.py" \
  > "$WORK/run.log" 2>&1 || fail run "kiln run failed"
finished run 0
grep -q "run_id=stock max_restarts=3" "$WORK/run.log" || fail run "TORCHELASTIC_* do not match the flags"

KILL_RANK=1 timeout 180 "$KILN" run -n 2 --rdzv-id restart --max-restarts 2 --backoff-base 0.2 \
  --events "$WORK/restart.events" -- "$PYTHON" "$HERE/stock_gloo.py" > "$WORK/restart.log" 2>&1 ||
  fail restart "kiln run did not recover from the killed rank"
grep -q "rank 1: killing myself on attempt 0" "$WORK/restart.log" || fail restart "no rank was killed"
finished restart 1
jq -e -s '[.[] | select(.event == "worker_exit" and .action == "restart_group")] | length == 1' \
  "$WORK/restart.events" > /dev/null || { cat "$WORK/restart.events" >&2; fail restart "expected one restart"; }
echo "launchers: ok (launch, run, restart after a killed rank)"
