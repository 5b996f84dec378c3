#!/usr/bin/env bash
# `kiln plan` against `kiln train` on the same miniature 3D layouts, on what
# both count rather than on time (timings belong to the benchmark,
# examples/plan/measure_host_layouts.sh, docs/plan.md "CPU hosts"): for
# TP 1 x PP 2 x DP 1 and x DP 2 the bytes the first stage sends to its
# neighbour per step (the planner's stages.p2p_bytes, the runtime's
# comm_bytes from --metrics-json) must agree exactly, and so must the
# planner's and the runtime's stage split. A change to either side's
# pipeline (micro-batching, what crosses a stage boundary, the split of the
# batch over replicas) breaks the agreement.
#   tests/plan/planner_vs_runtime.sh PATH/TO/kiln
set -euo pipefail
KILN=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
source "$(dirname "${BASH_SOURCE[0]}")/../lib/scratch.sh"
scratch planner_vs_runtime

# The 3D tests' tiny GPT (tests/parallel/tiny_gpt_3d.toml) on the repository's
# docs, and the same model for the planner on the vendored host profile.
SOURCES=$(ls "$ROOT"/docs/*.md | sed 's/.*/"&"/' | paste -sd, -)
sed -e "s|DATA_DIR|$WORK/data|" -e "s|SOURCES|$SOURCES|" -e '/^\[checkpoint\]/,/^$/d' \
  "$ROOT/tests/parallel/tiny_gpt_3d.toml" > "$WORK/gpt.toml"
cat > "$WORK/plan.toml" <<TOML
[model]
name = "tiny 3D GPT"
layers = 4
hidden = 32
heads = 4
seq_len = 128
vocab = 256
learned_positions = true
tied_embeddings = false
dropout = false

[cluster]
profile = "$ROOT/examples/plan/cpu-host-2core.toml"

[layout]
global_batch = 8
microbatches = 2
TOML

for dp in 1 2; do
  n=$((2 * dp))
  "$KILN" launch -n "$n" -- "$KILN" train "$WORK/gpt.toml" --tp 1 --pp 2 --max-steps 2 \
    --no-progress --metrics-json "$WORK/m$dp.jsonl" > "$WORK/train$dp.log" 2>&1 \
    || { tail -30 "$WORK/train$dp.log" >&2; fail "kiln train on TP 1 x PP 2 x DP $dp failed"; }
  "$KILN" plan "$WORK/plan.toml" --tp 1 --pp 2 --dp "$dp" --microbatches 2 --json \
    > "$WORK/plan$dp.json" 2> "$WORK/plan$dp.err" \
    || { cat "$WORK/plan$dp.err" >&2; fail "kiln plan on TP 1 x PP 2 x DP $dp failed"; }
  python3 - "$WORK/m$dp.jsonl" "$WORK/plan$dp.json" "$WORK/train$dp.log" "$dp" <<'PY' || fail "TP 1 x PP 2 x DP $dp: see above"
import json, re, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if '"comm_bytes"' in l]
plan = json.load(open(sys.argv[2]))
log = open(sys.argv[3]).read()
dp = int(sys.argv[4])
if len(steps) != 2:
    sys.exit(f"expected 2 step records, got {len(steps)}")
predicted = plan["stages"]["p2p_bytes"][0]
measured = {s["comm_bytes"] for s in steps}
# 8 sequences of 128 tokens over dp replicas, width 32, fp32, forward only
# from the first of two stages: a value worked out by hand too.
by_hand = 8 / dp * 128 * 32 * 4
if predicted != by_hand:
    sys.exit(f"the planner's stage-0 bytes {predicted} differ from the hand count {by_hand}")
if measured != {predicted}:
    sys.exit(f"stage 0 sent {sorted(measured)} bytes per step; the planner predicts {predicted}")
m = re.search(r"3D parallel: tp 1 x pp 2 x dp (\d+)", log)
if not m or int(m.group(1)) != dp:
    sys.exit("the run did not use the layout TP 1 x PP 2 x DP %d" % dp)
if plan["layout"]["stage_layers"] != [2, 2]:
    sys.exit(f"the planner split the layers as {plan['layout']['stage_layers']}, the runtime as [2, 2]")
print(f"planner_vs_runtime: dp {dp}: stage 0 sends {predicted:.0f} bytes per step, as planned")
PY
done
