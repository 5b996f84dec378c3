#!/usr/bin/env bash
# The diagnosis table of issue 16: the Fashion-MNIST CNN
# (examples/train/fashion_mnist.toml) on 2 ranks under `kiln launch`, each
# scenario RUNS times (default 5), every verdict through `kiln diagnose --json`:
#   clean                 -> never straggler (compute or data, as the run is)
#   data-delay=60         -> data, every run
#   compute-spin=150@1    -> straggler naming rank 1, every run
# Prints one line per run and a table; exits 1 if a row misses its target.
# Ranks are not bound to cores (--bind none), as tests/diag/validate.sh.
#   bench/diag_verdicts.sh [--runs N] [--steps N] [--kiln PATH] [SCENARIO...]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN="$ROOT/build/kiln"
RUNS=5
STEPS=40
SCENARIOS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --kiln) KILN=$2; shift 2 ;;
    clean|data|straggler) SCENARIOS+=("$1"); shift ;;
    *) echo "diag_verdicts: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(clean data straggler)
WORK=$(mktemp -d /tmp/kiln-diag-verdicts-$$-XXXX)
cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then echo "diag_verdicts: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
# The example's data directory is relative; the dataset is converted once.
DATA=${KILN_DIAG_DATA:-/tmp/kiln-diag-fashion-mnist}
sed -e "s|^dir = \"data/fashion-mnist\"|dir = \"$DATA\"|" -e '/^\[checkpoint\]/,/^$/d' \
  "$ROOT/examples/train/fashion_mnist.toml" > "$WORK/fm.toml"

# one NAME [kiln train flags...]: prints "verdict rank"
one() {
  local name=$1; shift
  local dir=$WORK/$name
  rm -rf "$dir"
  "$KILN" launch -n 2 --bind none -- "$KILN" train "$WORK/fm.toml" --no-progress --no-resume \
    --max-steps "$STEPS" --trace-dir "$dir" --diag-every 10 "$@" > "$WORK/$name.log" 2>&1 ||
    { tail -20 "$WORK/$name.log" >&2; echo "diag_verdicts: $name: kiln train failed" >&2; exit 1; }
  "$KILN" diagnose "$dir" --json --skip 5 > "$WORK/$name.json"
  jq -r '"\(.verdict) \(.rank // -1) \(.ranking | map("\(.verdict)=\(.saves * 100 | floor)%") | join(","))"' \
    "$WORK/$name.json"
}

failed=0
TABLE=()
for s in "${SCENARIOS[@]}"; do
  case $s in
    clean) flags=(); target="never straggler" ;;
    data) flags=(--inject data-delay=60); target="data" ;;
    straggler) flags=(--inject compute-spin=150@1); target="straggler 1" ;;
  esac
  hits=0 verdicts=()
  for i in $(seq 1 "$RUNS"); do
    read -r verdict rank ranking < <(one "$s-$i" "${flags[@]}")
    echo "diag_verdicts: $s run $i: $verdict (rank $rank) ranking: ${ranking:-none}"
    met=0
    case $s in
      clean) if [ "$verdict" != straggler ]; then met=1; fi ;;
      data) if [ "$verdict" = data ]; then met=1; fi ;;
      straggler) if [ "$verdict" = straggler ] && [ "$rank" = 1 ]; then met=1; fi ;;
    esac
    hits=$((hits + met))
    if [ "$rank" -ge 0 ]; then verdicts+=("$verdict $rank"); else verdicts+=("$verdict"); fi
  done
  [ "$hits" -eq "$RUNS" ] || failed=1
  TABLE+=("$(printf '| %-22s | %-15s | %d/%d | %s |' "${flags[*]:-clean}" "$target" "$hits" "$RUNS" \
    "$(IFS=,; echo "${verdicts[*]}")")")
done
echo
echo "| run | target | met | verdicts |"
echo "|---|---|---|---|"
printf '%s\n' "${TABLE[@]}"
exit "$failed"
