#!/usr/bin/env bash
# Bring up a one-node SLURM cluster (slurmctld + slurmd + munge) on this machine for the launcher tests.
# Idempotent: installs the Debian packages if missing, (re)writes the config, (re)starts the daemons.
set -euo pipefail

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
node_line=$(slurmd -C | head -n 1)             # NodeName=<host> CPUs=... RealMemory=...
mem=$(echo "$node_line" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
mem=$(( mem * 9 / 10 ))
node_line=$(echo "$node_line" | sed "s/RealMemory=[0-9]*/RealMemory=${mem}/")

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=ecomvlm-ci
SlurmctldHost=${host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
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
rm -f /etc/slurm/cgroup.conf  # proctrack/linuxproc + task/none: no cgroups needed (none in many containers)

if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pkill -x munged 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 1
runuser -u munge -- /usr/sbin/munged --force 2>/dev/null || /usr/sbin/munged --force
slurmctld -i || { tail -n 20 /var/log/slurm/slurmctld.log >&2; exit 1; }
slurmd || { tail -n 20 /var/log/slurm/slurmd.log >&2; exit 1; }
for _ in $(seq 1 30); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mixed'; then
    echo "local SLURM is up: $(sinfo -h -o '%N %c CPUs %T')"
    exit 0
  fi
  sleep 1
done
echo "SLURM did not become idle:" >&2
sinfo >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
