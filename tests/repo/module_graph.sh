#!/usr/bin/env bash
# The storage floor (issue 19): kiln_ckpt and kiln_data both stand on
# kiln_objstore and on neither each other; kiln_objstore stands on neither.
# Checked in the sources (#include) and in the libraries each links.
set -euo pipefail
top=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$top"
fail=0
# No source under $1 includes a header of module $2.
no_include() {
  local hits
  hits=$(grep -rnE "#include \"kiln/$2/" "kiln/$1" || true)
  if [ -n "$hits" ]; then
    echo "module_graph: kiln/$1 includes kiln/$2:" >&2
    echo "$hits" >&2
    fail=1
  fi
}
# The libraries target $2 links, as kiln/$1/CMakeLists.txt names them
# (comments dropped).
links_of() {
  sed 's/#.*//' "kiln/$1/CMakeLists.txt" |
    awk -v t="$2" '$0 ~ "target_link_libraries\\(" t "( |$)" {on=1} on {print} on && /\)/ {exit}'
}
for pair in "ckpt data" "data ckpt" "objstore ckpt" "objstore data"; do
  no_include $pair
done
for m in ckpt data; do
  links=$(links_of "$m" "kiln_$m")
  grep -qw kiln_objstore <<<"$links" || { echo "module_graph: kiln_$m does not link kiln_objstore" >&2; fail=1; }
  other=$([ $m = ckpt ] && echo data || echo ckpt)
  if grep -qw "kiln_$other" <<<"$links"; then
    echo "module_graph: kiln_$m links kiln_$other" >&2
    fail=1
  fi
done
if grep -qwE "kiln_(ckpt|data)" <<<"$(links_of objstore kiln_objstore)"; then
  echo "module_graph: kiln_objstore links kiln_ckpt or kiln_data" >&2
  fail=1
fi
[ $fail = 0 ] && echo "module_graph: ckpt and data both on objstore, neither on the other"
exit $fail
