#!/usr/bin/env bash
# How close Kiln's tcp transport gets to the link, traffic both ways: two
# network namespaces joined by a veth (unshaped by default, optionally shaped
# with tc tbf), one rank per namespace. Each run measures, one after the
# other in the same namespaces:
#   iperf3 --bidir   one TCP stream each way at once, per-direction rate
#   kiln sendrecv    `kiln bench comm -o sendrecv`: each rank sends SIZE to
#                    the other while receiving SIZE from it (the transport
#                    alone: both directions of one connection, no reduction)
#   kiln allreduce   `kiln bench comm -o allreduce`: with 2 ranks each rank
#                    sends and receives SIZE per allreduce (half in
#                    reduce-scatter, half in allgather), so SIZE / time is
#                    its per-direction rate too, reduction included
# and prints per run and as medians over runs (with the range) each figure
# and its ratio to iperf3's per-direction rate *of the same run* (the faster
# of its two directions, so the ratio never flatters Kiln).
#
#   bench/tcp_vs_iperf.sh [--runs 3] [--rate RATE [--burst 1mb] [--latency 50ms]]
#                         [--size 64M] [--iters 10] [--warmup 2] [--time 4]
#                         [--algo ring] [--kiln PATH] [--json]
#
# --json prints one JSON document (runs and medians) instead of the table.
# Needs root (ip netns, tc), iperf3 and jq (scripts/install-deps.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=3
RATE=
BURST=1mb
LATENCY=50ms
SIZE=64M
ITERS=10
WARMUP=2
IPERF_TIME=4
ALGO=
JSON=0
KILN="$ROOT/build/kiln"

