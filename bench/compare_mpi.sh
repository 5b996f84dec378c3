#!/usr/bin/env bash
# Kiln's allreduce against Open MPI's MPI_Allreduce on this machine, same sweep,
# same timing rules (bench/mpi_allreduce.c mirrors `kiln bench comm`).
#
#   bench/compare_mpi.sh [-n RANKS] [-b MIN] [-e MAX] [-f FACTOR] [-i ITERS]
#                        [-w WARMUP] [-r REPEATS] [-a ALGO] [--check] [--json]
#                        [--kiln PATH] [--mca-btl LIST]
#
# Each sweep runs REPEATS times (default 3), alternating kiln and MPI and
# swapping which goes first each round (ABBA), because this machine's speed
# drifts over minutes; the table shows the median time per size of each and the
# busbw derived from it. ratio = kiln busbw / mpi busbw (> 1: kiln is faster),
# t_ratio = kiln time / mpi time (< 1: kiln is faster).
# Needs mpicc/mpirun (openmpi-bin, libopenmpi-dev) and jq.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RANKS=2
MIN=4K
MAX=64M
FACTOR=4
ITERS=20
WARMUP=5
REPEATS=3
ALGO=
CHECK=()
JSON=0
KILN="$ROOT/build/kiln"
BTL=self,vader

usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "compare_mpi: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    -n|--ranks) RANKS=$2; shift 2 ;;
    -b|--minbytes) MIN=$2; shift 2 ;;
    -e|--maxbytes) MAX=$2; shift 2 ;;
    -f|--stepfactor) FACTOR=$2; shift 2 ;;
    -i|--iters) ITERS=$2; shift 2 ;;
    -w|--warmup) WARMUP=$2; shift 2 ;;
    -r|--repeats) REPEATS=$2; shift 2 ;;
    -a|--algo) ALGO=$2; shift 2 ;;
    --check) CHECK=(--check); shift ;;
    --json) JSON=1; shift ;;
    --kiln) KILN=$2; shift 2 ;;
    --mca-btl) BTL=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
done
[[ "$RANKS" =~ ^[1-9][0-9]*$ ]] || die "-n RANKS must be a positive integer, got '$RANKS'"
[[ "$REPEATS" =~ ^[1-9][0-9]*$ ]] || die "-r REPEATS must be a positive integer, got '$REPEATS'"
[ -x "$KILN" ] || die "kiln binary not found at $KILN (build it: cmake --build build --target kiln)"
for tool in mpicc mpirun jq; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh installs it)"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-compare-mpi.XXXXXX")
cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then echo "compare_mpi: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Build the MPI baseline beside kiln's build (rebuilt when the source changes).
MPI_BIN="$(dirname "$KILN")/bench/mpi_allreduce"
if [ ! -x "$MPI_BIN" ] || [ "$ROOT/bench/mpi_allreduce.c" -nt "$MPI_BIN" ]; then
  mkdir -p "$(dirname "$MPI_BIN")"
  mpicc -O2 -Wall -Wextra -o "$MPI_BIN" "$ROOT/bench/mpi_allreduce.c" -lm \
    || die "mpicc failed to build bench/mpi_allreduce.c"
fi

SWEEP=(-b "$MIN" -e "$MAX" -f "$FACTOR" -n "$ITERS" -w "$WARMUP")
ALGO_ARGS=()
[ -n "$ALGO" ] && ALGO_ARGS=(-a "$ALGO")

run_kiln() {  # OUT_JSON
  local log="${1%.json}.log"
  if ! "$KILN" launch -n "$RANKS" -- "$KILN" bench comm -o allreduce -d float32 --json \
       "${SWEEP[@]}" "${ALGO_ARGS[@]}" "${CHECK[@]}" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "kiln sweep failed (log: $log)"
  fi
  # kiln launch prefixes each rank's lines with "[rank N] ".
  sed -n 's/^\[rank 0\] \({.*\)$/\1/p' "$log" | tail -n 1 >"$1"
  jq -e '.results | length > 0' "$1" >/dev/null 2>&1 || die "no JSON from kiln's rank 0 in $log"
}

