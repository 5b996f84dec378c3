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
#                          [--timeline [--timeline-steps 3] [--trace FILE]]
#                          [--duplex] [--kiln PATH] [--python /usr/bin/python3]
#                          [--congestion shipped|system|ALGORITHM]
# --timeline: per step, each bucket's allreduce, the link's bytes each way
# every millisecond, and the floor (the last rank's second bucket plus the
# bytes after the first at the link's payload rate), for a compute-only
# arm too; --duplex: also kiln with KILN_TORCH_DUPLEX=1.
# --congestion (DDP part): "shipped" (default) runs each backend as users get
# it: Kiln's sockets ask for cubic (KILN_TCP_CONGESTION), Gloo's use the
# host's default. "system" puts Kiln on the host's default too; an algorithm
# name (e.g. cubic) puts both on it: Kiln through KILN_TCP_CONGESTION, Gloo
# through bench/tcp_congestion_shim.c preloaded (a network namespace cannot
# change the sysctl here). The run prints what each connection used.
# Prints one JSON line per figure: each backend's median and range over the
# runs, and kiln's speed-up (latency, step: gloo/kiln; bandwidth: kiln/gloo).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN="$ROOT/build/kiln" PYTHON=/usr/bin/python3 RATE=1gbit ONLY='' CONGESTION=shipped ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --kiln) KILN=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --congestion) CONGESTION=$2; shift 2 ;;
    --runs|--steps|--width|--layers|--batch|--max-bytes|--timeline-steps|--trace) ARGS+=("$1" "$2"); shift 2 ;;
    --timeline|--duplex) ARGS+=("$1"); shift ;;
    *) echo "torch_backend: unknown option $1" >&2; exit 2 ;;
  esac
done
PYTHONPATH="$(dirname "$KILN")/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
BENCH="$ROOT/bench/torch_backend.py"

if [ "$ONLY" != ddp ]; then
  echo "# 2 local ranks: kiln launch -n 2 -- $PYTHON bench/torch_backend.py --mode local ${ARGS[*]}" >&2
  "$KILN" launch -n 2 -- "$PYTHON" "$BENCH" --mode local "${ARGS[@]}" 2>&1 | grep -o '{"what".*' || {
    echo "torch_backend: the local run failed" >&2; exit 1; }
fi
[ "$ONLY" = local ] && exit 0

# The two namespaces, the shaped veth and the rank environment come from
# bench/ddp_overlap.sh (one place for the link every DDP benchmark uses).
case "$RATE" in  # bytes per second, for --timeline's floor
  *gbit) ARGS+=(--link-bytes-per-s "$((${RATE%gbit} * 125000000))") ;;
  *mbit) ARGS+=(--link-bytes-per-s "$((${RATE%mbit} * 125000))") ;;
esac
CONGESTION_ENV=()
case "$CONGESTION" in
  shipped) ;;
  system) CONGESTION_ENV=(KILN_TCP_CONGESTION=system) ;;
  *)
    SHIM="$(dirname "$KILN")/tcp_congestion_shim.so"
    if [ ! -e "$SHIM" ] || [ "$ROOT/bench/tcp_congestion_shim.c" -nt "$SHIM" ]; then
      cc -O2 -Wall -Wextra -shared -fPIC -o "$SHIM" "$ROOT/bench/tcp_congestion_shim.c" -ldl ||
        { echo "torch_backend: cannot build bench/tcp_congestion_shim.c" >&2; exit 1; }
    fi
    CONGESTION_ENV=(KILN_TCP_CONGESTION="$CONGESTION" KILN_SHIM_CONGESTION="$CONGESTION" LD_PRELOAD="$SHIM") ;;
esac
printf -v PY_CMD '%q ' env "${CONGESTION_ENV[@]}" "$PYTHON" "$BENCH" --mode ddp "${ARGS[@]}"
echo "# DDP across two namespaces (${RATE}, congestion control: $CONGESTION): bench/torch_backend.py --mode ddp ${ARGS[*]}" >&2
"$ROOT/bench/ddp_overlap.sh" --rate "$RATE" --kiln "$KILN" --exec "$PY_CMD"
