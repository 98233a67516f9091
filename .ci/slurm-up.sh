#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this host (Debian slurm-wlm + munge) for the executor tests.
# Idempotent: installs only what is missing, rewrites the config only when it changes, starts only the
# daemons that are not running, and returns once `sinfo` shows the node idle. Needs root (CI runs as root).
set -euo pipefail

CPUS=${EMO_SLURM_CPUS:-2}
PARTITION=${EMO_SLURM_PARTITION:-emo}
NODE=$(hostname -s)
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf

log() { echo "slurm-up: $*" >&2; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
  || ! command -v sbatch >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  # Package scripts must not try to start services through systemd (absent in containers).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# munge: shared key (created by the package's postinst; make one if it is missing), then the daemon.
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# slurm.conf: this host, $CPUS CPUs, one default partition; jobs share the node CPU by CPU.
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p $CONF_DIR /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
NEW_CONF=$(cat <<CONF
# Written by .ci/slurm-up.sh (emo): single-node SLURM for tests.
ClusterName=emo
SlurmctldHost=$NODE
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
InactiveLimit=0
KillWait=5
MinJobAge=60
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
)
restart=0
if [ ! -f $CONF ] || [ "$(cat $CONF)" != "$NEW_CONF" ]; then
  log "writing $CONF"
  printf '%s\n' "$NEW_CONF" > $CONF
  restart=1
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ $restart = 1 ]; then
  for pidf in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid; do
    if running $pidf; then kill "$(cat $pidf)"; sleep 1; fi
  done
fi
running /run/slurm/slurmctld.pid || { log "starting slurmctld"; slurmctld -c; }
running /run/slurm/slurmd.pid || { log "starting slurmd"; slurmd; }

for _ in $(seq 120); do
  state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null | head -1 || true)
  case "$state" in
    idle|mix|alloc|plnd|comp) log "node $NODE $state in partition $PARTITION"; exit 0 ;;
    down*|drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.5
done
log "SLURM did not come up; see /var/log/slurm/"
sinfo -N -l >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
