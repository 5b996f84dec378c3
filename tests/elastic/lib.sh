# Helpers shared by the elastic end-to-end tests (sourced).

# One job token for every agent and store a test starts: a job across
# "nodes" needs the same secret on each (docs/security.md).
KILN_JOB_TOKEN=${KILN_JOB_TOKEN:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export KILN_JOB_TOKEN

# wait_until TIMEOUT_S CMD...: polls CMD every 50 ms until it succeeds;
# fails naming CMD when TIMEOUT_S passes.
wait_until() {
  local timeout=$1; shift
  local end=$((SECONDS + timeout))
  until "$@" > /dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then echo "timed out after ${timeout}s waiting for: $*" >&2; return 1; fi
    sleep 0.05
  done
}

# committed_step DIR: the newest committed checkpoint step under DIR (0 if none).
committed_step() {
  local latest
  latest=$(cat "$1/latest" 2>/dev/null || true)
  echo "${latest#step-}" | grep -E '^[0-9]+$' || echo 0
}

# at_least_step DIR N: whether DIR has a committed step >= N.
at_least_step() { [ "$(committed_step "$1")" -ge "$2" ]; }

# worker_pid AGENT_PID RANK: the pid of the agent's worker with that RANK.
worker_pid() {
  local p
  for p in $(pgrep -P "$1"); do
    if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "RANK=$2"; then echo "$p"; return 0; fi
  done
  return 1
}

# params_digest LOG: the params_xxh3 of the final line of a kiln train log.
params_digest() { grep -o 'final: .*params_xxh3 [0-9a-f]*' "$1" | tail -1 | awk '{print $NF}'; }

# tiny_config WORK: writes the test workload's config into WORK, data in WORK/data.
tiny_config() {
  sed "s|DATA_DIR|$1/data|" "$(dirname "${BASH_SOURCE[0]}")/tiny_cnn.toml" > "$1/tiny_cnn.toml"
  echo "$1/tiny_cnn.toml"
}

# start_store WORK: runs `kiln store serve` on a free loopback port in the
# background; sets STORE_PID and STORE_PORT.
start_store() {
  "$KILN" store serve --host 127.0.0.1 --port 0 > "$1/store.out" 2>&1 &
  STORE_PID=$!
  wait_until 30 grep -q "listening on" "$1/store.out"
  STORE_PORT=$(grep -o 'listening on [0-9.]*:[0-9]*' "$1/store.out" | head -1 | sed 's/.*://')
}

# event_time FILE JQ_FILTER: the wall-clock time of the first event matching.
event_time() { jq -s -r "[.[] | select($2)][0].time // empty" "$1"; }
