#!/usr/bin/env bash
# The shipped fully sharded example, examples/train/gpt_zero3.toml, run the
# way its header says (`kiln launch -n 2 -- kiln train <it>`), cut short by
# command-line overrides only: the file itself is read as shipped. On first
# use it converts its dataset (Debian's fortunes) into data/fortunes under the
# working directory; it trains with zero3, the loss falls; a run stopped at
# step HALF and started again resumes from that checkpoint and ends with the
# parameters of a run that never stopped, to the bit (dropout included: the
# generators are part of the checkpoint).
#   tests/parallel/gpt_zero3_example.sh PATH/TO/kiln
set -euo pipefail
KILN=$(readlink -f "$1")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CONFIG="$ROOT/examples/train/gpt_zero3.toml"
HALF=${GPT_ZERO3_HALF:-6}
STEPS=${GPT_ZERO3_STEPS:-12}
source "$(dirname "${BASH_SOURCE[0]}")/../lib/scratch.sh"
scratch gpt_zero3_example
fail() { echo "gpt_zero3_example: FAIL: $*" >&2; exit 1; }
# The example's data and checkpoint paths are relative: here, not in the checkout.
cd "$WORK"
train() { "$KILN" launch -n 2 -- "$KILN" train "$CONFIG" --no-progress "$@"; }
digest() { grep -o 'final: .*params_xxh3 [0-9a-f]*' "$1" | tail -1 | awk '{print $NF}'; }

# Uninterrupted (it also converts the dataset).
train --max-steps "$STEPS" --ckpt-dir "$WORK/straight" --metrics-json "$WORK/straight.jsonl" \
  > straight.log 2>&1 || { tail -30 straight.log >&2; fail "the uninterrupted run failed"; }
grep -q "zero3: " straight.log || { tail -30 straight.log >&2; fail "the run did not use zero3"; }
grep -q "final: step $STEPS " straight.log || { tail -30 straight.log >&2; fail "no final line at step $STEPS"; }
[ -s data/fortunes/train/index.json ] || fail "the dataset was not converted into data/fortunes"

# The loss falls: the mean of the last 3 steps' losses is below that of the
# first 3 by a clear margin (one step's batch-to-batch spread is ~0.02 nats).
jq -e -s --argjson n "$STEPS" '
  [.[] | select(.type == "step") | .loss] as $l
  | ($l | length) == $n and (($l[:3] | add) / 3) - (($l[-3:] | add) / 3) > 0.1' "$WORK/straight.jsonl" > /dev/null \
  || { jq -c 'select(.type == "step") | [.step, .loss]' "$WORK/straight.jsonl" >&2; fail "the loss did not fall"; }

# Stopped at HALF (a checkpoint at the end of the run), then started again
# with the uninterrupted run's step count.
train --max-steps "$HALF" --ckpt-dir "$WORK/split" > first.log 2>&1 || { tail -30 first.log >&2; fail "the first half failed"; }
train --max-steps "$STEPS" --ckpt-dir "$WORK/split" > second.log 2>&1 || { tail -30 second.log >&2; fail "the resumed run failed"; }
grep -Eq "resumed from .*/step-$HALF " second.log || { tail -30 second.log >&2; fail "did not resume from step $HALF"; }
want=$(digest straight.log) got=$(digest second.log)
[ -n "$want" ] && [ "$got" = "$want" ] || fail "resumed run ended with parameters $got, the uninterrupted run with $want"
echo "gpt_zero3_example: loss $(jq -s -r '[.[] | select(.type == "step") | .loss] | "\(.[0]) -> \(.[-1])"' "$WORK/straight.jsonl"); resumed from step $HALF, parameters $got as uninterrupted"
