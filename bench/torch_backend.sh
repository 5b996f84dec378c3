#!/usr/bin/env bash
# kiln vs gloo as torch.distributed backends, same run (bench/torch_backend.py):
#   1. 2 local ranks (`kiln launch -n 2`): allreduce latency at 4 KiB and bus
#      bandwidth from 64 KiB to 256 MiB;
#   2. PyTorch DDP step time on the MLP of bench/ddp_overlap.sh (width 4096,
#      2 hidden layers, batch 64 per rank, one torch thread per rank), one
#      rank in each of two network namespaces joined by a veth shaped with
#      tc tbf to --rate (default 1gbit). Needs root.
#
#   bench/torch_backend.sh [--runs 3] [--rate 1gbit] [--steps 4] [--only local|ddp]
#                          [--timeline] [--kiln PATH] [--python /usr/bin/python3]
# Prints one JSON line per figure: each backend's median and range over the
# runs, and kiln's speed-up (latency, step: gloo/kiln; bandwidth: kiln/gloo).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN="$ROOT/build/kiln" PYTHON=/usr/bin/python3 RATE=1gbit ONLY= ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --kiln) KILN=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --runs|--steps|--width|--layers|--batch|--max-bytes) ARGS+=("$1" "$2"); shift 2 ;;
    --timeline) ARGS+=("$1"); shift ;;
    *) echo "torch_backend: unknown option $1" >&2; exit 2 ;;
  esac
done
export PYTHONPATH="$(dirname "$KILN")/python${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
BENCH="$ROOT/bench/torch_backend.py"

if [ "$ONLY" != ddp ]; then
  echo "# 2 local ranks: kiln launch -n 2 -- $PYTHON bench/torch_backend.py --mode local ${ARGS[*]}" >&2
  "$KILN" launch -n 2 -- "$PYTHON" "$BENCH" --mode local "${ARGS[@]}" 2>&1 | grep -o '{"what".*' || {
    echo "torch_backend: the local run failed" >&2; exit 1; }
fi
[ "$ONLY" = local ] && exit 0

NS_A=kiln_tb_a_$$ NS_B=kiln_tb_b_$$ VETH_A=ktba$$ VETH_B=ktbb$$
ADDR_A=10.234.0.1 ADDR_B=10.234.0.2 PORT=29544
WORK=$(mktemp -d /tmp/kiln-torch-bench.$$.XXXX)
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then echo "torch_backend: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
ip netns add "$NS_A" || { echo "torch_backend: cannot create network namespaces (needs root)" >&2; exit 1; }
source "$ROOT/scripts/lib/netns.sh"
join_namespaces "$NS_A" "$NS_B" "$VETH_A" "$VETH_B" "$ADDR_A" "$ADDR_B"
if [ "$RATE" != none ]; then
  ip netns exec "$NS_A" tc qdisc add dev "$VETH_A" root tbf rate "$RATE" burst 256kb latency 50ms
  ip netns exec "$NS_B" tc qdisc add dev "$VETH_B" root tbf rate "$RATE" burst 256kb latency 50ms
fi
echo "# DDP across $VETH_A <-> $VETH_B (${RATE}): bench/torch_backend.py --mode ddp ${ARGS[*]}" >&2
for rank in 0 1; do
  ns=$NS_A addr=$ADDR_A veth=$VETH_A
  [ "$rank" = 1 ] && ns=$NS_B addr=$ADDR_B veth=$VETH_B
  ip netns exec "$ns" env RANK=$rank WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 \
    MASTER_ADDR=$ADDR_A MASTER_PORT=$PORT KILN_COMM_ADDR=$addr GLOO_SOCKET_IFNAME=$veth \
    "$PYTHON" "$BENCH" --mode ddp "${ARGS[@]}" > "$WORK/rank$rank.out" 2> "$WORK/rank$rank.err" &
  PIDS+=($!)
done
rc=0
for p in "${PIDS[@]}"; do wait "$p" || rc=$?; done
PIDS=()
[ "$rc" -eq 0 ] || { echo "torch_backend: a rank exited with status $rc" >&2; tail -n 5 "$WORK"/rank*.err >&2; exit "$rc"; }
cat "$WORK/rank0.out"
