#!/usr/bin/env bash
# Bring up a one-node SLURM cluster (slurmctld + slurmd + munge) on this machine for the launcher tests.
#   .ci/start_slurm.sh [start]   install slurm-wlm + munge if missing, write the config, start the daemons
#   .ci/start_slurm.sh stop      stop the daemons this script started
# It stops only daemons it started itself (their pids are kept in <run dir>/ecomvlm-slurm-started/, each checked
# against the daemon's name before it is signalled), never others by name: a munged that already answers is used
# as it is, and a controller that already answers on the configured port (one this script did not start) is left
# running and used, its config untouched. A re-run restarts what this script started.
# Environment (defaults: the standard locations, so plain sinfo/sbatch find the cluster):
#   SLURM_CONF            the config file to write (/etc/slurm/slurm.conf)
#   ECOMVLM_SLURM_STATE   one folder for state, spool, logs and pid files (default: /var/spool, /var/log/slurm, /run)
#   ECOMVLM_SLURM_PORTS   "CTLD_PORT SLURMD_PORT" (6817 6818)
#   ECOMVLM_SLURM_CLUSTER the cluster name (ecomvlm-ci)
set -euo pipefail

action=${1:-start}
case "$action" in start|stop) ;; *) echo "usage: $0 [start|stop]" >&2; exit 2 ;; esac

export SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
state=${ECOMVLM_SLURM_STATE:-}
if [ -n "$state" ]; then
  ctld_spool=$state/slurmctld; slurmd_spool=$state/slurmd; log_dir=$state/log; run_dir=$state/run
else
  ctld_spool=/var/spool/slurmctld; slurmd_spool=/var/spool/slurmd; log_dir=/var/log/slurm; run_dir=/run
fi
read -r ctld_port slurmd_port <<< "${ECOMVLM_SLURM_PORTS:-6817 6818}"
cluster=${ECOMVLM_SLURM_CLUSTER:-ecomvlm-ci}
started=$run_dir/ecomvlm-slurm-started

# the pid recorded for daemon $1, if that process is still that daemon (pids are reused)
ours() {
  local f=$started/$1.pid pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ] && echo "$pid"
}

record() {  # daemon, its own pid file: keep the pid of a daemon this script just started
  local pid=""
  for _ in $(seq 1 50); do
    [ -s "$2" ] && pid=$(cat "$2") && [ -r "/proc/$pid/comm" ] && break
    sleep 0.1
  done
  [ -n "$pid" ] || { echo "$1 started but wrote no pid to $2" >&2; return 1; }
  mkdir -p "$started"
  echo "$pid" > "$started/$1.pid"
}

stop_ours() {
  local d pid
  for d in slurmd slurmctld munged; do
    if pid=$(ours "$d"); then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
      echo "stopped $d (pid $pid, started by this script)"
    fi
    rm -f "$started/$d.pid"
  done
}

if [ "$action" = stop ]; then
  stop_ours
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

stop_ours

wait_idle() {
  for _ in $(seq 1 30); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mixed|allocated'; then
      echo "local SLURM is up: $(sinfo -h -o '%N %c CPUs %T' | head -n 1) ($SLURM_CONF)"
      return 0
    fi
    sleep 1
  done
  echo "SLURM did not become idle:" >&2
  sinfo >&2 || true
  tail -n 20 "$log_dir/slurmctld.log" "$log_dir/slurmd.log" >&2 || true
  return 1
}

if [ -f "$SLURM_CONF" ] && timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; then
  echo "a SLURM controller this script did not start answers for $SLURM_CONF: using it, leaving it running"
  wait_idle
  exit $?
fi

host=$(hostname -s)
node_line=$(slurmd -C | head -n 1)             # NodeName=<host> CPUs=... RealMemory=...
mem=$(echo "$node_line" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
mem=$(( mem * 9 / 10 ))
node_line=$(echo "$node_line" | sed "s/RealMemory=[0-9]*/RealMemory=${mem}/")

mkdir -p "$(dirname "$SLURM_CONF")" "$ctld_spool" "$slurmd_spool" "$log_dir" "$run_dir" /run/munge /var/lib/munge \
  /var/log/munge
cat > "$SLURM_CONF" <<CONF
ClusterName=${cluster}
SlurmctldHost=${host}
SlurmctldPort=${ctld_port}
SlurmdPort=${slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=${ctld_spool}
SlurmdSpoolDir=${slurmd_spool}
SlurmctldPidFile=${run_dir}/slurmctld.pid
SlurmdPidFile=${run_dir}/slurmd.pid
SlurmctldLogFile=${log_dir}/slurmctld.log
SlurmdLogFile=${log_dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
SchedulerType=sched/backfill
JobRequeue=1
${node_line} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
rm -f "$(dirname "$SLURM_CONF")/cgroup.conf"  # proctrack/linuxproc + task/none: no cgroups (none in many containers)

if munge -n >/dev/null 2>&1; then
  echo "munged is already running: using it"
else
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/munged.pid 2>/dev/null \
    || /usr/sbin/munged --force --pid-file=/run/munge/munged.pid
  record munged /run/munge/munged.pid
fi
rm -f "$run_dir/slurmctld.pid" "$run_dir/slurmd.pid"
slurmctld -i || { tail -n 20 "$log_dir/slurmctld.log" >&2; exit 1; }
record slurmctld "$run_dir/slurmctld.pid"
slurmd || { tail -n 20 "$log_dir/slurmd.log" >&2; exit 1; }
record slurmd "$run_dir/slurmd.pid"
wait_idle
