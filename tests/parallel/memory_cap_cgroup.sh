# The per-rank cap enforced by the kernel (sourced by memory_cap.sh, which
# has made gpt.toml in $WORK): each rank runs in a memory cgroup of its own,
# as Slurm's ConstrainRAMSpace or a container's memory.max would put it, and
# [parallel] memory_cap_from_cgroup derives the tensor cap from that limit.
#   1. Calibrate: zero3 under a generous limit reports what each rank holds
#      before its model is built (libraries, runtime) and what it adds that
#      is not a tensor (measured against the reserve).
#   2. Limit = the most any rank holds before the model + the allocator
#      test's cap + the reserve, so the state is about 3x the tensor cap
#      again: zero3 trains under it, and the kernel never kills a rank.
#   3. ddp under the same limit fails at once, naming zero3.
#   4. ddp under the same limit without Kiln's cap: the kernel OOM-kills it,
#      which shows the limit is real.
# Exits 77 (a skip, with the reason) where this host cannot make memory
# cgroups: no memory controller, or no permission.
# The reserve for what is not a tensor: parallel.memory_cgroup_reserve_mib's
# default (a tenth of the headroom, at least 32 MiB) unless RESERVE_MIB is set.
if [ -n "${RESERVE_MIB:-}" ]; then
  RESERVE_LINE="\nmemory_cgroup_reserve_mib = $RESERVE_MIB"
else
  RESERVE_MIB=$(awk -v c="$CAP_MIB" 'BEGIN { r = c / 9; printf "%.1f", (r > 32 ? r : 32) }')
  RESERVE_LINE=
fi

# mount_of PATH FSTYPE: PATH's directory under the mount of FSTYPE (for
# "cgroup", the one holding the memory controller), through the mount's root.
mount_of() {
  awk -v p="$1" -v t="$2" '$0 ~ (" - " t " ") && (t == "cgroup2" || $NF ~ /(^|,)memory(,|$)/) {
      root = $4; mnt = $5
      if (root == "/") { print mnt p; exit }
      if (index(p, root) == 1) { print mnt substr(p, length(root) + 1); exit } }' /proc/self/mountinfo
}
memory_cgroup_parent() {
  local line
  if line=$(grep -E '^[0-9]+:([^:]*,)?memory(,[^:]*)?:' /proc/self/cgroup); then
    CG_VERSION=1
    CG_PARENT=$(mount_of "${line#*:*:}" cgroup)
  elif line=$(grep -E '^0::' /proc/self/cgroup); then
    CG_VERSION=2
    CG_PARENT=$(mount_of "${line#0::}" cgroup2)
  fi
  [ -n "${CG_PARENT:-}" ] && [ -d "$CG_PARENT" ]
}

if ! memory_cgroup_parent; then
  echo "SKIP: no memory cgroup hierarchy is mounted for this process (/proc/self/cgroup, /proc/self/mountinfo)"
  exit 77
fi
probe="$CG_PARENT/kiln-memcap-$$-probe"
if ! mkdir "$probe" 2>/dev/null; then
  echo "SKIP: cannot create a memory cgroup under $CG_PARENT (cgroup v$CG_VERSION): run as root with the memory controller writable"
  exit 77
fi
limit_file=memory.limit_in_bytes
[ "$CG_VERSION" = 2 ] && limit_file=memory.max
if [ ! -f "$probe/$limit_file" ]; then
  rmdir "$probe"
  echo "SKIP: cgroup v$CG_VERSION at $CG_PARENT does not delegate the memory controller to its children"
  exit 77
fi
rmdir "$probe"

CGROUPS=()
cleanup_cgroups() { for cg in "${CGROUPS[@]}"; do rmdir "$cg" 2>/dev/null || true; done; }
trap 'cleanup_cgroups; [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"' EXIT

