#!/usr/bin/env bash
# kiln serve of the GPT decoder kiln train wrote: next-token logits, greedy
# generation consistent with them, requests of different lengths batched
# together answered exactly as alone (right padding under causal
# attention), and a GPT without --config refused with a reason.
source "$(dirname "$0")/lib.sh"
serve_test_begin gpt "$1"
[ -f /usr/share/games/fortunes/science ] || { echo "fortunes not installed"; exit 77; }

"$KILN" data convert text "$WORK/data" /usr/share/games/fortunes/science --seq-len 32 \
  > "$WORK/convert.out" 2>&1 || { cat "$WORK/convert.out"; fail "kiln data convert"; }
sed "s|DATA_DIR|$WORK/data|" "$TESTS/serve/tiny_gpt.toml" > "$WORK/gpt.toml"
"$KILN" train "$WORK/gpt.toml" --ckpt-dir "$WORK/ckpt" --no-progress > "$WORK/train.out" 2>&1 ||
  { tail "$WORK/train.out"; fail "kiln train"; }

# Without the config: refused, naming what is missing.
if "$KILN" serve "$WORK/ckpt" --cache-dir "$WORK/cache" > "$WORK/noconf.out" 2>&1; then
  fail "a GPT served without --config"
fi
grep -q "heads" "$WORK/noconf.out" || fail "the refusal does not say why: $(cat "$WORK/noconf.out")"

# A batch window of 300 ms so that concurrent requests share a forward pass.
start_replica g "$WORK/ckpt" --config "$WORK/gpt.toml" --cache-dir "$WORK/cache" \
  --max-batch 8 --max-queue-delay-us 300000
wait_until 60 ready "$PORT_g" || fail "never ready: $(cat "$WORK/g.out")"
post() { curl -sf -XPOST "http://127.0.0.1:$PORT_g/v1/predict" -d "$1"; }

post '{"text": "The speed of light"}' > "$WORK/logits.json"
[ "$(jq '.logits | length' "$WORK/logits.json")" = 256 ] || fail "not 256 logits: $(head -c 300 "$WORK/logits.json")"
next=$(jq '.next_token' "$WORK/logits.json")
argmax=$(jq '.logits | to_entries | max_by(.value) | .key' "$WORK/logits.json")
[ "$next" = "$argmax" ] || fail "next_token $next is not the argmax $argmax"

post '{"text": "The speed of light", "max_new_tokens": 6}' > "$WORK/gen.json"
[ "$(jq '.tokens | length' "$WORK/gen.json")" = 6 ] || fail "not 6 tokens: $(cat "$WORK/gen.json")"
[ "$(jq '.tokens[0]' "$WORK/gen.json")" = "$next" ] || fail "greedy's first token is not next_token"
jq -e '.text | type == "string"' "$WORK/gen.json" > /dev/null || fail "no text"

# Batched together (one 300 ms window) vs alone: the same tokens.
post '{"tokens": [72, 105], "max_new_tokens": 5}' > "$WORK/short.alone"
post '{"text": "A much longer prompt than the other one", "max_new_tokens": 5}' > "$WORK/long.alone"
post '{"tokens": [72, 105], "max_new_tokens": 5}' > "$WORK/short.batched" &
a=$!
post '{"text": "A much longer prompt than the other one", "max_new_tokens": 5}' > "$WORK/long.batched" &
b=$!
wait "$a" "$b"
for r in short long; do
  [ "$(jq -c .tokens "$WORK/$r.alone")" = "$(jq -c .tokens "$WORK/$r.batched")" ] ||
    fail "$r prompt: batched $(jq -c .tokens "$WORK/$r.batched") vs alone $(jq -c .tokens "$WORK/$r.alone")"
done
# Every earlier request ran alone; the last two shared one batch.
[ "$(metric "$PORT_g" kiln_serve_batch_size_sum)" = "$(( $(metric "$PORT_g" kiln_serve_batch_size_count) + 1 ))" ] ||
  fail "the two prompts did not share one batch: $(curl -s "http://127.0.0.1:$PORT_g/metrics" | grep batch_size_)"

code=$(curl -s -o /dev/null -w '%{http_code}' -XPOST "http://127.0.0.1:$PORT_g/v1/predict" -d '{"tokens": [300]}')
[ "$code" = 400 ] || fail "a token outside the vocabulary got $code"
kill -TERM "$PID_g"; wait "$PID_g" || fail "exit $? after SIGTERM"
echo "PASS"
