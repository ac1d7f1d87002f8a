#!/usr/bin/env bash
# Stop the single-node SLURM test cluster started by tests/slurm/up.sh.
#
#   tests/slurm/down.sh            # cancel root's jobs, stop every daemon by its pid file
#   PURGE=1 tests/slurm/down.sh    # also delete state, logs, pid files and the MariaDB data
#
# Only pid files are used (never pkill/killall): order slurmd, slurmctld, slurmdbd, mariadbd,
# munged; SIGTERM, wait up to 10 s, then SIGKILL if still alive.
set -uo pipefail

SLURM_BASE=${SLURM_BASE:-/tmp/medref-slurm}
PURGE=${PURGE:-0}

log() { echo "[slurm-down] $*" >&2; }

alive_pid() { # alive_pid PID -> live and not a zombie
  kill -0 "$1" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}

stop() { # stop NAME PIDFILE
  local name=$1 f=$2 pid i
  [ -s "$f" ] || return 0
  pid=$(cat "$f" 2>/dev/null)
  if [ -z "$pid" ] || ! alive_pid "$pid"; then
    rm -f "$f"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 50); do
    alive_pid "$pid" || break
    sleep 0.2
  done
  if alive_pid "$pid"; then
    log "$name did not stop in 10 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
}

if [ -s "$SLURM_BASE/run/slurmctld.pid" ] && alive_pid "$(cat "$SLURM_BASE/run/slurmctld.pid")"; then
  scancel --user=root 2>/dev/null || true
fi

stop slurmd "$SLURM_BASE/run/slurmd.pid"
stop slurmctld "$SLURM_BASE/run/slurmctld.pid"
stop slurmdbd "$SLURM_BASE/run/slurmdbd.pid"
stop mariadbd "$SLURM_BASE/run/mysqld.pid"
stop munged /run/munge/munged.pid

if [ "$PURGE" = 1 ]; then
  # Slurm job ids restart at 1 after a state purge; sacct (MariaDB) must be purged with it
  # or it would report stale jobs under reused ids.
  case "$SLURM_BASE" in
    "" | / ) log "refusing to purge SLURM_BASE=$SLURM_BASE" ; exit 1 ;;
  esac
  log "purging $SLURM_BASE/{state,log,run,mysql,fakegpu}"
  rm -rf "$SLURM_BASE"/{state,log,run,mysql,fakegpu}
fi
log "stopped"
