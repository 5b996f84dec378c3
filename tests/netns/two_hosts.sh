#!/usr/bin/env bash
# Two "hosts" (network namespaces joined by a veth pair), 2 ranks each, running
# `kiln bench comm --check`: every collective and every allreduce algorithm over
# shm inside a namespace and tcp between them. Then a fault: the veth goes down
# in the middle of a long allreduce loop and every rank must exit non-zero, with
# an error on stderr, within KILN_COMM_TIMEOUT + 5 s (no hang).
#
# Usage: two_hosts.sh [path/to/kiln]      (needs root: ip netns, ip link)
# Exit: 0 pass, 1 fail, 77 skip (cannot create namespaces).
set -euo pipefail

KILN=${1:-build/kiln}
KILN=$(readlink -f "$KILN")
[ -x "$KILN" ] || { echo "FAIL: kiln binary not found or not executable: $KILN" >&2; exit 1; }
command -v jq >/dev/null || { echo "FAIL: jq not found (scripts/install-deps.sh installs it)" >&2; exit 1; }
command -v ip >/dev/null || { echo "SKIP: cannot create network namespaces: 'ip' (iproute2) not found"; exit 77; }

# Unique per run: several engineers (and ctest -j) may run this at once.
NS_A="kiln2h_a_$$"
NS_B="kiln2h_b_$$"
VETH_A="k2a$$"          # interface names are limited to 15 characters
VETH_B="k2b$$"
ADDR_A=10.231.0.1
ADDR_B=10.231.0.2
PORT=29500              # each namespace has its own port space: no clash
FAULT_TIMEOUT=5         # KILN_COMM_TIMEOUT for the fault phase, seconds
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-two-hosts.XXXXXX")
PIDS=()

