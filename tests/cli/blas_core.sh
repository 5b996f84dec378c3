#!/usr/bin/env bash
# Note [OpenBLAS on CPUs it does not know] (kiln/base/blas_kernel.h), end to
# end: with no OPENBLAS_CORETYPE in the environment, the workers `kiln
# launch` starts get the core type `kiln env` says Kiln switches to (none
# where OpenBLAS knows the CPU), and OpenBLAS really runs it; a core type the
# user set is left alone; KILN_BLAS_CORE_FIX=0 turns the switch off.
#   tests/cli/blas_core.sh path/to/kiln
set -euo pipefail
KILN=$1
fail() { echo "blas_core: FAIL: $*" >&2; exit 1; }

line=$(env -u OPENBLAS_CORETYPE "$KILN" env | grep '^blas:') || fail "kiln env printed no blas: line"
echo "$line"
case "$line" in
  "blas: not OpenBLAS") echo "blas_core: LibTorch does not use OpenBLAS here; nothing to check"; exit 77 ;;
esac
expected=$(echo "$line" | sed -n 's/.*switch to OPENBLAS_CORETYPE=\([A-Za-z0-9]*\)$/\1/p')
detected=$(echo "$line" | sed -n 's/^blas: OpenBLAS core \([A-Za-z0-9]*\).*/\1/p')
[ -n "$detected" ] || fail "cannot read the core from: $line"

# What a worker of `kiln launch` sees in its environment.
child=$(env -u OPENBLAS_CORETYPE "$KILN" launch -n 1 -- /bin/sh -c 'echo "coretype=${OPENBLAS_CORETYPE:-}"' 2>/dev/null |
        grep -o 'coretype=[A-Za-z0-9]*' | cut -d= -f2)
[ "$child" = "$expected" ] || fail "worker got OPENBLAS_CORETYPE='$child', expected '$expected'"

if [ -n "$expected" ]; then
  # OpenBLAS honours the forced core type: kiln env run with it reports it.
  forced=$(OPENBLAS_CORETYPE=$expected "$KILN" env | grep '^blas:')
  [ "$forced" = "blas: OpenBLAS core $expected" ] || fail "with OPENBLAS_CORETYPE=$expected: $forced"
  # Off switch.
  off=$(env -u OPENBLAS_CORETYPE KILN_BLAS_CORE_FIX=0 "$KILN" launch -n 1 -- \
        /bin/sh -c 'echo "coretype=${OPENBLAS_CORETYPE:-}"' 2>/dev/null | grep -o 'coretype=[A-Za-z0-9]*' | cut -d= -f2)
  [ -z "$off" ] || fail "KILN_BLAS_CORE_FIX=0 still set OPENBLAS_CORETYPE=$off"
fi
# The user's choice wins.
mine=$(OPENBLAS_CORETYPE=Haswell "$KILN" launch -n 1 -- /bin/sh -c 'echo "coretype=${OPENBLAS_CORETYPE:-}"' 2>/dev/null |
       grep -o 'coretype=[A-Za-z0-9]*' | cut -d= -f2)
[ "$mine" = Haswell ] || fail "a user's OPENBLAS_CORETYPE=Haswell became '$mine'"
echo "blas_core: ok (detected $detected, workers get '${expected:-unchanged}')"