# The wrapper each rank runs: a cgroup named after the run and the rank,
# the limit, then itself moved in before it becomes `kiln train`.
cat > in_cgroup.sh <<SH
#!/bin/sh
set -e
cg="$CG_PARENT/kiln-memcap-$$-\$1-r\$RANK"
mkdir "\$cg"
echo "\$2" > "\$cg/$limit_file"
# v1 with swap: the memory+swap limit too, or the rank would swap instead.
[ -f "\$cg/memory.memsw.limit_in_bytes" ] && echo "\$2" > "\$cg/memory.memsw.limit_in_bytes"
[ "$CG_VERSION" = 2 ] && [ -f "\$cg/memory.swap.max" ] && echo 0 > "\$cg/memory.swap.max"
echo \$\$ > "\$cg/cgroup.procs"
shift 2
exec "\$@"
SH
chmod +x in_cgroup.sh

# run_in_cgroups LABEL LIMIT_MIB LOG ARGS...: `kiln train ARGS` on 4 ranks,
# each in cgroup kiln-memcap-PID-LABEL-rRANK; returns the launch's status.
run_in_cgroups() {
  local label=$1 limit_mib=$2 log=$3
  shift 3
  for r in 0 1 2 3; do CGROUPS+=("$CG_PARENT/kiln-memcap-$$-$label-r$r"); done
  "$KILN" launch -n 4 -- "$WORK/in_cgroup.sh" "$label" $((limit_mib * 1048576)) "$KILN" train "$@" >"$log" 2>&1
}
cg_peak_mib() {  # the most the cgroup held, MiB (v2 without memory.peak: empty)
  local f=memory.max_usage_in_bytes
  [ "$CG_VERSION" = 2 ] && f=memory.peak
  [ -f "$1/$f" ] && awk '{ printf "%.1f", $1 / 1048576 }' "$1/$f"
}
cg_oom_kills() {
  local f=memory.oom_control
  [ "$CG_VERSION" = 2 ] && f=memory.events
  awk '$1 == "oom_kill" { print $2; found = 1 } END { if (!found) print 0 }' "$1/$f"
}

sed -e '/^memory_cap_mib = /d' \
  -e "s/^\[parallel\]$/[parallel]\nmemory_cap_from_cgroup = true$RESERVE_LINE/" gpt.toml > cg.toml
grep -q '^memory_cap_from_cgroup = true' cg.toml || { echo "FAIL: could not write cg.toml"; exit 1; }

# 1. Calibrate under 4 GiB per rank, the whole run.
run_in_cgroups calib 4096 calib.log cg.toml || { cat calib.log; echo "FAIL: zero3 failed under a 4 GiB cgroup"; exit 1; }
before=$(grep -o 'MiB - [0-9.]* MiB in use before the model' calib.log | awk '{print $3}')
[ "$(echo "$before" | wc -l)" -eq 4 ] || { cat calib.log; echo "FAIL: expected 4 ranks' cgroup readings"; exit 1; }
max_before=$(echo "$before" | sort -g | tail -1)
for r in 0 1 2 3; do
  cg="$CG_PARENT/kiln-memcap-$$-calib-r$r"
  peak=$(cg_peak_mib "$cg")
  tensors=$(grep "^\[rank $r\]" calib.log | grep -o 'peak [0-9.]* MiB of tensors' | awk '{print $2}')
  used=$(grep "^\[rank $r\]" calib.log | grep -o 'MiB - [0-9.]* MiB in use' | awk '{print $3}')
  if [ -n "$peak" ]; then
    # The model is built whole before it is placed; what the cgroup held
    # beyond the process's start and that build is not a tensor.
    echo "calibration rank $r: ${used} MiB before the model, cgroup peak ${peak} MiB, tensor peak after placing ${tensors} MiB"
  fi
done
LIMIT_MIB=$(awk -v b="$max_before" -v c="$CAP_MIB" -v r="$RESERVE_MIB" 'BEGIN { printf "%d", b + c + r + 0.999 }')
echo "limit per rank: ${LIMIT_MIB} MiB (${max_before} MiB before the model + ${CAP_MIB} MiB of tensors + ${RESERVE_MIB} MiB reserve)"

