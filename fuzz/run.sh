#!/usr/bin/env bash
# fuzz/run.sh BUILD_DIR [TARGET...]: runs each libFuzzer target of BUILD_DIR
# (the libFuzzer build, `cmake -S fuzz`; `make fuzz` does it) for FUZZ_SECONDS,
# starting from its seeds (fuzz/corpus/NAME) and kept findings
# (fuzz/regressions/NAME). New coverage accumulates in BUILD_DIR/fuzz-corpus/NAME;
# a crash, leak, sanitizer report or hang (> FUZZ_TIMEOUT s for one input)
# stops the target, leaves the input in BUILD_DIR/fuzz-findings/ and fails.
# Fix it, then copy the input to fuzz/regressions/NAME/ so every build replays it.
set -euo pipefail
BUILD=${1:?usage: fuzz/run.sh BUILD_DIR [TARGET...]}
shift
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SECONDS_EACH=${FUZZ_SECONDS:-60}
TIMEOUT=${FUZZ_TIMEOUT:-10}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in "$HERE"/*_fuzz.cc; do t=$(basename "$f" _fuzz.cc); targets+=("$t"); done
fi
mkdir -p "$BUILD/fuzz-findings"
failed=()
for t in "${targets[@]}"; do
  bin="$BUILD/fuzz_$t"
  [ -x "$bin" ] || { echo "fuzz: $bin is not built (make fuzz)" >&2; exit 2; }
  work="$BUILD/fuzz-corpus/$t"
  mkdir -p "$work"
  seeds=("$HERE/corpus/$t")
  [ -d "$HERE/regressions/$t" ] && seeds+=("$HERE/regressions/$t")
  echo "fuzz: $t for ${SECONDS_EACH}s"
  start=$(date +%s)
  if "$bin" -max_total_time="$SECONDS_EACH" -timeout="$TIMEOUT" -rss_limit_mb=2048 \
       -max_len=16384 -print_final_stats=1 \
       -artifact_prefix="$BUILD/fuzz-findings/$t-" "$work" "${seeds[@]}" \
       > "$BUILD/fuzz-findings/$t.log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$BUILD/fuzz-findings/$t.log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz: $t ok: $((  $(date +%s) - start ))s, $runs runs, corpus $(ls "$work" | wc -l) files"
  else
    echo "fuzz: $t FAILED (log: $BUILD/fuzz-findings/$t.log)" >&2
    grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error|.*CHECK failed|artifact_prefix|Test unit written)' \
      "$BUILD/fuzz-findings/$t.log" | head -20 >&2 || true
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings in ${failed[*]}" >&2
  exit 1
fi
