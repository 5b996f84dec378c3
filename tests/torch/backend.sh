#!/usr/bin/env bash
# The kiln_torch backend with real PyTorch (tests/torch/*.py):
#   ops      every op x dtype against gloo in the same run, on 2 and 3 ranks,
#            and on 2 ranks over TCP (KILN_TORCH_DUPLEX=1);
#   ddp      PyTorch DDP ends with the same parameters under kiln and gloo,
#            with init_process_group("kiln") under kiln launch, kiln run
#            and torchrun, and over TCP;
#   failure  a SIGKILLed and a SIGSTOPped rank: the survivors raise within
#            the timeout (5 s); the one that saw it names rank 2.
#   tests/torch/backend.sh PATH/TO/kiln PYTHON MODULE_DIR SCENARIO...
set -euo pipefail
KILN=$1 PYTHON=$2 MODULE_DIR=$3; shift 3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHONPATH="$MODULE_DIR${PYTHONPATH:+:$PYTHONPATH}"
# One BLAS thread everywhere: the same float sums whichever launcher binds cores.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
source "$(dirname "${BASH_SOURCE[0]}")/../lib/scratch.sh"
scratch backend
fail() { echo "backend $1: $2" >&2; tail -40 "$WORK/$1.log" >&2; exit 1; }
# every_rank LOG N PATTERN: ranks 0..N-1 each printed PATTERN rank=R.
every_rank() {
  for ((r = 0; r < $2; r++)); do
    grep -q "$3 rank=$r " "$WORK/$1.log" || fail "$1" "rank $r did not print \"$3\""
  done
}
"$PYTHON" -c "import kiln_torch" || { echo "backend: kiln_torch does not import from $MODULE_DIR" >&2; exit 1; }

for scenario in "$@"; do
  case "$scenario" in
    ops)
      for n in 2 3; do
        timeout 240 "$KILN" launch -n $n -- "$PYTHON" "$HERE/backend_ops.py" > "$WORK/ops$n.log" 2>&1 ||
          fail ops$n "kiln launch -n $n failed"
        every_rank ops$n $n "backend-ops ok"
      done
      # Two ranks over TCP, KILN_TORCH_DUPLEX=1: large allreduces take the duplex path.
      KILN_TRANSPORT=tcp KILN_TORCH_DUPLEX=1 timeout 240 "$KILN" launch -n 2 -- "$PYTHON" "$HERE/backend_ops.py" \
        > "$WORK/ops2tcp.log" 2>&1 || fail ops2tcp "kiln launch -n 2 over tcp failed"
      every_rank ops2tcp 2 "backend-ops ok" ;;
    ddp)
      timeout 180 "$KILN" launch -n 2 -- "$PYTHON" "$HERE/ddp_parity.py" > "$WORK/ddp_launch.log" 2>&1 ||
        fail ddp_launch "kiln launch failed"
      every_rank ddp_launch 2 "ddp-parity ok"
      timeout 180 "$KILN" run -n 2 --rdzv-id ddp -- "$PYTHON" "$HERE/ddp_parity.py" --default gloo \
        > "$WORK/ddp_run.log" 2>&1 || fail ddp_run "kiln run failed"
      every_rank ddp_run 2 "ddp-parity ok"
      # torchrun (Debian's, 1.13): its own store and agent.
      timeout 180 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2 \
        --redirects 1 --tee 1 --log_dir "$WORK/torchrun" "$HERE/ddp_parity.py" \
        > "$WORK/ddp_torchrun.log" 2>&1 || fail ddp_torchrun "torchrun failed"
      every_rank ddp_torchrun 2 "ddp-parity ok"
      # Over TCP with KILN_TORCH_DUPLEX=1, two ranks allreduce DDP's
      # buckets as one stream per direction (python/kiln_torch/duplex.h).
      KILN_TRANSPORT=tcp KILN_TORCH_DUPLEX=1 timeout 180 "$KILN" launch -n 2 -- "$PYTHON" "$HERE/ddp_parity.py" \
        > "$WORK/ddp_tcp.log" 2>&1 || fail ddp_tcp "kiln launch over tcp failed"
      every_rank ddp_tcp 2 "ddp-parity ok"
      # The same parameters whoever launched, over either transport.
      digests=$(grep -ho "digest=[^ ]*" "$WORK"/ddp_*.log | sort -u | wc -l)
      [ "$digests" = 1 ] || fail ddp_torchrun "launchers ended with different parameters" ;;
    failure)
      for fault in kill stop; do
        # The survivors exit 3 once they raised; --grace then ends the stopped rank.
        FAULT=$fault TIMEOUT_S=5 timeout 120 "$KILN" launch -n 3 --grace 2 -- \
          "$PYTHON" "$HERE/peer_failure.py" > "$WORK/$fault.log" 2>&1 && fail $fault "kiln launch succeeded"
        for r in 0 1; do
          line=$(grep "^\[rank $r\] peer-failure raised after" "$WORK/$fault.log") ||
            fail $fault "rank $r did not raise"
          secs=$(sed -E 's/.*raised after ([0-9.]+) s.*/\1/' <<< "$line")
          # kill: at once; stop: when the 5 s timeout passes (plus scheduling).
          awk -v s="$secs" 'BEGIN { exit !(s < 9) }' || fail $fault "rank $r raised only after $secs s"
          # Each names the peer it waited on or that aborted the group; the
          # one that saw the fault names rank 2 (checked below).
          grep -qE "rank [0-9]+ \(|aborted the group" <<< "$line" ||
            fail $fault "rank $r's error names no peer: $line"
        done
        grep -q "peer-failure raised after .*rank 2 " "$WORK/$fault.log" || fail $fault "no survivor names rank 2"
      done ;;
    *) echo "backend: unknown scenario $scenario" >&2; exit 2 ;;
  esac
done
echo "backend: ok ($*)"
