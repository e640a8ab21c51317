#!/bin/bash
# A throwaway single-node Slurm cluster on this machine (munge, slurmctld and
# slurmd from Debian's packages), to try cluster/slurm/metatrain.sbatch or to
# test it: `single-node.sh start DIR` configures and starts the daemons with
# all their state under DIR and prints the environment to use (SLURM_CONF);
# `single-node.sh stop DIR` stops them. Needs root.
set -euo pipefail
cmd=${1:-}; dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then echo "usage: single-node.sh start|stop DIR" >&2; exit 2; fi
dir=$(mkdir -p "$dir" && cd "$dir" && pwd)

stop() {
  # By pid file, then by the command lines that name this directory (a daemon may
  # drop its pid file when asked to stop, before it has stopped).
  for d in slurmd slurmctld munged; do
    if [ -f "$dir/$d.pid" ]; then kill "$(cat "$dir/$d.pid")" 2>/dev/null || true; fi
  done
  pkill -f -- "$dir/" 2>/dev/null || true
  for _ in $(seq 50); do
    pgrep -f -- "$dir/" >/dev/null || return 0
    sleep 0.1
  done
  pkill -9 -f -- "$dir/" 2>/dev/null || true
}

case "$cmd" in
stop) stop; exit 0 ;;
start) ;;
*) echo "usage: single-node.sh start|stop DIR" >&2; exit 2 ;;
esac

for tool in munged mungekey slurmctld slurmd sinfo; do
  command -v "$tool" >/dev/null || { echo "single-node.sh: $tool not found (apt-get install munge slurmctld slurmd slurm-client)" >&2; exit 1; }
done
host=$(hostname -s)
cpus=$(nproc)
mkdir -p "$dir/munge" "$dir/state" "$dir/spool"
chmod 700 "$dir/munge"
[ -f "$dir/munge/munge.key" ] || mungekey --create --keyfile="$dir/munge/munge.key" >/dev/null 2>&1 \
  || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
# Daemons get no terminal and none of our output: whoever runs this reads to the end.
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
  --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed" </dev/null >/dev/null 2>&1

cat > "$dir/slurm.conf" <<CONF
ClusterName=metatrain-test
SlurmctldHost=$host
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF" </dev/null >/dev/null 2>&1
slurmd -f "$SLURM_CONF" </dev/null >/dev/null 2>&1
for _ in $(seq 150); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  case "$state" in idle*|mixed*|allocated*) echo "SLURM_CONF=$SLURM_CONF"; exit 0 ;; esac
  sleep 0.2
done
echo "single-node.sh: the node did not come up (state: ${state:-none}); logs in $dir" >&2
tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
stop
exit 1
