#!/usr/bin/env bash
# kiln diagnose --html renders in a real browser: a short one-rank run with
# --trace-dir, its report opened in headless Chromium twice, once to dump
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
"$KILN" train "$WORK/tiny.toml" --no-progress --max-steps 20 --trace-dir "$WORK/trace" \
  --diag-every 10 > "$WORK/train.log" 2>&1 || { cat "$WORK/train.log" >&2; exit 1; }
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
