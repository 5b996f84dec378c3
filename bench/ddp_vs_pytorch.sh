#!/usr/bin/env bash
# Kiln DDP against PyTorch DDP (gloo) on the same model, batch and link:
# two network namespaces joined by a shaped veth (bench/ddp_overlap.sh builds
# them), one rank in each, one torch thread per rank. In each round, one
# after the other in the same namespaces:
#   pytorch ddp 25 MB buckets (the default), pytorch ddp 5 MB buckets,
#   pytorch's compute floor (the same step without communication),
#   pytorch's all_reduce of all gradients alone (84 MB),
#   kiln bench ddp (Kiln DDP, and its own compute floor), kiln bench comm
#   (Kiln's allreduce of the same bytes), once per --code-modes mode of
#   KILN_TCP_CODE (default "auto off": byte-plane coded on this slow link,
#   and uncoded, side by side; rows of "off" say "uncoded").
# The model: five Linear(2048, 2048) (20.98 M parameters), batch 768 per rank.
# A step is zero_grad + forward + loss + backward until gradients are averaged.
# Prints one table: per system the median step over rounds and its range,
# and Kiln's step over the best PyTorch configuration and over the floor
# (each ratio taken within a round, then the median), and its step over the
# link bound: forward + the time its first gradient is ready + the allreduce
# of all gradients alone (nothing can leave before the first gradient exists
# and every byte must cross the link).
#
#   bench/ddp_vs_pytorch.sh [--rounds 3] [--rate 1gbit] [--batch 768] [--steps 6]
#                           [--bucket-mib 25] [--kiln PATH] [--json]
#                           [--keep FILE] [--from FILE] [--code-modes "auto off"] [--pin]
#                           [--overlapped-slices N] [--overlapped-second-slices M]
# --pin runs every system one rank per core (bench/ddp_overlap.sh --pin),
# PyTorch and Kiln alike.
# --overlapped-slices N adds, per code mode, Kiln DDP on the same MLP built
# of kiln::ddp::OverlappedLinear layers (each weight gradient before its
# input gradient, the first layer's weight in N row blocks; `kiln bench ddp
# --overlapped-linear`): rows "... (overlapped linear)", beside the plain
# nn::Linear rows, which stay the model every ratio above is named for.
# --overlapped-second-slices M holds the second layer's weight of that MLP
# in M row blocks too (default 1).
# --keep appends each round's raw results to FILE; --from FILE runs nothing
# and prints the table of the rounds kept there (so rounds can run in
# separate short sittings).
# Needs root (ip netns, tc), python3-torch (PYTHON=/usr/bin/python3) and jq.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN="$ROOT/build/kiln"
RATE=1gbit
ROUNDS=3
BATCH=768
STEPS=6
BUCKET_MIB=25
JSON=0
KEEP=
FROM=
CODE_MODES="auto off"
PIN=()
OVERLAPPED_SLICES=
OVERLAPPED_SECOND_SLICES=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --bucket-mib) BUCKET_MIB=$2; shift 2 ;;
    --kiln) KILN=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    --keep) KEEP=$2; shift 2 ;;
    --from) FROM=$2; shift 2 ;;
    --code-modes) CODE_MODES=$2; shift 2 ;;
    --pin) PIN=(--pin); shift ;;
    --overlapped-slices) OVERLAPPED_SLICES=$2; shift 2 ;;
    --overlapped-second-slices) OVERLAPPED_SECOND_SLICES=$2; shift 2 ;;
    *) echo "ddp_vs_pytorch: unknown option $1" >&2; exit 2 ;;
  esac
done
KILN=$(readlink -f "$KILN")
[ -x "$KILN" ] || { echo "ddp_vs_pytorch: no kiln binary at $KILN" >&2; exit 1; }
# Debian's python3-torch lives in the system interpreter's dist-packages.
PYTHON=${PYTHON:-/usr/bin/python3}
"$PYTHON" -c 'import torch.distributed' 2>/dev/null ||
  { echo "ddp_vs_pytorch: python3-torch not found (scripts/install-deps.sh installs it)" >&2; exit 1; }
command -v jq >/dev/null || { echo "ddp_vs_pytorch: jq not found" >&2; exit 1; }

