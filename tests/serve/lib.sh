# Helpers shared by the serve end-to-end tests (sourced by each script).
set -euo pipefail
TESTS=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# serve_test_begin NAME KILN: sets $KILN and a fresh $WORK (removed at exit
# unless $KEEP is set; every background job killed), and cds into it.
serve_test_begin() {
  KILN=$(realpath "$2")
  WORK=$(mktemp -d "/tmp/kiln-serve-$1-$$-XXXX")
  trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
  cd "$WORK"
}

# wait_until TIMEOUT_S CMD...: polls CMD every 20 ms until it succeeds.
wait_until() {
  local timeout=$1; shift
  local end=$((SECONDS + timeout))
  until "$@" > /dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then echo "timed out after ${timeout}s waiting for: $*" >&2; return 1; fi
    sleep 0.02
  done
}

fail() { echo "FAIL: $*" >&2; exit 1; }

IMAGES=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
LABELS=/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

# image_json I: {"image": [...]} for test image I (IDX: 16-byte header, 784 bytes each).
image_json() {
  local px
  [ -f "$WORK/images.idx" ] || zcat "$IMAGES" > "$WORK/images.idx"
  px=$(od -An -tu1 -v -j $((16 + 784 * $1)) -N 784 "$WORK/images.idx" |
       tr -s ' \n' ',' | sed 's/^,//;s/,$//')
  echo "{\"image\": [$px]}"
}

# label I: the test label of image I (8-byte header).
label() {
  [ -f "$WORK/labels.idx" ] || zcat "$LABELS" > "$WORK/labels.idx"
  od -An -tu1 -j $((8 + $1)) -N 1 "$WORK/labels.idx" | tr -d ' '
}

# serve_cnn_test_begin NAME KILN STEPS: serve_test_begin, then the elastic
# tests' tiny CNN trained for STEPS steps into $WORK/ckpt (its log in
# $WORK/train.out). Exits 77 (skipped) without the Fashion-MNIST package.
serve_cnn_test_begin() {
  serve_test_begin "$1" "$2"
  [ -f "$IMAGES" ] || { echo "dataset-fashion-mnist not installed"; exit 77; }
  sed "s|DATA_DIR|$WORK/data|" "$TESTS/elastic/tiny_cnn.toml" > "$WORK/tiny.toml"
  "$KILN" train "$WORK/tiny.toml" --max-steps "$3" --ckpt-dir "$WORK/ckpt" --no-progress \
    > "$WORK/train.out" 2>&1 || { tail -20 "$WORK/train.out"; fail "kiln train"; }
}

# start_replica NAME ARGS...: `kiln serve ARGS` in the background; sets
# PID_<NAME> and PORT_<NAME> once it listens (output in $WORK/NAME.out).
start_replica() {
  local name=$1; shift
  "$KILN" serve "$@" > "$WORK/$name.out" 2>&1 &
  eval "PID_$name=$!"
  wait_until 60 grep -q "listening on" "$WORK/$name.out" || { cat "$WORK/$name.out"; fail "$name did not listen"; }
  eval "PORT_$name=$(grep -o 'listening on [0-9.]*:[0-9]*' "$WORK/$name.out" | head -1 | sed 's/.*://')"
}

ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ]; }

# metric PORT SERIES: the value of an unlabelled series on /metrics.
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v s="$2" '$1 == s {print $2}'; }
metric_is() { [ "$(metric "$1" "$2")" = "$3" ]; }
metric_at_least() { local v; v=$(metric "$1" "$2"); [ -n "$v" ] && awk -v v="$v" -v n="$3" 'BEGIN{exit !(v >= n)}'; }
