#!/usr/bin/env bash
# kiln serve --replicas: a router and autoscaled replica processes on
# loopback. Under load the fleet scales up (decision log), a replica
# SIGKILLed mid-load loses no request (the router retries its in-flight
# ones on another replica) and is replaced, the fleet scales down after the
# stabilization window once the load stops, and SIGTERM stops it with exit 0.
source "$(dirname "$0")/lib.sh"
serve_cnn_test_begin fleet "$1" 20
LOG=$WORK/decisions.jsonl
"$KILN" serve "$WORK/ckpt" --cache-dir "$WORK/cache" --replicas 1:3 --target-queue 1 \
  --sync-period-ms 200 --scale-down-window-s 20 --rate-period-s 1 --decision-log "$LOG" \
  > "$WORK/fleet.out" 2>&1 &
FLEET=$!
wait_until 60 grep -q "listening on" "$WORK/fleet.out" || { cat "$WORK/fleet.out"; fail "no router"; }
PORT=$(grep -o 'listening on [0-9.]*:[0-9]*' "$WORK/fleet.out" | head -1 | sed 's/.*://')
image_json 0 > "$WORK/img.json"

ready_replicas() { [ "$(jq -s '[.[] | select(.event == "ready")] | length' "$LOG")" -ge "$1" ]; }
wait_until 90 ready_replicas 1 || fail "the first replica never became ready: $(tail "$WORK/fleet.out")"

# Load: 12 clients in closed loops (a queue of several against a target of 1 per replica).
# The scale-down window (20 s) outlasts a replica's start on a busy host.
echo 1 > "$WORK/load.on"
LOADERS=()
for j in $(seq 1 12); do
  ( while [ -f "$WORK/load.on" ]; do
      curl -s -o /dev/null -w '%{http_code}\n' -XPOST "http://127.0.0.1:$PORT/v1/predict" -d @"$WORK/img.json"
    done > "$WORK/codes.$j" ) &
  LOADERS+=($!)
done
scaled_up() { jq -e -s '[.[] | select(.desired != null and .desired > .current)] | length > 0' "$LOG"; }
wait_until 60 scaled_up || fail "no scale-up decision under load"
wait_until 180 ready_replicas 2 || fail "a second replica never became ready"

# SIGKILL a replica that is serving: its in-flight requests are retried.
victim=$(pgrep -P "$FLEET" | head -1)
kill -KILL "$victim"
died() { jq -e -s '[.[] | select(.event == "replica died")] | length > 0' "$LOG"; }
wait_until 30 died || fail "the fleet did not notice replica pid $victim died"
wait_until 180 ready_replicas 3 || fail "the dead replica was not replaced"
sleep 1  # more load on the replaced fleet (not a synchronization)
rm "$WORK/load.on"
wait "${LOADERS[@]}"

total=$(cat "$WORK"/codes.* | wc -l)
ok=$(cat "$WORK"/codes.* | grep -c '^200$' || true)
echo "load: $ok/$total answered 200"
[ "$total" -gt 50 ] || fail "too little load ran ($total requests)"
[ "$ok" = "$total" ] || fail "requests lost or failed: $(sort "$WORK"/codes.* | uniq -c | tr '\n' ' ')"

scaled_down() { jq -e -s '[.[] | select(.desired != null and .desired < .current)] | length > 0' "$LOG"; }
wait_until 90 scaled_down || fail "no scale-down after the load stopped"
jq -e -s 'all(.[] | select(.desired != null); has("time") and has("metric") and has("value") and has("current") and has("reason"))' "$LOG" > /dev/null ||
  fail "a decision line lacks a field"
kill -TERM "$FLEET"
wait "$FLEET" || fail "the fleet exited $? after SIGTERM"
grep -q "fleet stopped" "$WORK/fleet.out" || fail "$(tail -3 "$WORK/fleet.out")"
echo "PASS"
