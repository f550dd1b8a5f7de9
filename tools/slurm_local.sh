#!/usr/bin/env bash
# A real two-node Slurm cluster on this one machine, for tests and for trying slurm/*.sh by hand.
#
# usage: sudo bash tools/slurm_local.sh {start|stop|status}
#   start    install the packages if missing (apt-get; Debian/Ubuntu), write slurm.conf and a
#            munge key, add "127.0.0.1 n1 n2" to /etc/hosts, start munged, slurmctld and one
#            slurmd per node (n1, n2), then wait until `sinfo` shows both nodes idle.
#            A no-op when the cluster is already up.
#   stop     `scontrol shutdown`, then end the slurmd and munged processes this script started
#            (by the pids in their pid files).
#   status   print `sinfo`; exit 0 when both nodes are up (idle, mixed or allocated), else 1.
#
#   SLURM_START_TIMEOUT_S  seconds `start` waits for both nodes to be idle (default 60; they come
#                          up within a few seconds here, the rest is slack for a loaded machine)
#
# Layout (Debian's Slurm 22.05): /etc/slurm/slurm.conf, logs in /var/log/slurm/, node spool dirs
# /var/spool/slurmd/<node>, pid files /run/slurmd-<node>.pid. Each node has CPUs=1: the two nodes
# together match this machine's 2 cores, so a 2-node job gets one CPU per node, like one GPU
# process per node. See docs/slurm.md.
set -euo pipefail

nodes=(n1 n2)
ports=(17001 17002)  # one slurmd per node name on one host needs its own port
conf=/etc/slurm/slurm.conf
log_dir=/var/log/slurm
munge_pid=/run/munge/munged.pid
started_munge=/run/humpback-slurm-munged  # marker: munged was started by this script
timeout_s=${SLURM_START_TIMEOUT_S:-60}

die() {
  echo "slurm_local: error: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

running() {  # running PID: PID is a live process (a zombie waiting to be reaped is not)
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) && [ -n "$stat" ] && [ "${stat:0:1}" != Z ]
}

alive() {  # alive PIDFILE: the process named in PIDFILE is running
  [ -f "$1" ] && running "$(cat "$1")"
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || [ -x /usr/sbin/munged ] || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and apt-get is not available;" \
    "install Slurm and munge with your package manager"
  echo "slurm_local: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge \
    >/dev/null
}

write_conf() {
  local host
  host=$(hostname -s)
  mkdir -p /etc/slurm "$log_dir" /var/spool/slurmctld
  cat >"$conf" <<EOF
# Written by tools/slurm_local.sh: two nodes (n1, n2) on one host, for tests.
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdLogFile=$log_dir/slurmd-%n.log
SlurmctldLogFile=$log_dir/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
EOF
  local i
  for i in "${!nodes[@]}"; do
    mkdir -p "/var/spool/slurmd/${nodes[$i]}"
    echo "NodeName=${nodes[$i]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${ports[$i]}" \
      "CPUs=1 RealMemory=10000 State=UNKNOWN" >>"$conf"
  done
  echo "PartitionName=debug Nodes=$(IFS=,; echo "${nodes[*]}") Default=YES MaxTime=INFINITE" \
    "State=UP" >>"$conf"
}

setup_munge() {
  mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
  chmod 400 /etc/munge/munge.key
  chmod 700 /etc/munge
  if ! alive "$munge_pid"; then
    su -s /bin/sh munge -c /usr/sbin/munged
    touch "$started_munge"
  fi
}

add_hosts_entry() {
  # A rendezvous address taken from `scontrol show hostnames` (n1) must resolve.
  grep -qE "^127\.0\.0\.1[[:space:]]+${nodes[0]}[[:space:]]+${nodes[1]}\b" /etc/hosts ||
    echo "127.0.0.1 ${nodes[*]}" >>/etc/hosts
}

node_states() {  # "n1 idle n2 idle" (empty when slurmctld does not answer)
  sinfo -h -N -o '%N %t' 2>/dev/null | sort | tr '\n' ' ' | sed 's/ $//' || true
}

all_up() {
  local states
  states=$(node_states)
  [ -n "$states" ] || return 1
  # Every node listed, none down/drained/unknown (mix/alloc are up: jobs may be running).
  [ "$(wc -w <<<"$states")" -eq $((2 * ${#nodes[@]})) ] &&
    ! grep -qE '(down|drain|drng|unk|fail|\*)' <<<"$states"
}

wait_idle() {
  local waited=0 states
  while :; do
    states=$(node_states)
    [ "$states" = "${nodes[0]} idle ${nodes[1]} idle" ] && return 0
    if [ "$waited" -ge "$timeout_s" ]; then
      echo "slurm_local: nodes not idle after ${timeout_s} s: '${states:-no answer}'" >&2
      local f
      for f in "$log_dir/slurmctld.log" "$log_dir"/slurmd-*.log; do
        [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
      done
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
}

start() {
  [ "$(id -u)" -eq 0 ] || die "start needs root (it installs packages and starts daemons)"
  if all_up; then
    echo "slurm_local: already running: $(node_states)"
    return 0
  fi
  install_packages
  add_hosts_entry
  setup_munge
  if ! scontrol ping 2>/dev/null | grep -q UP; then
    write_conf
    slurmctld
  fi
  local node
  for node in "${nodes[@]}"; do
    alive "/run/slurmd-$node.pid" || slurmd -N "$node"
  done
  wait_idle
  echo "slurm_local: up: $(node_states)"
}

stop() {
  command -v scontrol >/dev/null || { echo "slurm_local: not installed"; return 0; }
  local pids=() f pid tries
  for f in /run/slurmctld.pid /run/slurmd-"${nodes[0]}".pid /run/slurmd-"${nodes[1]}".pid; do
    alive "$f" && pids+=("$(cat "$f")")
  done
  scontrol shutdown 2>/dev/null || true  # slurmctld and the slurmds it can reach
  for tries in $(seq 1 20); do  # the daemons exit within a second or two
    for pid in "${pids[@]}"; do
      running "$pid" && break
      pid=""
    done
    [ -z "${pid:-}" ] && break
    [ "$tries" -eq 10 ] && for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.5
  done
  for pid in "${pids[@]}"; do
    running "$pid" && die "pid $pid did not stop after 10 s (SIGTERM sent); see $log_dir/"
  done
  if [ -f "$started_munge" ] && alive "$munge_pid"; then
    kill "$(cat "$munge_pid")"
    rm -f "$started_munge"
  fi
  echo "slurm_local: stopped"
}

status() {
  sinfo 2>/dev/null || { echo "slurm_local: slurmctld not answering"; return 1; }
  all_up
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac
