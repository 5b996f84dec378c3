# Helpers shared by the serve end-to-end tests (sourced). Needs $KILN and $WORK.

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

# train_tiny_cnn DIR STEPS: trains the elastic tests' tiny CNN into DIR/ckpt.
train_tiny_cnn() {
  sed "s|DATA_DIR|$1/data|" "$TESTS/elastic/tiny_cnn.toml" > "$1/tiny.toml"
  "$KILN" train "$1/tiny.toml" --max-steps "$2" --ckpt-dir "$1/ckpt" --no-progress > "$1/train.out" 2>&1 ||
    { tail -20 "$1/train.out"; fail "kiln train"; }
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