SHAPE="--io 2048 --width 2048 --layers 3 --batch $BATCH"
PY="$PYTHON $ROOT/bench/ddp_pytorch.py $SHAPE --steps $STEPS --warmup 2"
GRAD_BYTES=$((5 * (2048 * 2048 + 2048) * 4))
RUNS=(
  "$PY --mode ddp --bucket-mb 25"
  "$PY --mode ddp --bucket-mb 5"
  "$PY --mode floor"
  "$PY --mode allreduce"
)
# Kiln once per KILN_TCP_CODE mode (Note [Coding payloads for slow links]),
# each row tagged with it.
for mode in $CODE_MODES; do
  TAG="jq -c '. + {tcp_code: \"$mode\"}'"
  RUNS+=(
    "KILN_TCP_CODE=$mode \$KILN bench ddp --json $SHAPE --steps $STEPS --warmup 2 --bucket-mib $BUCKET_MIB | $TAG"
    "KILN_TCP_CODE=$mode \$KILN bench comm --json -o allreduce -b $GRAD_BYTES -e $GRAD_BYTES -n $STEPS -w 2 | $TAG"
  )
  [ -z "$OVERLAPPED_SLICES" ] || RUNS+=(
    "KILN_TCP_CODE=$mode \$KILN bench ddp --json $SHAPE --steps $STEPS --warmup 2 --bucket-mib $BUCKET_MIB --overlapped-linear --first-layer-slices $OVERLAPPED_SLICES --second-layer-slices $OVERLAPPED_SECOND_SLICES | $TAG"
  )
done
EXEC_ARGS=()
for r in "${RUNS[@]}"; do EXEC_ARGS+=(--exec "$r"); done

ALL=$(mktemp)
trap 'rm -f "$ALL" "$ALL.summary"' EXIT
if [ -n "$FROM" ]; then
  cp "$FROM" "$ALL"
  ROUNDS=$(jq -s 'map(.round) | unique | length' "$ALL")
else
  for i in $(seq 1 "$ROUNDS"); do
    echo "# round $i/$ROUNDS" >&2
    # A round id unique across --keep sittings.
    round="$(date +%s%N)"
    "$ROOT/bench/ddp_overlap.sh" --rate "$RATE" --kiln "$KILN" "${PIN[@]}" "${EXEC_ARGS[@]}" |
      jq -c --arg round "$round" '. + {round: $round, rate: "'"$RATE"'", batch: '"$BATCH"', pinned: '"${#PIN[@]}"'}' >>"$ALL"
  done
  [ -z "$KEEP" ] || cat "$ALL" >>"$KEEP"
fi