# 2. zero3 under the limit: trains, no rank killed, the tensor cap is a third of the state.
run_in_cgroups zero3 "$LIMIT_MIB" cg_zero3.log cg.toml || { cat cg_zero3.log; echo "FAIL: zero3 did not train in a ${LIMIT_MIB} MiB cgroup"; exit 1; }
grep -q "final: step 3" cg_zero3.log || { cat cg_zero3.log; echo "FAIL: zero3 did not finish"; exit 1; }
state=$(grep -o 'zero3: [0-9]* parameters' cg_zero3.log | head -1 | awk '{print $2}')
full_mib=$(awk -v p="$state" 'BEGIN { printf "%.1f", 16 * p / 1048576 }')
caps=$(grep -o 'per-rank cap [0-9.]* MiB of tensors (memory cgroup' cg_zero3.log | awk '{print $3}')
[ "$(echo "$caps" | wc -l)" -eq 4 ] || { cat cg_zero3.log; echo "FAIL: expected 4 ranks' caps from their cgroups"; exit 1; }
for c in $caps; do
  awk -v f="$full_mib" -v c="$c" 'BEGIN { exit !(f >= 2.8 * c) }' || { echo "FAIL: a rank's cap ${c} MiB is not about a third of the ${full_mib} MiB state"; exit 1; }
done
peaks=$(grep -o 'peak [0-9.]* MiB of tensors' cg_zero3.log | awk '{print $2}')
for r in 0 1 2 3; do
  cg="$CG_PARENT/kiln-memcap-$$-zero3-r$r"
  [ "$(cg_oom_kills "$cg")" = 0 ] || { cat cg_zero3.log; echo "FAIL: the kernel OOM-killed in zero3's cgroup of rank $r"; exit 1; }
done
echo "zero3 on 4 ranks in ${LIMIT_MIB} MiB cgroups: full state ${full_mib} MiB, tensor caps $(echo $caps) MiB, tensor peaks $(echo $peaks) MiB, cgroup peaks $(for r in 0 1 2 3; do cg_peak_mib "$CG_PARENT/kiln-memcap-$$-zero3-r$r"; echo -n ' '; done)MiB"

# 3. ddp under the same limit: Kiln's cap refuses it before the kernel must.
if run_in_cgroups ddp "$LIMIT_MIB" cg_ddp.log cg.toml --strategy ddp; then
  cat cg_ddp.log; echo "FAIL: ddp trained in a cgroup its state cannot fit"; exit 1
fi
grep -q 'out of memory: \[parallel\] strategy = "ddp".*(memory cgroup ' cg_ddp.log || { cat cg_ddp.log; echo "FAIL: no out-of-memory error naming the cgroup for ddp"; exit 1; }
grep -q 'zero3 (' cg_ddp.log || { cat cg_ddp.log; echo "FAIL: the error does not name zero3"; exit 1; }
echo "ddp: $(grep -o 'out of memory.*' cg_ddp.log | head -1)"

# 4. ddp under the same limit with Kiln's cap off: the kernel kills it.
sed -e 's/^memory_cap_from_cgroup = true$/memory_cap_from_cgroup = false/' -e '/^memory_cgroup_reserve_mib/d' cg.toml > nocap.toml
if run_in_cgroups nocap "$LIMIT_MIB" cg_nocap.log nocap.toml --strategy ddp; then
  cat cg_nocap.log; echo "FAIL: ddp trained in a ${LIMIT_MIB} MiB cgroup: the limit is not enforced"; exit 1
fi
kills=0
for r in 0 1 2 3; do kills=$((kills + $(cg_oom_kills "$CG_PARENT/kiln-memcap-$$-nocap-r$r"))); done
[ "$kills" -ge 1 ] || { cat cg_nocap.log; echo "FAIL: ddp failed, but not by the kernel's OOM killer"; exit 1; }
grep -q 'killed by signal 9' cg_nocap.log || { cat cg_nocap.log; echo "FAIL: no rank was reported killed"; exit 1; }
echo "ddp without Kiln's cap: the kernel OOM-killed $kills rank(s): $(grep -o 'rank [0-9] killed by signal 9[^;]*' cg_nocap.log | head -1)"
echo "memory_cap cgroup: 4 passed, 0 failed"