usage() { sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "tcp_vs_iperf: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
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
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs $RUNS: expected a positive integer"
KILN=$(readlink -f "$KILN")
[ -x "$KILN" ] || die "kiln binary not found at $KILN (build it: cmake --build build --target kiln)"
for tool in ip iperf3 jq ss; do
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
source "$ROOT/scripts/lib/netns.sh"
join_namespaces "$NS_A" "$NS_B" "$VETH_A" "$VETH_B" "$ADDR_A" "$ADDR_B"
if [ -n "$RATE" ]; then
  # Egress of both ends: shapes A->B and B->A alike.
  ip netns exec "$NS_A" tc qdisc add dev "$VETH_A" root tbf rate "$RATE" burst "$BURST" latency "$LATENCY" \
    || die "tc tbf rate $RATE burst $BURST latency $LATENCY failed on $VETH_A"
  ip netns exec "$NS_B" tc qdisc add dev "$VETH_B" root tbf rate "$RATE" burst "$BURST" latency "$LATENCY"
fi
shaping="unshaped"
[ -z "$RATE" ] || shaping="tbf rate $RATE burst $BURST latency $LATENCY"
log "veth $NS_A ($ADDR_A) <-> $NS_B ($ADDR_B), $shaping; $RUNS runs"

# iperf3_bidir RUN: one stream each way for IPERF_TIME seconds; prints
# {"a_to_b": GB/s, "b_to_a": GB/s, "retransmits": N}.
iperf3_bidir() {
  local run=$1 port=$((5201 + $1))
  ip netns exec "$NS_B" iperf3 -s -B "$ADDR_B" -p "$port" -1 >"$WORK/iperf-server.$run.log" 2>&1 &
  local server=$!
  PIDS+=("$server")
  # Wait for the server's listening socket rather than sleeping blindly.
  for _ in $(seq 1 200); do
    ip netns exec "$NS_B" ss -Hltn "sport = :$port" 2>/dev/null | grep -q . && break
    kill -0 "$server" 2>/dev/null || { cat "$WORK/iperf-server.$run.log" >&2; die "iperf3 server exited"; }
    sleep 0.05
  done
  ip netns exec "$NS_A" iperf3 -c "$ADDR_B" -p "$port" --bidir -t "$IPERF_TIME" -J \
    >"$WORK/iperf.$run.json" 2>"$WORK/iperf-client.$run.log" \
    || { cat "$WORK/iperf-client.$run.log" "$WORK/iperf.$run.json" >&2; die "iperf3 client failed"; }
  wait "$server" 2>/dev/null || true
  PIDS=()
  # The client sends A->B (.sum_received: what B got) and receives B->A
  # (.sum_received_bidir_reverse: what A got).
  jq -ce '{a_to_b: (.end.sum_received.bits_per_second / 8e9),
           b_to_a: (.end.sum_received_bidir_reverse.bits_per_second / 8e9),
           retransmits: ((.end.sum_sent.retransmits // 0) +
                         (.end.sum_sent_bidir_reverse.retransmits // 0))}' "$WORK/iperf.$run.json" \
    || die "no per-direction sums in iperf3's JSON ($WORK/iperf.$run.json)"
}

# kiln_bench RUN OP: `kiln bench comm -o OP` on SIZE, one rank per
# namespace, results checked; prints rank 0's JSON.
kiln_bench() {
  local run=$1 op=$2 port=$((29500 + 2 * $1)) rank ns addr rc
  [ "$op" = sendrecv ] && port=$((port + 1))  # fresh ports: the last may linger in TIME_WAIT
  local algo_args=()
  [ -n "$ALGO" ] && [ "$op" = allreduce ] && algo_args=(-a "$ALGO")
  for rank in 0 1; do
    ns=$NS_A addr=$ADDR_A
    [ "$rank" = 1 ] && ns=$NS_B addr=$ADDR_B
    ip netns exec "$ns" env RANK="$rank" WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 \
      MASTER_ADDR="$ADDR_A" MASTER_PORT="$port" KILN_COMM_ADDR="$addr" KILN_COMM_TIMEOUT=120 \
      "$KILN" bench comm -o "$op" -d float32 -b "$SIZE" -e "$SIZE" -n "$ITERS" -w "$WARMUP" \
      --check --json "${algo_args[@]}" >"$WORK/kiln.$op.$run.$rank.out" 2>"$WORK/kiln.$op.$run.$rank.err" &
    PIDS+=($!)
  done
  for rank in 0 1; do
    rc=0
    wait "${PIDS[$rank]}" || rc=$?
    if [ "$rc" -ne 0 ]; then
      tail -n 20 "$WORK/kiln.$op.$run.$rank.err" >&2
      die "kiln bench comm -o $op: rank $rank exited $rc"
    fi
  done
  PIDS=()
  jq -ce '.results[0] | if .check == "ok" then . else error("check \(.check)") end' \
    "$WORK/kiln.$op.$run.0.out" || die "kiln's $op result check did not pass ($WORK)"
}

log "each run: iperf3 --bidir -t $IPERF_TIME; kiln bench comm -o sendrecv and -o allreduce" \
  "-b $SIZE -e $SIZE -n $ITERS -w $WARMUP${ALGO:+ -a $ALGO}"
: >"$WORK/runs.jsonl"
for run in $(seq 1 "$RUNS"); do
  iperf=$(iperf3_bidir "$run")
  sendrecv=$(kiln_bench "$run" sendrecv)
  allreduce=$(kiln_bench "$run" allreduce)
  # Per direction: sendrecv and (2 ranks) allreduce move SIZE each way.
  jq -cn --argjson i "$iperf" --argjson s "$sendrecv" --argjson a "$allreduce" --argjson run "$run" '
    ([$i.a_to_b, $i.b_to_a] | max) as $best |
    {run: $run, iperf_a_to_b_gbs: $i.a_to_b, iperf_b_to_a_gbs: $i.b_to_a,
     iperf_retransmits: $i.retransmits,
     sendrecv_gbs: ($s.bytes / $s.time_us / 1e3), allreduce_gbs: ($a.bytes / $a.time_us / 1e3),
     sendrecv_ratio: ($s.bytes / $s.time_us / 1e3 / $best),
     allreduce_ratio: ($a.bytes / $a.time_us / 1e3 / $best)}' | tee -a "$WORK/runs.jsonl" |
    { if [ "$JSON" -eq 1 ]; then cat >/dev/null; else sed 's/^/# run: /' >&2; fi; }
done

result=$(jq -s --arg rate "${RATE:-unshaped}" --arg size "$SIZE" '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor]
                     else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def stat(f): [.[] | f] | {median: median, min: min, max: max};
  {link: $rate, size: $size, runs: .,
   iperf_a_to_b_gbs: stat(.iperf_a_to_b_gbs), iperf_b_to_a_gbs: stat(.iperf_b_to_a_gbs),
   sendrecv_gbs: stat(.sendrecv_gbs), allreduce_gbs: stat(.allreduce_gbs),
   sendrecv_ratio: stat(.sendrecv_ratio), allreduce_ratio: stat(.allreduce_ratio)}' "$WORK/runs.jsonl")

if [ "$JSON" -eq 1 ]; then
  echo "$result"
else
  jq -r '
    def r3: . * 1000 | round / 1000;
    def r2: . * 100 | round / 100;
    def s(f): "\(f.median | r3) (\(f.min | r3)-\(f.max | r3))";
    def q(f): "\(f.median | r2) (\(f.min | r2)-\(f.max | r2))";
    "link: \(.link), \(.runs | length) runs, medians (range), GB/s per direction\n" +
    "iperf3 --bidir A->B:\t\(s(.iperf_a_to_b_gbs))\n" +
    "iperf3 --bidir B->A:\t\(s(.iperf_b_to_a_gbs))\n" +
    "kiln sendrecv  \(.size | .[0:8]):\t\(s(.sendrecv_gbs))   ratio \(q(.sendrecv_ratio))\n" +
    "kiln allreduce \(.size | .[0:8]):\t\(s(.allreduce_gbs))   ratio \(q(.allreduce_ratio))"' <<<"$result"
fi
