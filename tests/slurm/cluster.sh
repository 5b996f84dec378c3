# A real single-host Slurm for tests, from Debian's packages: munged,
# slurmctld and slurmd with a generated slurm.conf, all under one private
# directory with their own ports, so that runs beside each other do not
# meet. Source it, then:
#   start_slurm DIR      starts the three daemons; exports SLURM_CONF; waits
#                        until the node is idle. Fails loudly (non-zero,
#                        with the daemons' logs) if Slurm cannot start.
#   stop_slurm           stops them (also from an EXIT trap).
SLURM_PIDS=()

slurm_free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

slurm_fail() {
  echo "slurm: $*" >&2
  for f in "$SLURM_DIR"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }; done
  return 1
}

start_slurm() {
  SLURM_DIR=$1
  mkdir -p "$SLURM_DIR"/{state,spool,munge}
  chmod 700 "$SLURM_DIR/munge"
  for tool in munged slurmctld slurmd srun sbatch scontrol; do
    command -v "$tool" > /dev/null || { slurm_fail "$tool is not installed (scripts/install-deps.sh)"; return 1; }
  done
  local host; host=$(hostname -s)
  # munge: its own key and socket.
  dd if=/dev/urandom of="$SLURM_DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$SLURM_DIR/munge/munge.key"
  local sock="$SLURM_DIR/munge/munge.socket"
  munged --force --key-file="$SLURM_DIR/munge/munge.key" --socket="$sock" \
    --pid-file="$SLURM_DIR/munge/munged.pid" --log-file="$SLURM_DIR/munged.log" \
    --seed-file="$SLURM_DIR/munge/munged.seed" || { slurm_fail "munged did not start"; return 1; }
  SLURM_PIDS+=("$(cat "$SLURM_DIR/munge/munged.pid")")
  local ctld_port slurmd_port
  ctld_port=$(slurm_free_port); slurmd_port=$(slurm_free_port)
  cat > "$SLURM_DIR/slurm.conf" <<CONF
ClusterName=kiln$$
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
KillWait=2
InactiveLimit=0
MinJobAge=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=kiln Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
  export SLURM_CONF="$SLURM_DIR/slurm.conf"
  slurmctld -D -i -f "$SLURM_CONF" > "$SLURM_DIR/slurmctld.out" 2>&1 &
  SLURM_PIDS+=($!)
  slurmd -D -N "$host" -f "$SLURM_CONF" > "$SLURM_DIR/slurmd.out" 2>&1 &
  SLURM_PIDS+=($!)
  local i state
  for ((i = 0; i < 150; i++)); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
    [ "$state" = idle ] && return 0
    for p in "${SLURM_PIDS[@]}"; do
      kill -0 "$p" 2>/dev/null || { slurm_fail "a Slurm daemon (pid $p) exited"; return 1; }
    done
    sleep 0.2
  done
  slurm_fail "the node is not idle after 30 s (state: ${state:-none})"
}

stop_slurm() {
  local p
  for p in "${SLURM_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${SLURM_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  SLURM_PIDS=()
}