# One row per system and round: {round, system, step_s}. Kiln's rows from a
# KILN_TCP_CODE=off run say "(uncoded)".
jq -s -c '
  map(
    ((.tcp_code // "auto") as $m | if $m == "off" then " (uncoded)" elif $m == "auto" then "" else " (code \($m))" end) as $c |
    ((if .linear == "overlapped" then " (overlapped linear)" else "" end) + $c) as $v |
    if .system == "pytorch" then
      {round, system: (if .mode == "ddp" then "pytorch ddp \(.bucket_mb) MB buckets"
                       elif .mode == "floor" then "pytorch compute floor"
                       else "pytorch allreduce alone" end), step_s}
    elif has("step_b_slowest_s") then
      ({round, system: "kiln ddp \(.bucket_cap_mib) MiB buckets\($v)", step_s: .step_b_slowest_s},
       {round, system: "kiln compute floor\($v)", step_s: .compute_s},
       {round, system: "kiln ddp backward (with hooks)\($v)", step_s: .ddp_backward_s},
       {round, system: "kiln exposed comm\($v)", step_s: .exposed_comm_s},
       {round, system: "kiln first bucket ready\($v)", step_s: .last_buckets[0][1]},
       {round, system: "kiln forward\($v)", step_s: (.compute_s - .backward_s)})
    else {round, system: "kiln allreduce alone\($c)", step_s: (.results[0].time_us / 1e6)} end)
  | . as $rows
  | def med: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def one($s): map(select(.system == $s))[0].step_s;
    # Per variant ($v: "" or " (uncoded)"), each ratio taken within a round.
    def ratio($v; f): [$rows | group_by(.round)[] | (map(select(.system | startswith("kiln ddp") and endswith("buckets\($v)")))[0].step_s) / f] | med;
    # The allreduce alone is the same for both models: its row has only the code suffix.
    def variant($v): ($v | sub(" \\(overlapped linear\\)"; "")) as $c |
     {kiln_over_best_pytorch: ratio($v; map(select(.system | startswith("pytorch ddp"))) | map(.step_s) | min),
      kiln_over_floor: ratio($v; one("kiln compute floor\($v)")),
      # The floor the issue names: PyTorch without communication (the Kiln
      # compute floor is step (a) computing while the other rank uses the link).
      kiln_over_pytorch_floor: ratio($v; one("pytorch compute floor")),
      # Nothing can be sent before the first gradient exists, and all 84 MB
      # must cross the link: forward + first gradient + the allreduce alone.
      kiln_over_bound: ratio($v; one("kiln forward\($v)") + one("kiln first bucket ready\($v)") +
                                 one("kiln allreduce alone\($c)")),
      kiln_allreduce_over_gloo: ([$rows | group_by(.round)[] |
         one("kiln allreduce alone\($c)") / one("pytorch allreduce alone")] | med)};
    {systems: [group_by(.system)[] | {system: .[0].system, median_s: (map(.step_s) | med),
                                      min_s: (map(.step_s) | min), max_s: (map(.step_s) | max),
                                      rounds: length}],
     # One variant per suffix after "MiB buckets": code mode and model.
     variants: ([$rows[] | .system | select(startswith("kiln ddp") and test("MiB buckets"))
                 | sub("^kiln ddp .* MiB buckets"; "")] | unique
                | map({key: ((if test("overlapped") then "overlapped_" else "" end) +
                             (if test("uncoded") then "uncoded" else "coded" end)),
                      value: variant(.)}) | from_entries)}
    | . + (.variants.coded // .variants.uncoded)' "$ALL" >"$ALL.summary"
if [ "$JSON" = 1 ]; then
  cat "$ALL.summary"
else
  echo "# ddp_vs_pytorch: rate $RATE, batch $BATCH per rank, $ROUNDS round(s), $STEPS steps each"
  jq -r '.systems[] | [.system, (.median_s * 1000 | round), (.min_s * 1000 | round), (.max_s * 1000 | round)]
         | "\(.[0] | . + " " * (50 - length)) \(.[1]) ms  [\(.[2])-\(.[3])]"' "$ALL.summary"
  jq -r '"kiln step / best pytorch step: \(.kiln_over_best_pytorch * 1000 | round / 1000)  (target <= 0.9)",
         "kiln step / kiln compute floor: \(.kiln_over_floor * 1000 | round / 1000)",
         "kiln step / pytorch floor:     \(.kiln_over_pytorch_floor * 1000 | round / 1000)  (target <= 1.15)",
         "kiln step / link bound:        \(.kiln_over_bound * 1000 | round / 1000)  (forward + first gradient + allreduce alone)",
         "kiln allreduce / gloo:         \(.kiln_allreduce_over_gloo * 1000 | round / 1000)  (target <= 1.0)"' "$ALL.summary"
  jq -r 'select(.variants.coded and .variants.uncoded) | .variants.uncoded |
         "uncoded (KILN_TCP_CODE=off): step / best pytorch \(.kiln_over_best_pytorch * 1000 | round / 1000), / floor \(.kiln_over_floor * 1000 | round / 1000), / link bound \(.kiln_over_bound * 1000 | round / 1000), allreduce / gloo \(.kiln_allreduce_over_gloo * 1000 | round / 1000)"' "$ALL.summary"
  jq -r '.variants | to_entries[] | select(.key | startswith("overlapped")) |
         "\(.key | sub("_"; " linear, ")) (kiln::ddp::OverlappedLinear): step / best pytorch \(.value.kiln_over_best_pytorch * 1000 | round / 1000), / its floor \(.value.kiln_over_floor * 1000 | round / 1000), / pytorch floor \(.value.kiln_over_pytorch_floor * 1000 | round / 1000), / link bound \(.value.kiln_over_bound * 1000 | round / 1000)"' "$ALL.summary"
fi
