#!/usr/bin/env bash
# kiln serve end to end on the CNN: a checkpoint kiln train wrote answers
# test images with their class; malformed requests get 400; a second
# replica finds the weights in the node cache; an overloaded queue answers
# 503 + Retry-After; SIGTERM under load answers every accepted request and
# exits 0. Real processes on loopback, ports chosen by the kernel.
source "$(dirname "$0")/lib.sh"
serve_cnn_test_begin cnn "$1" 200
trained=$(grep -o 'eval_accuracy [0-9.]*' "$WORK/train.out" | awk '{print $2}')
echo "trained: eval_accuracy $trained"

# 1. Cold start: the first replica downloads into the node cache.
start_replica a "$WORK/ckpt" --cache-dir "$WORK/cache" --max-queue-delay-us 1000
wait_until 60 ready "$PORT_a" || { cat "$WORK/a.out"; fail "replica a never became ready"; }
grep -q "ready: cnn step 200" "$WORK/a.out" || fail "replica a did not serve step 200: $(cat "$WORK/a.out")"
metric_is "$PORT_a" kiln_serve_weight_cache_hit 0 || fail "the first replica reports a cache hit"

# 2. The right class: the served answers agree with the labels about as
# often as kiln train's own evaluation said (chance is 0.1).
correct=0; n=40
curl -sf -XPOST "http://127.0.0.1:$PORT_a/v1/predict" -d "$(image_json 0)" > "$WORK/first.json"
for i in $(seq 0 $((n - 1))); do
  cls=$(curl -sf -XPOST "http://127.0.0.1:$PORT_a/v1/predict" -d "$(image_json "$i")" | jq .class)
  [ "$cls" = "$(label "$i")" ] && correct=$((correct + 1))
done
echo "served: $correct/$n test images right"
awk -v c="$correct" -v n="$n" -v t="$trained" 'BEGIN{exit !(c / n >= t - 0.2 && c / n >= 0.5)}' ||
  fail "served accuracy $correct/$n is far below the trained model's $trained"

# 3. Malformed requests: 400 naming the problem.
for body in '{not json' '{"image": [1, 2]}' '{"pixels": []}'; do
  code=$(curl -s -o "$WORK/err.json" -w '%{http_code}' -XPOST "http://127.0.0.1:$PORT_a/v1/predict" -d "$body")
  [ "$code" = 400 ] || fail "'$body' got $code, expected 400"
  jq -e '.error | length > 0' "$WORK/err.json" > /dev/null || fail "'$body': no error message"
done

# 4. A second replica on the node: a cache hit, no download.
start_replica b "$WORK/ckpt" --cache-dir "$WORK/cache" --max-batch 64 --max-queue 4 \
  --max-queue-delay-us 30000000
wait_until 60 ready "$PORT_b" || fail "replica b never became ready"
grep -q "node cache hit" "$WORK/b.out" || fail "replica b downloaded again: $(cat "$WORK/b.out")"
metric_is "$PORT_b" kiln_serve_weight_cache_hit 1 || fail "replica b does not export its cache hit"
metric_at_least "$PORT_b" kiln_serve_cold_start_seconds 0 || fail "no cold-start metric"

# 5. Overload: 4 requests wait for a batch of 64 (30 s delay); the 5th is
# over --max-queue and gets 503 with Retry-After at once.
img=$(image_json 0)
for i in 1 2 3 4; do
  curl -s -o "$WORK/q$i.json" -w '%{http_code}' -XPOST "http://127.0.0.1:$PORT_b/v1/predict" -d "$img" > "$WORK/q$i.code" &
done
wait_until 30 metric_is "$PORT_b" kiln_serve_queue_length 4 || fail "4 requests never queued"
curl -s -D "$WORK/over.h" -o /dev/null -XPOST "http://127.0.0.1:$PORT_b/v1/predict" -d "$img"
grep -q "^HTTP/1.1 503" "$WORK/over.h" || fail "over the bound: $(head -1 "$WORK/over.h")"
grep -qi "^Retry-After: 1" "$WORK/over.h" || fail "503 without Retry-After"

# 6. SIGTERM under load: the queued requests are answered (not after the
# 30 s delay: a drain flushes), the replica exits 0.
kill -TERM "$PID_b"
wait "$PID_b" || fail "replica b exited $? after SIGTERM"
for i in 1 2 3 4; do
  [ "$(cat "$WORK/q$i.code")" = 200 ] || fail "queued request $i got $(cat "$WORK/q$i.code") after the drain"
done
grep -q "drained: 4 requests answered" "$WORK/b.out" || fail "$(tail -3 "$WORK/b.out")"

# 7. SIGTERM with 32 requests in flight on replica a (batches of 8 wait up
# to 2 s to fill): every one answered 200.
kill -TERM "$PID_a"; wait "$PID_a" || fail "replica a exited $?"
start_replica c "$WORK/ckpt" --cache-dir "$WORK/cache" --max-batch 64 --max-queue-delay-us 5000000
wait_until 60 ready "$PORT_c" || fail "replica c never became ready"
for i in $(seq 1 32); do
  curl -s -o /dev/null -w '%{http_code}\n' -XPOST "http://127.0.0.1:$PORT_c/v1/predict" -d "$img" > "$WORK/l$i.code" &
done
wait_until 30 metric_is "$PORT_c" kiln_serve_in_flight 32 || fail "32 requests never in flight"
kill -TERM "$PID_c"
wait "$PID_c" || fail "replica c exited $? after SIGTERM"
wait
ok=$(cat "$WORK"/l*.code | grep -c '^200$' || true)
[ "$ok" = 32 ] || fail "SIGTERM under load: $ok of 32 answered 200"

# 8. A byte of the cached weights flipped after caching (Note [Verified
# stamp]): the next replica names the file, discards the cached copy,
# downloads it again and serves the right class.
shard=$(ls "$WORK"/cache/*-step-200/shard-*.bin | head -1)
at=$(( $(stat -c %s "$shard") / 2 ))
byte=$(od -An -tu1 -j "$at" -N 1 "$shard" | tr -d ' ')
printf "\\$(printf '%03o' $(( byte ^ 0x5a )))" | dd of="$shard" bs=1 seek="$at" conv=notrunc status=none
start_replica d "$WORK/ckpt" --cache-dir "$WORK/cache"
wait_until 60 ready "$PORT_d" || { cat "$WORK/d.out"; fail "replica d never became ready"; }
grep -q "$shard changed since they were verified at fetch" "$WORK/d.out" ||
  fail "replica d did not name the corrupt file: $(cat "$WORK/d.out")"
grep -q "node cache hit" "$WORK/d.out" && fail "replica d served the corrupt cached copy"
grep -q "weight cache: downloaded" "$WORK/d.out" || fail "replica d did not download again"
cls=$(curl -sf -XPOST "http://127.0.0.1:$PORT_d/v1/predict" -d "$(image_json 0)" | jq .class)
cls_a=$(jq .class "$WORK/first.json")
[ "$cls" = "$cls_a" ] || fail "replica d answers $cls for image 0, replica a answered $cls_a"
kill -TERM "$PID_d"; wait "$PID_d" || fail "replica d exited $?"
echo "PASS"
