#!/usr/bin/env bash
# An authenticated job, end to end (docs/security.md):
#  1. a 2-rank `kiln launch` training job listens on no wildcard address
#     (`ss -ltn`: store, metrics endpoint, transports), and a store client
#     without the job's token, or with a wrong one, is refused, logged with
#     its address, and the job trains on to the end;
#  2. a rogue `kiln run` agent that knows the rendezvous port but not the
#     token cannot join the round: the round forms without it.
#   tests/security/job_auth.sh PATH/TO/kiln
set -euo pipefail
KILN=$(realpath "$1")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../elastic/lib.sh"  # wait_until; exports a KILN_JOB_TOKEN
unset KILN_JOB_TOKEN  # part 1: the launcher makes its own
source "$(dirname "${BASH_SOURCE[0]}")/../lib/scratch.sh"
PIDS=()
stop_started() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
scratch job_auth stop_started
command -v ss > /dev/null || { echo "job_auth: ss (iproute2) missing" >&2; exit 77; }

# --- 1. kiln launch: listeners and refused clients --------------------------
# The diagnosis tests' tiny CNN, long enough (400 steps, >= 10 ms each) that
# the job is still training while the probes run.
sed -e "s|DATA_DIR|$WORK/data|" -e 's/^max_steps = .*/max_steps = 400/' \
  "$HERE/../diag/tiny.toml" > "$WORK/tiny.toml"
"$KILN" launch -n 2 --bind none -- "$KILN" train "$WORK/tiny.toml" --no-progress --no-resume \
  --ckpt-dir "$WORK/ckpt" --metrics-port 0 --inject data-delay=10 > "$WORK/launch.log" 2>&1 &
LAUNCH=$!
PIDS+=("$LAUNCH")
# Both ranks are past the group's setup and about to train once both serve
# their metrics.
both_serving() { [ "$(grep -c 'serving Prometheus text on port' "$WORK/launch.log")" -ge 2 ]; }
wait_until 120 both_serving ||
  { tail -30 "$WORK/launch.log" >&2; fail "the job did not start training"; }

# Every listening socket of the launcher and its ranks.
job_pids() { echo "$LAUNCH"; pgrep -P "$LAUNCH" || true; }
ss -ltnpH > "$WORK/ss.txt"
: > "$WORK/job-listeners.txt"
for p in $(job_pids); do grep "pid=$p," "$WORK/ss.txt" >> "$WORK/job-listeners.txt" || true; done
[ -s "$WORK/job-listeners.txt" ] || { cat "$WORK/ss.txt" >&2; fail "found none of the job's listeners"; }
if awk '{print $4}' "$WORK/job-listeners.txt" | grep -Eq '^(0\.0\.0\.0|\*|\[::\]):'; then
  cat "$WORK/job-listeners.txt" >&2
  fail "a Kiln listener is bound to a wildcard address"
fi
# The launcher's own listener is the store.
STORE_PORT=$(grep "pid=$LAUNCH," "$WORK/ss.txt" | awk '{print $4}' | head -1 | sed 's/.*://')
[ -n "$STORE_PORT" ] || fail "the launcher's store listener was not found"

# No token: refused, and the client says what is missing.
if "$KILN" store set --port "$STORE_PORT" --timeout 5 rogue/key 1 > "$WORK/anon.out" 2>&1; then
  fail "a client without the token wrote to the job's store"
fi
grep -q "KILN_JOB_TOKEN" "$WORK/anon.out" || { cat "$WORK/anon.out" >&2; fail "no-token error unclear"; }
# A wrong token: refused by the server.
if KILN_JOB_TOKEN=0000000000000000000000000000000000 \
   "$KILN" store set --port "$STORE_PORT" --timeout 5 rogue/key 1 > "$WORK/wrong.out" 2>&1; then
  fail "a client with a wrong token wrote to the job's store"
fi
grep -q "refused our job token" "$WORK/wrong.out" ||
  { cat "$WORK/wrong.out" >&2; fail "wrong-token error unclear"; }
kill -0 "$LAUNCH" 2>/dev/null || fail "the job ended before the probes were done (too fast a machine?)"

wait "$LAUNCH" || { tail -30 "$WORK/launch.log" >&2; fail "the job failed after the intruders"; }
grep -q "final:" "$WORK/launch.log" || { tail -30 "$WORK/launch.log" >&2; fail "no final line"; }
# Both refusals are in the launcher's log with the intruder's address.
[ "$(grep -c 'closing connection from 127.0.0.1:[0-9]*: refused' "$WORK/launch.log")" -ge 2 ] ||
  { grep -i "refused\|closing" "$WORK/launch.log" >&2; fail "refusals not logged with the peer address"; }

# --- 2. kiln run: a rogue agent cannot join the round ------------------------
export KILN_JOB_TOKEN
KILN_JOB_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$KILN" store serve --port 0 > "$WORK/store.out" 2>&1 &
PIDS+=("$!")
wait_until 30 grep -q "listening on" "$WORK/store.out"
RDZV_PORT=$(grep -o 'listening on [0-9.]*:[0-9]*' "$WORK/store.out" | head -1 | sed 's/.*://')
RUN=(--nnodes 1:2 -n 1 --rdzv-endpoint "127.0.0.1:$RDZV_PORT" --rdzv-id sec --last-call 3)
"$KILN" run "${RUN[@]}" --node-id a --events "$WORK/a.events" -- true > "$WORK/a.log" 2>&1 &
AGENT=$!
PIDS+=("$AGENT")
if KILN_JOB_TOKEN=ffffffffffffffffffffffffffffffff timeout 60 \
   "$KILN" run "${RUN[@]}" --node-id b -- true > "$WORK/b.log" 2>&1; then
  fail "the rogue agent ran"
fi
grep -q "refused our job token" "$WORK/b.log" || { cat "$WORK/b.log" >&2; fail "rogue agent error unclear"; }
wait "$AGENT" || { cat "$WORK/a.log" >&2; fail "the real agent failed"; }
nodes=$(jq -s -r '[.[] | select(.event == "round_formed")][0].nodes' "$WORK/a.events")
[ "$nodes" = 1 ] || { cat "$WORK/a.events" >&2; fail "the round formed with $nodes nodes, want 1"; }
grep -q "closing connection from 127.0.0.1:[0-9]*: refused" "$WORK/store.out" ||
  { cat "$WORK/store.out" >&2; fail "the store did not log the rogue agent"; }
echo "job_auth: ok"
