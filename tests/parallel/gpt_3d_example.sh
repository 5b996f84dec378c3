#!/usr/bin/env bash
# The shipped example examples/train/gpt_3d.toml as its header says to run
# it: TP 2 x PP 2 x DP 2 on `kiln launch -n 8`, and the same run as plain
# data parallelism on 2 processes (--tp 1 --pp 1). A few steps of each, on
# the fortunes text it converts on first use; the two final evaluations
# agree to 1e-5 relative (dropout 0, one evaluation at the last step).
#   tests/parallel/gpt_3d_example.sh PATH/TO/kiln
set -euo pipefail
KILN=$(realpath "$1")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$(dirname "${BASH_SOURCE[0]}")/../lib/scratch.sh"
scratch gpt_3d_example
cd "$WORK"  # data.dir is relative: the example converts into ./data/fortunes
[ -r /usr/share/games/fortunes/wisdom ] || { echo "gpt_3d_example: no fortunes (scripts/install-deps.sh installs them)" >&2; exit 77; }

STEPS=3
run() {  # run NAME WORLD [OVERRIDES...]
  local name=$1 world=$2; shift 2
  "$KILN" launch -n "$world" -- "$KILN" train "$ROOT/examples/train/gpt_3d.toml" --no-progress \
    --max-steps $STEPS --metrics-json "$WORK/$name.jsonl" "$@" > "$WORK/$name.log" 2>&1 \
    || { tail -30 "$WORK/$name.log" >&2; fail "the $name run failed"; }
}
# The last evaluation's loss; nothing (so the check fails) unless it is a
# positive number (a NaN loss is written as null).
eval_loss() { jq -r 'select(.type == "eval") | .eval_loss | numbers | select(. > 0)' "$WORK/$1.jsonl" | tail -1; }

run three_d 8
grep -q "3D parallel: tp 2 x pp 2 x dp 2" "$WORK/three_d.log" || fail "the example did not run as TP 2 x PP 2 x DP 2"
run replicas 2 --tp 1 --pp 1
a=$(eval_loss three_d) b=$(eval_loss replicas)
[ -n "$a" ] && [ -n "$b" ] || fail "no evaluation at the last step (got '$a' and '$b')"
awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-5 * b) }' \
  || fail "eval loss $a (TP 2 x PP 2 x DP 2) differs from $b (DP 2) by more than 1e-5 relative"
echo "gpt_3d_example: eval loss after $STEPS steps $a (TP 2 x PP 2 x DP 2) and $b (DP 2)"
