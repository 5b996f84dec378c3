#!/usr/bin/env bash
# kiln diagnose --html renders in a real browser: a short one-rank run with
# --trace-dir (and --metrics-port, scraped once with curl while it trains),
# its report opened in headless Chromium twice, once to dump
# the DOM after the page's script ran (every chart marks itself drawn, with
# its position) and once to take a screenshot, whose pixels must be drawn
# (not background) inside each chart's area. Exits 77 (skip) without Chromium.
#   tests/diag/html_render.sh PATH/TO/kiln
set -euo pipefail
KILN=$1
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
[ -n "$CHROMIUM" ] || { echo "html_render: chromium not installed; skipping"; exit 77; }
WORK=$(mktemp -d)
cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then echo "html_render: files kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
sed "s|DATA_DIR|$WORK/data|" "$(dirname "${BASH_SOURCE[0]}")/tiny.toml" > "$WORK/tiny.toml"
# The same run serves /metrics (any free port): one real scrape while it trains.
"$KILN" train "$WORK/tiny.toml" --no-progress --max-steps 60 --trace-dir "$WORK/trace" \
  --diag-every 10 --metrics-port 0 > "$WORK/train.log" 2>&1 &
TRAIN=$!
port=
for _ in $(seq 1 600); do  # up to 30 s for start-up (the dataset is converted first)
  port=$(grep -o 'serving Prometheus text on port [0-9]*' "$WORK/train.log" | grep -o '[0-9]*$' || true)
  [ -n "$port" ] && break
  kill -0 "$TRAIN" 2>/dev/null || break
  sleep 0.05
done
[ -n "$port" ] || { cat "$WORK/train.log" >&2; echo "html_render: no metrics port logged" >&2; exit 1; }
curl -sf --max-time 10 "http://127.0.0.1:$port/metrics" > "$WORK/metrics.txt" ||
  { echo "html_render: GET /metrics on port $port failed" >&2; exit 1; }
wait "$TRAIN" || { cat "$WORK/train.log" >&2; exit 1; }
for series in kiln_step_seconds kiln_phase_seconds kiln_samples_per_second \
    kiln_comm_bandwidth_bytes_per_second kiln_loader_wait_seconds kiln_checkpoint_stall_seconds; do
  grep -q "^$series{rank=\"0\"" "$WORK/metrics.txt" ||
    { cat "$WORK/metrics.txt" >&2; echo "html_render: /metrics lacks $series" >&2; exit 1; }
done
"$KILN" diagnose "$WORK/trace" --skip 2 --html "$WORK/report.html" > "$WORK/diagnose.txt"
grep -q "bottleneck: " "$WORK/diagnose.txt"

# No network: the page must not reference anything outside itself.
if grep -Eq '(src|href)="(https?:)?//' "$WORK/report.html"; then
  echo "html_render: the report loads external resources" >&2; exit 1
fi
browser() {
  timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run \
    --disable-dev-shm-usage --user-data-dir="$WORK/profile" --window-size=900,1600 \
    --hide-scrollbars "$@" 2> "$WORK/chromium.err"
}
browser --dump-dom "file://$WORK/report.html" > "$WORK/dom.html"
grep -q 'data-charts="3"' "$WORK/dom.html" || { echo "html_render: the page did not draw 3 charts" >&2; exit 1; }
browser --screenshot="$WORK/shot.png" "file://$WORK/report.html" > /dev/null
python3 "$(dirname "${BASH_SOURCE[0]}")/check_screenshot.py" "$WORK/dom.html" "$WORK/shot.png"
echo "html_render: ok"