log() { echo "[two_hosts] $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for ns in "$NS_A" "$NS_B"; do
    if ip netns list 2>/dev/null | grep -qw "$ns"; then
      # Anything still inside our namespaces was started by this script.
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
      ip netns del "$ns" 2>/dev/null
    fi
  done
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
    log "logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- namespaces -------------------------------------------------------------
if ! err=$(ip netns add "$NS_A" 2>&1); then
  echo "SKIP: cannot create network namespaces: $err"
  exit 77
fi
# shellcheck source=../../scripts/lib/netns.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/netns.sh"
join_namespaces "$NS_A" "$NS_B" "$VETH_A" "$VETH_B" "$ADDR_A" "$ADDR_B"
log "namespaces $NS_A ($ADDR_A) and $NS_B ($ADDR_B) joined by $VETH_A/$VETH_B"

# start_rank RANK NS ADDR LABEL COMM_TIMEOUT WALL_LIMIT kiln-args...: starts one
# rank in the background (stdout/stderr to $WORK/LABEL.RANK.{out,err}) and
# appends its pid to PIDS. WALL_LIMIT is a backstop: a hung rank exits 124.
start_rank() {
  local rank=$1 ns=$2 addr=$3 label=$4 comm_timeout=$5 wall=$6
  shift 6
  ip netns exec "$ns" env RANK="$rank" WORLD_SIZE=4 LOCAL_RANK=$((rank % 2)) LOCAL_WORLD_SIZE=2 \
    MASTER_ADDR="$ADDR_A" MASTER_PORT="$PORT" KILN_COMM_ADDR="$addr" \
    KILN_COMM_TIMEOUT="$comm_timeout" \
    timeout -k 5 "$wall" "$KILN" "$@" >"$WORK/$label.$rank.out" 2>"$WORK/$label.$rank.err" &
  PIDS+=($!)
}

start_world() {  # LABEL COMM_TIMEOUT WALL_LIMIT kiln-args...
  local label=$1 comm_timeout=$2 wall=$3
  shift 3
  PIDS=()
  start_rank 0 "$NS_A" "$ADDR_A" "$label" "$comm_timeout" "$wall" "$@"
  start_rank 1 "$NS_A" "$ADDR_A" "$label" "$comm_timeout" "$wall" "$@"
  start_rank 2 "$NS_B" "$ADDR_B" "$label" "$comm_timeout" "$wall" "$@"
  start_rank 3 "$NS_B" "$ADDR_B" "$label" "$comm_timeout" "$wall" "$@"
}

show_logs() {  # LABEL
  local f
  for f in "$WORK/$1".*.err "$WORK/$1".*.out; do
    [ -s "$f" ] && { echo "--- $(basename "$f")"; tail -n 20 "$f"; }
  done >&2
  return 0
}

# --- phase 1: correctness of every collective across the two hosts ----------
SWEEP=(-b 4K -e 4M -f 4 -n 3 -w 1)
run_case() {  # LABEL kiln-bench-args...
  local label=$1 i rc bad=0 t0=$SECONDS
  shift
  start_world "$label" 30 60 bench comm --check --json "${SWEEP[@]}" "$@"
  for i in 0 1 2 3; do
    rc=0
    wait "${PIDS[$i]}" || rc=$?
    if [ "$rc" -ne 0 ]; then
      echo "FAIL: $label: rank $i exited $rc$([ "$rc" -eq 124 ] && echo ' (hung: killed by the 60 s backstop)')" >&2
      bad=1
    fi
  done
  PIDS=()
  if [ "$bad" -eq 0 ]; then
    local json="$WORK/$label.0.out"
    if ! jq -e '(.results | length) > 0 and all(.results[]; .check == "ok") and .world_size == 4' \
         "$json" >/dev/null 2>&1; then
      echo "FAIL: $label: rank 0's JSON does not say check \"ok\" for every size:" >&2
      cat "$json" >&2
      bad=1
    fi
  fi
  if [ "$bad" -ne 0 ]; then
    show_logs "$label"
    return 1
  fi
  log "ok   $label ($((SECONDS - t0)) s): $(jq -r '[.results[] | "\(.bytes)B \(.busbw_gbps * 1000 | round / 1000)GB/s"] | join(", ")' "$WORK/$label.0.out")"
}

failures=0
for algo in ring halving_doubling recursive_doubling hierarchical; do
  run_case "allreduce-$algo" -o allreduce -a "$algo" || failures=$((failures + 1))
done
for op in allgather reduce_scatter broadcast alltoall sendrecv; do
  run_case "$op" -o "$op" || failures=$((failures + 1))
done
[ "$failures" -eq 0 ] || fail "$failures collective case(s) failed"

# --- phase 2: the link goes down mid-allreduce --------------------------------
log "fault: long allreduce loop, KILN_COMM_TIMEOUT=$FAULT_TIMEOUT, then $VETH_A down"
start_world fault "$FAULT_TIMEOUT" 120 bench comm -o allreduce -b 16M -e 16M -n 100000 -w 0

# Running = at least 64 MiB have crossed the veth (several 16 MiB allreduces),
# which also proves the ranks have passed rendezvous and connected over tcp.
tx_bytes() { ip netns exec "$NS_A" cat "/sys/class/net/$VETH_A/statistics/tx_bytes"; }
base=$(tx_bytes)
deadline=$((SECONDS + 60))
while [ $(($(tx_bytes) - base)) -lt $((64 << 20)) ]; do
  for i in 0 1 2 3; do
    kill -0 "${PIDS[$i]}" 2>/dev/null || { show_logs fault; fail "fault: rank $i exited before the link went down"; }
  done
  [ "$SECONDS" -lt "$deadline" ] || { show_logs fault; fail "fault: allreduce loop sent < 64 MiB over $VETH_A in 60 s"; }
  sleep 0.2
done
log "allreduce traffic flowing ($(( ($(tx_bytes) - base) >> 20 )) MiB sent); link down"

ip -n "$NS_A" link set "$VETH_A" down
t_down=$(date +%s.%N)
limit=$((FAULT_TIMEOUT + 5))
declare -A exit_rc=() exit_after=()
while [ "${#exit_rc[@]}" -lt 4 ]; do
  now=$(date +%s.%N)
  for i in 0 1 2 3; do
    [ -n "${exit_rc[$i]:-}" ] && continue
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      rc=0
      wait "${PIDS[$i]}" || rc=$?
      exit_rc[$i]=$rc
      exit_after[$i]=$(awk -v a="$t_down" -v b="$now" 'BEGIN { printf "%.1f", b - a }')
    fi
  done
  if awk -v a="$t_down" -v b="$now" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
    for i in 0 1 2 3; do
      [ -n "${exit_rc[$i]:-}" ] || echo "FAIL: fault: rank $i still running ${limit} s after the link went down (hang)" >&2
    done
    show_logs fault
    fail "fault: not every rank exited within KILN_COMM_TIMEOUT + 5 s"
  fi
  sleep 0.1
done
PIDS=()

bad=0
for i in 0 1 2 3; do
  err_file="$WORK/fault.$i.err"
  # The CLI's final line ("kiln: Code: ...") or else the first logged error.
  first_err=$(grep -m 1 '^kiln: ' "$err_file" 2>/dev/null || grep -m 1 -i 'error' "$err_file" 2>/dev/null || true)
  log "rank $i: exit ${exit_rc[$i]} after ${exit_after[$i]} s: ${first_err:-<no stderr>}"
  if [ "${exit_rc[$i]}" -eq 0 ]; then
    echo "FAIL: fault: rank $i exited 0 although the link went down" >&2; bad=1
  elif [ "${exit_rc[$i]}" -eq 124 ] || [ "${exit_rc[$i]}" -eq 137 ]; then
    echo "FAIL: fault: rank $i was killed by the backstop timeout (hang)" >&2; bad=1
  fi
  if [ -z "$first_err" ]; then
    echo "FAIL: fault: rank $i exited ${exit_rc[$i]} without an error message on stderr" >&2; bad=1
  fi
done
[ "$bad" -eq 0 ] || { show_logs fault; fail "fault phase"; }

log "PASS"
