#!/usr/bin/env bash
# DDP overlap between two "hosts": two network namespaces joined by a veth
# pair shaped with tc tbf (an inter-node-like link), one rank in each, one
# torch thread per rank. Runs `kiln bench ddp`, which compares in the same
# run (a) allreduce of all gradients after backward with (b) kiln::ddp.
#
#   bench/ddp_overlap.sh [--rate 1gbit] [--batch 384] [--width 4096] [--layers 2]
#                        [--bucket-mib 25 | --auto-bucket-cap] [--bf16] [--steps 6] [--kiln PATH]
#                        [--bench ddp | --bench fsdp [--stage 3]] [--exec CMD]...
#                        [--pin]
# Prints rank 0's JSON (backward_s, comm_s, exposed_comm_s, overlap,
# step_a_s, step_b_s, step_ratio; `--bench fsdp` runs `kiln bench fsdp`
# instead, bench/fsdp_overlap.sh). Needs root (ip netns, tc).
# --exec CMD (repeatable) runs CMD instead, once per --exec, one after the
# other in the same namespaces, as both ranks (bash -c, with RANK,
# WORLD_SIZE, MASTER_ADDR, MASTER_PORT, KILN_COMM_ADDR, GLOO_SOCKET_IFNAME
# and KILN set), and prints rank 0's output of each (bench/ddp_vs_pytorch.sh).
# --pin runs rank r on the r-th allowed CPU alone (taskset: every thread of
# the rank, its comm threads too), one rank per core; without it the
# scheduler places every thread anywhere. Either way each run's per-CPU
# interrupt and softirq work (/proc/stat ticks, /proc/softirqs counts) goes
# to stderr, to see which core took the link's packet work.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN="$ROOT/build/kiln"
RATE=1gbit
BENCH=ddp
BENCH_ARGS=()
EXECS=()
PIN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --kiln) KILN=$2; shift 2 ;;
    --bench) BENCH=$2; shift 2 ;;
    --exec) EXECS+=("$2"); shift 2 ;;
    --pin) PIN=1; shift ;;
    --stage) BENCH_ARGS+=("$1" "$2"); shift 2 ;;
    --batch|--width|--layers|--bucket-mib|--steps|--warmup|--prefetch|--min-unit-params|--trace) BENCH_ARGS+=("$1" "$2"); shift 2 ;;
    --auto-bucket-cap|--bf16) BENCH_ARGS+=("$1"); shift ;;
    *) echo "ddp_overlap: unknown option $1" >&2; exit 2 ;;
  esac
done

NS_A=kiln_ddp_a_$$ NS_B=kiln_ddp_b_$$
VETH_A=kdda$$ VETH_B=kddb$$
ADDR_A=10.233.0.1 ADDR_B=10.233.0.2
PORT=29533
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then echo "ddp_overlap: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NS_A" || { echo "ddp_overlap: cannot create network namespaces (needs root)" >&2; exit 1; }
# shellcheck source=../scripts/lib/netns.sh
source "$ROOT/scripts/lib/netns.sh"
join_namespaces "$NS_A" "$NS_B" "$VETH_A" "$VETH_B" "$ADDR_A" "$ADDR_B"
if [ "$RATE" != none ]; then
  ip netns exec "$NS_A" tc qdisc add dev "$VETH_A" root tbf rate "$RATE" burst 256kb latency 50ms
  ip netns exec "$NS_B" tc qdisc add dev "$VETH_B" root tbf rate "$RATE" burst 256kb latency 50ms
fi
echo "# link $VETH_A <-> $VETH_B: ${RATE}; pin $PIN; ${EXECS[*]:-kiln bench $BENCH ${BENCH_ARGS[*]}}" >&2

# The CPUs this script may use, in order: --pin puts rank r on the r-th.
mapfile -t CPUS < <(taskset -pc $$ | sed 's/.*: //' | tr ',' '\n' |
  awk -F- '{ for (c = $1; c <= ($2 == "" ? $1 : $2); c++) print c }')
if [ "$PIN" = 1 ] && [ ${#CPUS[@]} -lt 2 ]; then
  echo "ddp_overlap: --pin needs 2 CPUs, have ${CPUS[*]}" >&2
  exit 1
fi

# cpu_work: one line per CPU: "cpuN irq_ticks softirq_ticks net_rx net_tx
# timer hrtimer sched" (/proc/stat's irq and softirq columns, in USER_HZ
# ticks; then /proc/softirqs counts).
cpu_work() {
  awk '/^cpu[0-9]/ { print $1, $7, $8 }' /proc/stat >"$WORK/stat"
  awk 'NR == 1 { next } { for (i = 2; i <= NF; i++) n[$1, i] = $i; if (NR == 2) cols = NF }
       END { for (i = 2; i <= cols; i++)
               print "cpu" (i - 2), n["NET_RX:", i], n["NET_TX:", i], n["TIMER:", i],
                     n["HRTIMER:", i], n["SCHED:", i] }' /proc/softirqs >"$WORK/softirqs"
  join "$WORK/stat" "$WORK/softirqs"
}

# print_cpu_work BEFORE AFTER: the difference, one line per CPU, to stderr.
print_cpu_work() {
  join <(echo "$1") <(echo "$2") | awk '{
    printf "# %s: irq %d ms, softirq %d ms; softirqs NET_RX %d NET_TX %d TIMER %d HRTIMER %d SCHED %d\n",
      $1, ($9 - $2) * 10, ($10 - $3) * 10, $11 - $4, $12 - $5, $13 - $6, $14 - $7, $15 - $8 }' >&2
}

# run_ranks PORT CMD...: CMD as rank 0 in NS_A and rank 1 in NS_B; prints
# rank 0's output.
run_ranks() {
  local port=$1 rank ns addr dev p rc=0 before pin
  shift
  before=$(cpu_work)
  for rank in 0 1; do
    ns=$NS_A addr=$ADDR_A dev=$VETH_A
    [ "$rank" = 1 ] && ns=$NS_B addr=$ADDR_B dev=$VETH_B
    pin=()
    [ "$PIN" = 1 ] && pin=(taskset -c "${CPUS[$rank]}")
    ip netns exec "$ns" "${pin[@]}" env RANK=$rank WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 \
      MASTER_ADDR=$ADDR_A MASTER_PORT=$port KILN_COMM_ADDR=$addr KILN_COMM_TIMEOUT=120 \
      GLOO_SOCKET_IFNAME=$dev KILN="$KILN" OMP_NUM_THREADS=1 "$@" \
      >"$WORK/rank$rank.out" 2>"$WORK/rank$rank.err" &
    PIDS+=($!)
  done
  for p in "${PIDS[@]}"; do wait "$p" || rc=$?; done
  PIDS=()
  print_cpu_work "$before" "$(cpu_work)"
  if [ "$rc" -ne 0 ]; then
    tail -n 5 "$WORK"/rank*.err >&2
    exit "$rc"
  fi
  cat "$WORK/rank0.out"
}

if [ ${#EXECS[@]} -eq 0 ]; then
  run_ranks "$PORT" "$KILN" bench "$BENCH" --json "${BENCH_ARGS[@]}"
else
  for cmd in "${EXECS[@]}"; do
    run_ranks "$PORT" bash -c "$cmd"
    PORT=$((PORT + 1))  # a fresh port: the last run's may linger in TIME_WAIT
  done
fi
