#!/usr/bin/env bash
# Kiln's 2-rank shared-memory allreduce against a plain stand-alone ring
# (bench/shm_ring.c) on this host: same sizes, same timing rules, and each
# measuring the memory limit the same way, interleaved with its own
# iterations (`limit_fraction`, Note [The memory limit, interleaved] in
# cli/bench_comm_cmd.cc). Rounds alternate the two and swap which goes first
# each round (ABBA), since this machine's speed drifts over minutes; the
# table has each run's busbw and limit_fraction per size, then medians.
#
#   bench/shm_ring_vs_kiln.sh [--runs 3] [-b 64M] [-e 256M] [-f 4] [-n 5] [-w 2]
#                             [--kiln PATH] [--kiln-args "-R"]
#                             [--ring-args "--bell --header"]
#
# --kiln-args passes options to `kiln bench comm` (-R: registered buffers,
# which run the direct allreduce); --ring-args to shm_ring (--bell: a locked
# add on the peer's doorbell per slot, as Kiln's pair does; --header;
# --fused; --direct: buffers in shared memory, no FIFO; --slot-bytes, --slots).
# Needs a C compiler and jq.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=3
MIN=64M
MAX=256M
FACTOR=4
ITERS=5
WARMUP=2
KILN="$ROOT/build/kiln"
RING_ARGS=
KILN_ARGS=

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "shm_ring_vs_kiln: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    -b) MIN=$2; shift 2 ;;
    -e) MAX=$2; shift 2 ;;
    -f) FACTOR=$2; shift 2 ;;
    -n) ITERS=$2; shift 2 ;;
    -w) WARMUP=$2; shift 2 ;;
    --kiln) KILN=$2; shift 2 ;;
    --ring-args) RING_ARGS=$2; shift 2 ;;
    --kiln-args) KILN_ARGS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[ -x "$KILN" ] || die "no kiln binary at $KILN (build it, or pass --kiln)"
command -v jq >/dev/null || die "needs jq"
CC=${CC:-cc}
command -v "$CC" >/dev/null || die "needs a C compiler (\$CC=$CC)"

WORK=$(mktemp -d "/tmp/shm_ring_vs_kiln.$$.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$CC" -O2 -std=c11 -o "$WORK/shm_ring" "$ROOT/bench/shm_ring.c" || die "cannot compile bench/shm_ring.c"

common=(-b "$MIN" -e "$MAX" -f "$FACTOR" -n "$ITERS" -w "$WARMUP")
# shellcheck disable=SC2086 # KILN_ARGS is a list of options
run_kiln() { timeout 300 "$KILN" bench comm --json -c "${common[@]}" $KILN_ARGS > "$WORK/kiln.$1.json"; }
# shellcheck disable=SC2086 # RING_ARGS is a list of options
run_ring() { timeout 300 "$WORK/shm_ring" "${common[@]}" $RING_ARGS > "$WORK/ring.$1.json"; }

for r in $(seq 1 "$RUNS"); do
  if [ $((r % 2)) -eq 1 ]; then run_kiln "$r"; run_ring "$r"; else run_ring "$r"; run_kiln "$r"; fi
  for who in kiln ring; do
    jq -e '[.results[] | select(.check != "ok")] | length == 0' "$WORK/$who.$r.json" >/dev/null ||
      die "$who run $r: result check failed"
  done
done

echo "# shm allreduce, 2 ranks: kiln ($KILN $KILN_ARGS) vs stand-alone ring (bench/shm_ring.c $RING_ARGS)"
printf '%-6s %4s %10s %10s %10s %10s %10s\n' size run kiln_busbw ring_busbw kiln_frac ring_frac kiln/ring
sizes=$(jq -r '.results[].bytes' "$WORK/kiln.1.json")
for b in $sizes; do
  kb=(); rb=(); kf=(); rf=()
  for r in $(seq 1 "$RUNS"); do
    k=$(jq -r --argjson b "$b" '.results[] | select(.bytes == $b) | "\(.busbw_gbps) \(.limit_fraction)"' "$WORK/kiln.$r.json")
    g=$(jq -r --argjson b "$b" '.results[] | select(.bytes == $b) | "\(.busbw_gbps) \(.limit_fraction)"' "$WORK/ring.$r.json")
    if [ -z "$k" ] || [ -z "$g" ]; then die "size $b missing from run $r"; fi
    read -r kbus kfrac <<< "$k"; read -r rbus rfrac <<< "$g"
    kb+=("$kbus"); rb+=("$rbus"); kf+=("$kfrac"); rf+=("$rfrac")
    awk -v s="$((b >> 20))M" -v r="$r" -v kb="$kbus" -v rb="$rbus" -v kf="$kfrac" -v rf="$rfrac" \
      'BEGIN { printf "%-6s %4s %10.2f %10.2f %10.3f %10.3f %10.2f\n", s, r, kb, rb, kf, rf, kb / rb }'
  done
  med() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END { print (NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2), v[1], v[NR] }'; }
  read -r mkb _ _ <<< "$(med "${kb[@]}")"; read -r mrb _ _ <<< "$(med "${rb[@]}")"
  read -r mkf lkf hkf <<< "$(med "${kf[@]}")"; read -r mrf lrf hrf <<< "$(med "${rf[@]}")"
  awk -v s="$((b >> 20))M" -v kb="$mkb" -v rb="$mrb" -v kf="$mkf" -v rf="$mrf" \
      -v lk="$lkf" -v hk="$hkf" -v lr="$lrf" -v hr="$hrf" \
    'BEGIN { printf "%-6s %4s %10.2f %10.2f %10.3f %10.3f %10.2f   (kiln_frac %.3f-%.3f, ring_frac %.3f-%.3f)\n", s, "med", kb, rb, kf, rf, kb / rb, lk, hk, lr, hr }'
done
