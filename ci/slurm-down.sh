#!/usr/bin/env bash
# Stop exactly the daemons ci/slurm-up.sh started (by the pids it recorded), newest first; a daemon that
# was already running before it (a system munged, say) is left alone. Idempotent.
set -euo pipefail

STATE_DIR=${DSBENCH_SLURM_DIR:-/var/tmp/dsbench-slurm}
PIDS="$STATE_DIR/started.pids"
say() { echo "slurm-down: $*"; }

if [[ ! -s $PIDS ]]; then
  say "nothing to stop (no daemons recorded in $PIDS)"
  exit 0
fi
# Jobs of the test cluster die with it: cancel them first so slurmd does not leave steps behind.
if command -v scancel >/dev/null && [[ -n $(grep -w slurmctld "$PIDS" || true) ]]; then
  scancel --quiet --full "--partition=local" 2>/dev/null || true
fi
tac "$PIDS" | while read -r name pid; do
  # A recycled pid that now belongs to another program is not ours to kill.
  if [[ $(cat "/proc/$pid/comm" 2>/dev/null) != "$name" ]]; then
    say "$name (pid $pid) is not running"
    continue
  fi
  kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid"
    say "killed $name (pid $pid; it ignored SIGTERM for 10 s)"
  else
    say "stopped $name (pid $pid)"
  fi
done
: >"$PIDS"
