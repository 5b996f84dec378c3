# The scratch directory a scenario test works in (sourced):
#   source "$ROOT/tests/lib/scratch.sh"
#   scratch NAME [STOP]
# Sets WORK to a fresh directory under $TMPDIR. At exit, runs the function
# STOP if given (to stop what the test started; errors in it are ignored),
# then removes WORK if the test passed or skipped (exit 77), or keeps it and
# says where if it failed: a failed run's logs outlive it.
# Also defines `fail MESSAGE...` (prints "NAME: MESSAGE", exits 1); a test
# that wants more (a log's tail) defines its own after sourcing this.

scratch() {
  SCRATCH_NAME=$1
  SCRATCH_STOP=${2:-}
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-$1-$$-XXXXXX")
  trap scratch_exit EXIT
  trap 'exit 130' INT TERM
}

scratch_exit() {
  local rc=$?
  if [ -n "$SCRATCH_STOP" ]; then "$SCRATCH_STOP" || true; fi
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
    echo "$SCRATCH_NAME: logs kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}

fail() { echo "$SCRATCH_NAME: $*" >&2; exit 1; }
