#!/usr/bin/env bash
# The wait of a tensor-parallel all-reduce inside a pipeline stage, measured
# directly (Note [The group wait, measured] in cli/torch/bench_handoff_cmd.cc),
# against the lockstep pairs' (Note [Pipeline hand-off] in
# kiln/plan/host_profile.h: why a profile has no pipeline section; docs/plan.md
# "Session 10").
#
#   bench/pipeline_group_wait.sh [--kiln PATH] [--rounds 3] [--bytes "65536 524288"]
#                                [--units 1] [--lockstep]
#
# `kiln bench handoff --pp P` (kiln's 1F1B engine over P stages of pairs, 4
# micro-batches, 4 messages per forward) at 2 and 4 ranks per core (2x2 and
# 4x2 ranks on a 2-core host), at each all-reduce size, --rounds times, each
# round in a rotated order (Note [Drifting hosts]). With --lockstep, the same
# ranks as lockstep pairs as well (`kiln bench handoff --group 2`: the
# [core_sharing] probe's rounds, 60 per timing), whose wait is measured the
# same way. One JSON line per timing on stdout, a table on stderr. A
# benchmark: run it under the CPU lock.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN="$ROOT/build/kiln"
ROUNDS=3
BYTES="65536 524288"
UNITS=1
MODES=pipeline
while [ $# -gt 0 ]; do
  case "$1" in
    --kiln) KILN=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --bytes) BYTES=$2; shift 2 ;;
    --units) UNITS=$2; shift 2 ;;
    --lockstep) MODES="pipeline lockstep"; shift ;;
    *) echo "bench/pipeline_group_wait.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
CORES=$(nproc)
CASES=()
for per_core in 2 4; do
  for bytes in $BYTES; do
    for mode in $MODES; do CASES+=("$per_core:$bytes:$mode"); done
  done
done
N=${#CASES[@]}
# One timing: its JSON with the round and the level on stdout, a line on stderr.
REPORT=$(cat <<'PY'
import json, sys
d = json.loads(sys.stdin.read())
d["round"], d["ranks_per_core"], d["mode"] = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
print(json.dumps(d))
us = {k: 1e6 * d["group_wait_" + k + "_s"] for k in ("mean", "median", "p10", "p90")}
what = "step" if "step_s" in d else "round"
print("round %d: %d ranks/core, %6d B, %-8s: %s %6.1f ms; group wait mean %5.0f us, median "
      "%5.0f, p10 %5.0f, p90 %5.0f (%d messages)" % (d["round"], d["ranks_per_core"], d["bytes"],
      d["mode"], what, 1e3 * d[what + "_s"], us["mean"], us["median"], us["p10"], us["p90"],
      d["group_waits"]), file=sys.stderr)
PY
)
for ((r = 0; r < ROUNDS; r++)); do
  for ((i = 0; i < N; i++)); do
    c=${CASES[$(((i + r) % N))]}
    IFS=: read -r per_core bytes mode <<< "$c"
    ranks=$((per_core * CORES))
    if [ "$mode" = pipeline ]; then
      shape=(--pp $((ranks / 2)) --microbatches 4 --messages 4)
    else
      shape=(--rounds 60)
    fi
    out=$(env -u RANK -u WORLD_SIZE -u LOCAL_RANK -u LOCAL_WORLD_SIZE \
      timeout -s KILL 120 "$KILN" bench handoff --ranks "$ranks" --group 2 "${shape[@]}" \
      --units "$UNITS" --bytes "$bytes" --repeats 3 --json | tail -n 1)
    echo "$out" | python3 -c "$REPORT" "$((r + 1))" "$per_core" "$mode"
  done
done