run_mpi() {  # OUT_JSON
  local log="${1%.json}.log"
  if ! mpirun --allow-run-as-root --oversubscribe -np "$RANKS" --mca btl "$BTL" \
       "$MPI_BIN" "${SWEEP[@]}" "${CHECK[@]}" >"$1" 2>"$log"; then
    tail -n 20 "$log" >&2
    die "MPI sweep failed (log: $log)"
  fi
  jq -e '.results | length > 0' "$1" >/dev/null 2>&1 || die "no JSON from the MPI baseline in $1"
}

for ((r = 1; r <= REPEATS; r++)); do
  if ((r % 2)); then order=(kiln mpi); else order=(mpi kiln); fi
  for who in "${order[@]}"; do
    [ "$JSON" -eq 1 ] || echo "# round $r/$REPEATS: $who" >&2
    "run_$who" "$WORK/$who.$r.json"
  done
done

if [ ${#CHECK[@]} -gt 0 ]; then
  bad=$(jq -s '[.[].results[] | select(.check != "ok")] | length' "$WORK"/*.json)
  [ "$bad" -eq 0 ] || die "$bad result check(s) failed (see $WORK)"
fi

# Medians per size across rounds; busbw from the median time.
table=$(jq -s --argjson n "$RANKS" '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor]
                     else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def busbw($bytes; $t): if $t > 0 then $bytes / ($t * 1e-6) / 1e9 * (2 * ($n - 1) / $n) else 0 end;
  (map(select(.algo != "mpi"))) as $k | (map(select(.algo == "mpi"))) as $m |
  {
    world_size: $n,
    op: "allreduce", dtype: "float32",
    kiln_algo: $k[0].algo,
    mpi_library: $m[0].library,
    repeats: ($k | length),
    results: [
      $k[0].results[].bytes as $b |
      ([$k[].results[] | select(.bytes == $b) | .time_us] | median) as $kt |
      ([$m[].results[] | select(.bytes == $b) | .time_us] | median) as $mt |
      busbw($b; $kt) as $kb | busbw($b; $mt) as $mb |
      {bytes: $b, kiln_time_us: $kt, mpi_time_us: $mt,
       kiln_busbw_gbps: $kb, mpi_busbw_gbps: $mb,
       busbw_ratio: (if $mb > 0 then $kb / $mb else null end),
       time_ratio: (if $mt > 0 then $kt / $mt else null end)}
    ]
  }' "$WORK"/kiln.*.json "$WORK"/mpi.*.json)

if [ "$JSON" -eq 1 ]; then
  echo "$table"
  exit 0
fi

echo "# allreduce float32 sum, $RANKS ranks; kiln ($(jq -r .kiln_algo <<<"$table")) vs $(jq -r .mpi_library <<<"$table") (btl $BTL)"
echo "# median of $REPEATS rounds; ratio = kiln busbw / mpi busbw, t_ratio = kiln time / mpi time"
printf '%12s %12s %12s %12s %12s %8s %8s\n' bytes kiln_us mpi_us kiln_busbw mpi_busbw ratio t_ratio
jq -r '.results[] | [.bytes, .kiln_time_us, .mpi_time_us, .kiln_busbw_gbps, .mpi_busbw_gbps,
                     (.busbw_ratio // "nan"), (.time_ratio // "nan")] | @tsv' <<<"$table" |
  while IFS=$'\t' read -r b kt mt kb mb ratio tr; do
    printf '%12s %12.2f %12.2f %12.3f %12.3f %8s %8.2f\n' "$b" "$kt" "$mt" "$kb" "$mb" \
      "$( [ "$ratio" = nan ] && echo - || printf '%.2f' "$ratio")" "$tr"
  done
