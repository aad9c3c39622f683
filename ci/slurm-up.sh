#!/usr/bin/env bash
# Start a single-node SLURM test cluster on this (Debian) machine, as root: the node is this machine,
# sized from `slurmd -C` (its CPUs and memory), one partition `local`, no accounting database.
# Idempotent: a cluster this script already started is left as it is. `ci/slurm-down.sh` stops exactly the
# daemons this script started (their pids are kept in $DSBENCH_SLURM_DIR/started.pids).
#
#   sudo ci/slurm-up.sh        # then: snakemake --profile profiles/slurm-local ...
#   sudo ci/slurm-down.sh
set -euo pipefail

STATE_DIR=${DSBENCH_SLURM_DIR:-/var/tmp/dsbench-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by diffsparse-bench ci/slurm-up.sh"
say() { echo "slurm-up: $*"; }
die() { echo "slurm-up: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts daemons)"

# 1. Packages (Debian's slurm-wlm 22.05 and munge); installed only where missing.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "slurmctld/slurmd/munged are missing and there is no apt-get to install them"
  say "installing slurmctld slurmd slurm-client munge (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

mkdir -p "$STATE_DIR"/{state,spool,log}
PIDS="$STATE_DIR/started.pids"
touch "$PIDS"

alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }
pid_of() { [[ -f $1 ]] && cat "$1" || true; }

# 2. munge: reuse a running munged that answers; otherwise start one with the machine's key.
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "munged already answers; using it"
else
  if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || die "munged started but does not answer (see /var/log/munge/munged.log)"
  echo "munged $(cat /run/munge/munged.pid)" >>"$PIDS"
  say "started munged (pid $(cat /run/munge/munged.pid))"
fi

# 3. slurm.conf, generated from this machine; an existing file not written here is never replaced.
if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
  die "$CONF exists and was not written by this script; this script sets up a test cluster on a machine without SLURM"
fi
NODE_LINE=$(slurmd -C | head -n 1)      # NodeName=<host> CPUs=.. Boards=.. ... RealMemory=<MiB>
NODE=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$NODE_LINE")
[[ -n $NODE ]] || die "could not read this machine's node line from 'slurmd -C': $NODE_LINE"
# Leave 1 GiB of the memory to the controller and the Snakemake process itself.
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
NODE_LINE=$(sed "s/RealMemory=[0-9]*/RealMemory=$((MEM > 2048 ? MEM - 1024 : MEM))/" <<<"$NODE_LINE")
NEW_CONF=$(cat <<EOF
$MARKER
ClusterName=dsbench
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
# No cgroups: containers and CI machines often lack a writable cgroup tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
MinJobAge=300
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
if [[ ! -f $CONF ]] || [[ $(cat "$CONF") != "$NEW_CONF" ]]; then
  mkdir -p /etc/slurm
  printf '%s\n' "$NEW_CONF" >"$CONF.tmp" && mv "$CONF.tmp" "$CONF"
  say "wrote $CONF ($NODE_LINE)"
fi

# 4. The two SLURM daemons.
start_daemon() {   # slurmctld or slurmd: each daemonises and writes $STATE_DIR/<name>.pid
  local name=$1 pidfile="$STATE_DIR/$1.pid"
  if alive "$(pid_of "$pidfile")"; then
    say "$name already running (pid $(pid_of "$pidfile"))"
    return
  fi
  "$name"
  for _ in $(seq 50); do alive "$(pid_of "$pidfile")" && break; sleep 0.1; done
  alive "$(pid_of "$pidfile")" || die "$name did not start (see $STATE_DIR/log/$name.log)"
  echo "$name $(pid_of "$pidfile")" >>"$PIDS"
  say "started $name (pid $(pid_of "$pidfile"))"
}
start_daemon slurmctld
start_daemon slurmd

# 5. Wait until the node is idle (a node left down by an earlier run is resumed once).
for i in $(seq 60); do
  STATE=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
  [[ $STATE == idle* || $STATE == mix* || $STATE == alloc* ]] && break
  if [[ $STATE == down* || $STATE == drain* ]] && [[ $i -eq 5 ]]; then
    scontrol update nodename="$NODE" state=resume || true
  fi
  sleep 1
done
[[ $STATE == idle* || $STATE == mix* || $STATE == alloc* ]] \
  || die "node $NODE is '${STATE:-unknown}' after 60 s (see $STATE_DIR/log/slurmd.log and slurmctld.log)"
say "node $NODE is $STATE in partition local ($(sinfo -h -o '%c CPUs, %m MiB' | head -n 1))"
