#!/usr/bin/env bash
# `kiln bench serve` removes its scratch directory (/tmp/kiln-bench-serve-PID)
# when a part fails: here the cold part, whose replica cannot load a model
# that is not a checkpoint.
source "$(dirname "$0")/lib.sh"
serve_test_begin bench-cleanup "$1"
mkdir "$WORK/not-a-checkpoint"
echo "junk" > "$WORK/not-a-checkpoint/README"
"$KILN" bench serve --parts cold --runs 1 --model "$WORK/not-a-checkpoint" > "$WORK/bench.out" 2>&1 &
pid=$!
# The bench made its directory (else the check below proves nothing).
wait_until 60 test -d "/tmp/kiln-bench-serve-$pid" ||
  fail "the bench never made /tmp/kiln-bench-serve-$pid: $(cat "$WORK/bench.out")"
rc=0
wait "$pid" || rc=$?
[ "$rc" -ne 0 ] || fail "the bench succeeded on a directory that is not a checkpoint: $(cat "$WORK/bench.out")"
[ ! -e "/tmp/kiln-bench-serve-$pid" ] || {
  rm -rf "/tmp/kiln-bench-serve-$pid"
  fail "the failed bench left /tmp/kiln-bench-serve-$pid behind"
}
echo "PASS: the failed bench (exit $rc) removed /tmp/kiln-bench-serve-$pid"
