#!/usr/bin/env bash
# `kiln bench serve` removes its scratch directory ($TMPDIR/kiln-bench-serve-PID)
# when a part fails: here the cold part, whose replica cannot load a model
# that is not a checkpoint. TMPDIR points at a directory of this test's own,
# so once the bench exits that directory must be empty.
source "$(dirname "$0")/lib.sh"
serve_test_begin bench-cleanup "$1"
mkdir "$WORK/not-a-checkpoint" "$WORK/tmp"
echo "junk" > "$WORK/not-a-checkpoint/README"
rc=0
TMPDIR="$WORK/tmp" "$KILN" bench serve --parts cold --runs 1 --model "$WORK/not-a-checkpoint" \
  > "$WORK/bench.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "the bench succeeded on a directory that is not a checkpoint: $(cat "$WORK/bench.out")"
# The failure came from the cold part, after the bench made its scratch
# directory (else the check below proves nothing).
grep -q "not-a-checkpoint" "$WORK/bench.out" ||
  fail "the bench failed before its cold part: $(cat "$WORK/bench.out")"
left=$(ls -A "$WORK/tmp")
[ -z "$left" ] || fail "the failed bench left $WORK/tmp/$left behind"
echo "PASS: the failed bench (exit $rc) removed its scratch directory"
