#!/usr/bin/env bash
# The wait of a tensor-parallel all-reduce inside a pipeline stage, measured
# directly (Note [The group wait, measured] in cli/torch/bench_handoff_cmd.cc),
# for the profile's [pipeline_handoff] (Note [Pipeline hand-off] in
# kiln/plan/host_profile.h; docs/plan.md "Session 10").
#
#   bench/pipeline_group_wait.sh [--kiln PATH] [--rounds 3] [--bytes "65536 524288"]
#                                [--units 1]
#
# `kiln bench handoff --pp P` (kiln's 1F1B engine over P stages of pairs, 4
# micro-batches, 4 messages per forward) at 2 and 4 ranks per core (2x2 and
# 4x2 ranks on a 2-core host), at each all-reduce size, --rounds times, each
# round in a rotated order (Note [Drifting hosts]). One JSON line per timing
# on stdout, a table on stderr. A benchmark: run it under the CPU lock.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN="$ROOT/build/kiln"
ROUNDS=3
BYTES="65536 524288"
UNITS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --kiln) KILN=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --bytes) BYTES=$2; shift 2 ;;
    --units) UNITS=$2; shift 2 ;;
    *) echo "bench/pipeline_group_wait.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
CORES=$(nproc)
CASES=()
for per_core in 2 4; do
  for bytes in $BYTES; do CASES+=("$per_core:$bytes"); done
done
N=${#CASES[@]}
for ((r = 0; r < ROUNDS; r++)); do
  for ((i = 0; i < N; i++)); do
    c=${CASES[$(((i + r) % N))]}
    per_core=${c%%:*} bytes=${c##*:}
    ranks=$((per_core * CORES))
    out=$(env -u RANK -u WORLD_SIZE -u LOCAL_RANK -u LOCAL_WORLD_SIZE \
      timeout -s KILL 120 "$KILN" bench handoff --ranks "$ranks" --group 2 --pp $((ranks / 2)) \
      --microbatches 4 --messages 4 --units "$UNITS" --bytes "$bytes" --repeats 3 --json |
      tail -n 1)
    echo "$out" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
d["round"] = int(sys.argv[1]); d["ranks_per_core"] = int(sys.argv[2])
print(json.dumps(d))
print(f"round {d[\"round\"]}: {d[\"ranks_per_core\"]} ranks/core, {d[\"bytes\"]:>6} B: step "
      f"{1e3 * d[\"step_s\"]:6.1f} ms; group wait mean {1e6 * d[\"group_wait_mean_s\"]:5.0f} us, "
      f"median {1e6 * d[\"group_wait_median_s\"]:5.0f}, p10 {1e6 * d[\"group_wait_p10_s\"]:5.0f}, "
      f"p90 {1e6 * d[\"group_wait_p90_s\"]:5.0f} ({d[\"group_waits\"]} messages)", file=sys.stderr)
' "$((r + 1))" "$per_core"
  done
done
