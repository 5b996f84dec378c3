#!/usr/bin/env bash
# kiln run re-forms a tensor/pipeline-parallel job (TP 2 x PP 2, 4 workers)
# after a killed worker: the group restarts, resumes from the newest 3D
# checkpoint (from the in-memory tier) and ends with exactly the parameters
# of a fault-free run.
#   tests/parallel/three_d_run.sh PATH/TO/kiln
set -euo pipefail
KILN=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../elastic/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/../lib/scratch.sh"
AGENT=
stop_started() {
  [ -n "$AGENT" ] && kill -9 "$AGENT" 2>/dev/null || true
}
scratch three_d_run stop_started

SOURCES=$(ls "$HERE"/../../docs/*.md | sed 's/.*/"&"/' | paste -sd, -)
sed -e "s|DATA_DIR|$WORK/data|" -e "s|SOURCES|$SOURCES|" "$HERE/tiny_gpt_3d.toml" > "$WORK/gpt.toml"
TRAIN=("$KILN" train "$WORK/gpt.toml" --no-progress)

# The fault-free reference (it also converts the dataset).
"$KILN" run -n 4 --rdzv-id ref -- "${TRAIN[@]}" --ckpt-dir "$WORK/ref" > "$WORK/ref.log" 2>&1 \
  || { tail -30 "$WORK/ref.log" >&2; fail "the reference run failed"; }
EXPECTED=$(params_digest "$WORK/ref.log")
[ -n "$EXPECTED" ] || { tail -30 "$WORK/ref.log" >&2; fail "the reference run printed no final line"; }
grep -q "3D parallel: tp 2 x pp 2 x dp 1" "$WORK/ref.log" || fail "the run did not use the 3D layout"

"$KILN" run -n 4 --rdzv-id crash --events "$WORK/crash.events" --backoff-base 0.2 -- \
  "${TRAIN[@]}" --ckpt-dir "$WORK/crash" >> "$WORK/crash.log" 2>&1 &
AGENT=$!
wait_until 180 at_least_step "$WORK/crash" 8
# Rank 3: the second pipeline stage's second tensor rank.
kill -9 "$(worker_pid "$AGENT" 3)"
step=$(committed_step "$WORK/crash")
wait "$AGENT" || { tail -30 "$WORK/crash.log" >&2; fail "kiln run failed"; }
AGENT=
got=$(params_digest "$WORK/crash.log")
[ "$got" = "$EXPECTED" ] || fail "parameters $got differ from the fault-free run's $EXPECTED"
jq -e -s '[.[] | select(.event == "round_formed")] | map(.generation) == [1, 2]' "$WORK/crash.events" > /dev/null \
  || { cat "$WORK/crash.events" >&2; fail "expected the group to re-form once"; }
resumed=$(grep -Eo 'resumed from (memory, )?[^ ]*/step-[0-9]+' "$WORK/crash.log" | tail -1 | grep -o '[0-9]*$' || echo 0)
[ "$resumed" -ge "$step" ] || fail "resumed from step $resumed, not >= $step"
# Every rank's snapshot is still in this host's memory (the killed rank's
# too): the restart recovers the 3D state from there, not from storage.
from_memory=$(grep -c 'resumed from memory, ' "$WORK/crash.log" || true)
[ "$from_memory" -eq 4 ] || fail "$from_memory of 4 ranks resumed from memory"
echo "three_d_run: killed rank 3 after step $step; re-formed, resumed from step $resumed, final parameters match"
