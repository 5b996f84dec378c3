#!/usr/bin/env bash
# make demo's last step: `kiln serve` the CNN the demo just trained, ask it
# for the class of the first 100 Fashion-MNIST test images over HTTP, and
# stop it with SIGTERM (a graceful drain, exit 0). The answers must agree
# with the labels about as often as training's own evaluation (>= 0.90
# there; 0.80 here leaves room for 100 images' sampling noise).
#   scripts/demo-serve.sh KILN CKPT_DIR
source "$(dirname "$0")/../tests/serve/lib.sh"
CKPT=$(realpath "$2")  # before serve_test_begin moves into its scratch directory
serve_test_begin demo "$1"
[ -f "$IMAGES" ] || fail "dataset-fashion-mnist is not installed ($IMAGES)"
start_replica demo "$CKPT"
wait_until 60 ready "$PORT_demo" || { cat "$WORK/demo.out"; fail "kiln serve $CKPT never became ready"; }
n=100 correct=0
for i in $(seq 0 $((n - 1))); do
  cls=$(curl -sf -XPOST "http://127.0.0.1:$PORT_demo/v1/predict" -d "$(image_json "$i")" | jq .class)
  [ "$cls" = "$(label "$i")" ] && correct=$((correct + 1))
done
kill -TERM "$PID_demo"
wait "$PID_demo" || fail "kiln serve exited $? after SIGTERM"
echo "demo: kiln serve $CKPT answered $correct of $n test images with their label's class"
[ "$correct" -ge 80 ] || fail "served accuracy $correct/$n, below 0.80"
