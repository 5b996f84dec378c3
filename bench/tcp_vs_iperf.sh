#!/usr/bin/env bash
# How close Kiln's tcp transport gets to the link: two network namespaces
# joined by a veth (optionally shaped with tc tbf), single-stream TCP
# throughput measured by iperf3, then a 2-rank allreduce (one rank per
# namespace) with `kiln bench comm`. With 2 ranks busbw = algbw, and each rank
# sends the whole buffer once (half in reduce-scatter, half in allgather)
# while receiving as much, so busbw is directly comparable with one-way
# single-stream throughput.
#
#   bench/tcp_vs_iperf.sh [--rate 1gbit] [--burst 1mb] [--latency 50ms]
#                         [--size 64M] [--iters 10] [--warmup 2] [--time 5]
#                         [--algo ring] [--kiln PATH] [--json]
#
# --rate shapes both directions of the veth with `tc qdisc ... root tbf`;
# default: unshaped. Needs root (ip netns, tc), iperf3 and jq.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RATE=
BURST=1mb
LATENCY=50ms
SIZE=64M
ITERS=10
WARMUP=2
IPERF_TIME=5
ALGO=
JSON=0
KILN="$ROOT/build/kiln"

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "tcp_vs_iperf: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --burst) BURST=$2; shift 2 ;;
    --latency) LATENCY=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --iters) ITERS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --time) IPERF_TIME=$2; shift 2 ;;
    --algo) ALGO=$2; shift 2 ;;
    --kiln) KILN=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
done
KILN=$(readlink -f "$KILN")
[ -x "$KILN" ] || die "kiln binary not found at $KILN (build it: cmake --build build --target kiln)"
for tool in ip iperf3 jq; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh installs it)"
done
[ -z "$RATE" ] || command -v tc >/dev/null || die "tc not found (iproute2) but --rate was given"

NS_A="kiln_tvi_a_$$"
NS_B="kiln_tvi_b_$$"
VETH_A="tva$$"
VETH_B="tvb$$"
ADDR_A=10.232.0.1
ADDR_B=10.232.0.2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-tcp-vs-iperf.XXXXXX")
PIDS=()

log() { [ "$JSON" -eq 1 ] || echo "# $*" >&2; }

cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for ns in "$NS_A" "$NS_B"; do
    if ip netns list 2>/dev/null | grep -qw "$ns"; then
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
      ip netns del "$ns" 2>/dev/null
    fi
  done
  if [ "$rc" -ne 0 ]; then echo "tcp_vs_iperf: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! err=$(ip netns add "$NS_A" 2>&1); then
  die "cannot create network namespaces (needs root): $err"
fi
# shellcheck source=../scripts/lib/netns.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/netns.sh"
join_namespaces "$NS_A" "$NS_B" "$VETH_A" "$VETH_B" "$ADDR_A" "$ADDR_B"
if [ -n "$RATE" ]; then
  # Egress of both ends: shapes A->B and B->A alike.
  ip netns exec "$NS_A" tc qdisc add dev "$VETH_A" root tbf rate "$RATE" burst "$BURST" latency "$LATENCY" \
    || die "tc tbf rate $RATE burst $BURST latency $LATENCY failed on $VETH_A"
  ip netns exec "$NS_B" tc qdisc add dev "$VETH_B" root tbf rate "$RATE" burst "$BURST" latency "$LATENCY"
fi
shaping="unshaped"
[ -z "$RATE" ] || shaping="tbf rate $RATE burst $BURST latency $LATENCY"
log "veth $NS_A ($ADDR_A) <-> $NS_B ($ADDR_B), $shaping"

# --- iperf3: single stream A -> B ---------------------------------------------
ip netns exec "$NS_B" iperf3 -s -B "$ADDR_B" -1 >"$WORK/iperf-server.log" 2>&1 &
PIDS+=($!)
# Wait for the server's listening socket rather than sleeping blindly.
for _ in $(seq 1 100); do
  ip netns exec "$NS_B" ss -Hltn "sport = :5201" 2>/dev/null | grep -q . && break
  kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$WORK/iperf-server.log" >&2; die "iperf3 server exited"; }
  sleep 0.05
done
log "iperf3 -c $ADDR_B -t $IPERF_TIME (single stream)"
ip netns exec "$NS_A" iperf3 -c "$ADDR_B" -t "$IPERF_TIME" -J >"$WORK/iperf.json" 2>"$WORK/iperf-client.log" \
  || { cat "$WORK/iperf-client.log" "$WORK/iperf.json" >&2; die "iperf3 client failed"; }
iperf_gbs=$(jq -e '.end.sum_received.bits_per_second / 8 / 1e9' "$WORK/iperf.json") \
  || die "no .end.sum_received in iperf3's JSON ($WORK/iperf.json)"
iperf_retrans=$(jq '.end.sum_sent.retransmits // 0' "$WORK/iperf.json")
wait "${PIDS[0]}" 2>/dev/null || true
PIDS=()

# --- kiln: 2 ranks, one per namespace -----------------------------------------
ALGO_ARGS=()
[ -n "$ALGO" ] && ALGO_ARGS=(-a "$ALGO")
log "kiln bench comm -o allreduce -b $SIZE -e $SIZE -n $ITERS -w $WARMUP ${ALGO_ARGS[*]}"
start_rank() {  # RANK NS ADDR
  ip netns exec "$2" env RANK="$1" WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 \
    MASTER_ADDR="$ADDR_A" MASTER_PORT=29500 KILN_COMM_ADDR="$3" KILN_COMM_TIMEOUT=120 \
    "$KILN" bench comm -o allreduce -d float32 -b "$SIZE" -e "$SIZE" -n "$ITERS" -w "$WARMUP" \
    --check --json "${ALGO_ARGS[@]}" >"$WORK/kiln.$1.out" 2>"$WORK/kiln.$1.err" &
  PIDS+=($!)
}
start_rank 0 "$NS_A" "$ADDR_A"
start_rank 1 "$NS_B" "$ADDR_B"
for i in 0 1; do
  rc=0
  wait "${PIDS[$i]}" || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 20 "$WORK/kiln.$i.err" >&2
    die "kiln rank $i exited $rc"
  fi
done
PIDS=()
jq -e '.results[0].check == "ok"' "$WORK/kiln.0.out" >/dev/null \
  || { cat "$WORK/kiln.0.out" >&2; die "kiln's allreduce result check did not pass"; }

result=$(jq -n --slurpfile k "$WORK/kiln.0.out" --argjson iperf "$iperf_gbs" \
  --argjson retrans "$iperf_retrans" --arg rate "${RATE:-unshaped}" '
  $k[0].results[0] as $r |
  {rate: $rate, bytes: $r.bytes, kiln_algo: $k[0].algo, kiln_time_us: $r.time_us,
   kiln_busbw_gbs: $r.busbw_gbps, iperf_gbs: $iperf, iperf_retransmits: $retrans,
   ratio: (if $iperf > 0 then $r.busbw_gbps / $iperf else null end)}')

if [ "$JSON" -eq 1 ]; then
  echo "$result"
else
  jq -r '"link: \(.rate)\n" +
         "iperf3 single stream:   \(.iperf_gbs * 1000 | round / 1000) GB/s (\(.iperf_retransmits) retransmits)\n" +
         "kiln allreduce busbw:   \(.kiln_busbw_gbs * 1000 | round / 1000) GB/s (\(.bytes) B, \(.kiln_time_us | round) us, algo \(.kiln_algo))\n" +
         "ratio (kiln / iperf3):  \(.ratio * 100 | round / 100)"' <<<"$result"
fi
