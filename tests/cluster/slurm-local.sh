#!/usr/bin/env bash
# slurm-local.sh - a single-node SLURM cluster on this machine, for tests and CI.
#
# iclscope's own copy (tests/cluster/conftest.py starts and stops it around the cluster tests;
# `make cluster-deps` runs `install-if-missing`). Derived from the team's tested reference
# script; every gotcha it met is kept in the comments below.
#
# Debian 12 (bookworm) packages: slurmctld slurmd slurm-client munge (22.05.x),
# plus slurmdbd + mariadb-server when accounting is on.  No systemd needed: every
# daemon is started by hand, all of its files (conf, state, spool, logs, pid files,
# munge key and socket, MariaDB datadir) live under one directory, and `stop`
# ends only the processes this script started, by the pids it recorded.
# Must run as root (apt-get, mknod, /etc/slurm symlink, slurmd).
#
# Usage: slurm-local.sh {install|install-if-missing|start|stop|restart|restart-slurmd|crash|status|env|clean}
#   install  apt-get install the Debian packages (apt-get update first)
#   install-if-missing  the same, only when a package is missing (fast and quiet otherwise)
#   start    write the config (on first start) and start munged [mariadbd slurmdbd]
#            slurmctld slurmd; wait until the node is idle.  Idempotent: daemons
#            already running from this directory are left alone.  A cold slurmctld start
#            cancels the jobs it recovers from daemons that died without `stop`.
#   stop     scancel our jobs, then stop the daemons started from this directory,
#            by recorded pid (checked against /proc: same program, same start time).
#   restart  stop + start (rewrites the config).
#   restart-slurmd  stop and start only slurmd (jobs stay queued / running), as a node
#            daemon restart or upgrade does on a real cluster; wait until the node answers.
#   crash    SIGKILL the jobs' processes and the daemons, leaving the saved state, as a
#            killed session does (tests/cluster/test_cold_start.py).
#   status   daemons, sinfo, squeue.
#   env      print `export SLURM_CONF=...` (eval "$(slurm-local.sh env)").
#   clean    stop, then delete the whole directory (state, job ids, accounting DB).
#
# Settings (environment variables):
#   SLURM_LOCAL_DIR=/tmp/slurm-local   where everything lives
#   SLURM_LOCAL_ACCOUNTING=1           1: MariaDB + slurmdbd, so sacct/sacctmgr work
#                                      (the snakemake slurm plugin's default status
#                                      command); 0: accounting_storage/none, then a
#                                      snakemake profile MUST set
#                                      `slurm-status-command: squeue`
#   SLURM_LOCAL_GPUS=1                 fake GPUs (gres gpu, char devices made by mknod,
#                                      major 1 minor 3 = /dev/null); 0 = none
#   SLURM_LOCAL_PARTITION=debug        the one (default) partition
#   SLURM_LOCAL_GPU_PARTITION=         a second partition on the same node for GPU jobs
#                                      (e.g. gpu); empty: only SLURM_LOCAL_PARTITION
#   SLURM_LOCAL_MEM_MB=                node RealMemory; default 90% of what slurmd -C sees
#   SLURM_LOCAL_LINK_ETC=1             symlink /etc/slurm/slurm.conf to our conf; needed
#                                      by snakemake (its slurm-jobstep drops SLURM_CONF
#                                      before the srun inside each job)
#   SLURM_LOCAL_INSTALL=1              `start` installs missing packages itself
#   SLURM_LOCAL_CTLD_PORT=6817 SLURM_LOCAL_SLURMD_PORT=6818
#   SLURM_LOCAL_DBD_PORT=6819  SLURM_LOCAL_MYSQL_PORT=3307
#   SLURM_LOCAL_TIMEOUT=90             seconds to wait for each daemon / the node
#   SLURM_LOCAL_ACCT_FREQ=2            seconds between memory samples (OverMemoryKill)
set -u -o pipefail
umask 022

DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
GPUS=${SLURM_LOCAL_GPUS:-1}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
GPU_PARTITION=${SLURM_LOCAL_GPU_PARTITION:-}
LINK_ETC=${SLURM_LOCAL_LINK_ETC:-1}
AUTO_INSTALL=${SLURM_LOCAL_INSTALL:-1}
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6818}
DBD_PORT=${SLURM_LOCAL_DBD_PORT:-6819}
MYSQL_PORT=${SLURM_LOCAL_MYSQL_PORT:-3307}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-90}
CLUSTER=localcluster
NODE=$(hostname -s)
CONF=$DIR/etc/slurm.conf
RUN=$DIR/run
LOG=$DIR/log
MUNGE_SOCK=$RUN/munge.socket.2
ETC_LINK=/etc/slurm/slurm.conf
export SLURM_CONF=$CONF

log() { local m; m="[$(date '+%F %T')] slurm-local: $*"; echo "$m"; [ -d "$LOG" ] && echo "$m" >> "$LOG/slurm-local.log"; return 0; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s%N; }
since() { local ms=$(( ($(now) - $1) / 1000000 )); printf '%d.%d' $((ms / 1000)) $(((ms % 1000) / 100)); }

[ "$(id -u)" = 0 ] || die "must run as root"

# ---------------------------------------------------------------- packages
PKGS="slurmctld slurmd slurm-client munge"
PKGS_ACCT="slurmdbd mariadb-server"

have_pkgs() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
    && command -v munged >/dev/null || return 1
  if [ "$ACCOUNTING" = 1 ]; then
    command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null || return 1
  fi
}

do_install() {
  local t0; t0=$(now)
  mkdir -p "$LOG"
  local p="$PKGS"; [ "$ACCOUNTING" = 1 ] && p="$p $PKGS_ACCT"
  log "apt-get update && apt-get install $p"
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then   # keep postinst scripts from starting system daemons
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  apt-get update -qq >> "$LOG/apt.log" 2>&1 || die "apt-get update failed (see $LOG/apt.log)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $p >> "$LOG/apt.log" 2>&1 \
    || { [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install failed (see $LOG/apt.log)"; }
  if [ $made_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  log "packages installed in $(since "$t0") s: $(dpkg-query -W -f='${Version}' slurmctld) (slurm), $(dpkg-query -W -f='${Version}' munge) (munge)"
}

# ---------------------------------------------------------------- pids we own
# $RUN/NAME.owned holds "PID STARTTIME EXE" of a daemon this script started.
proc_start() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }
record() { # name pid
  local exe; exe=$(readlink "/proc/$2/exe" 2>/dev/null)
  echo "$2 $(proc_start "$2") $exe" > "$RUN/$1.owned"
}
owned_pid() { # name -> prints pid if that recorded process is still alive and unchanged
  local f=$RUN/$1.owned pid st exe
  [ -f "$f" ] || return 1
  read -r pid st exe < "$f" || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  [ "$(proc_start "$pid")" = "$st" ] || return 1
  [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ] || return 1
  echo "$pid"
}
pid_from_file() { # pidfile, waits until it names a live process
  local f=$1 i p
  for i in $(seq 1 $((TIMEOUT * 5))); do
    p=$(cat "$f" 2>/dev/null) && [ -n "$p" ] && [ -d "/proc/$p" ] && { echo "$p"; return 0; }
    sleep 0.2
  done
  return 1
}
wait_until() { # seconds cmd...
  local n=$1 i; shift
  for i in $(seq 1 $((n * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- config
write_conf() {
  local hw cpus boards spb cps tpc mem
  hw=$(/usr/sbin/slurmd -C | head -1)
  cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<< "$hw")
  boards=$(sed -n 's/.* Boards=\([0-9]*\).*/\1/p' <<< "$hw")
  spb=$(sed -n 's/.* SocketsPerBoard=\([0-9]*\).*/\1/p' <<< "$hw")
  cps=$(sed -n 's/.* CoresPerSocket=\([0-9]*\).*/\1/p' <<< "$hw")
  tpc=$(sed -n 's/.* ThreadsPerCore=\([0-9]*\).*/\1/p' <<< "$hw")
  mem=${SLURM_LOCAL_MEM_MB:-$(( $(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<< "$hw") * 9 / 10 ))}
  local gres_line="" gres_types="" acct acct_gather
  if [ "$GPUS" -gt 0 ]; then gres_types="GresTypes=gpu"; gres_line=" Gres=gpu:$GPUS"; fi
  if [ "$ACCOUNTING" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# the munge socket used towards slurmdbd (AuthInfo is not used for that link)
AccountingStoragePass=$MUNGE_SOCK
AccountingStorageTRES=gres/gpu
# keep sbatch --comment (the snakemake plugin puts the rule name there) for sacct -o Comment
AccountingStoreFlags=job_comment"
    # OverMemoryKill: without cgroups this is how a job over its --mem gets killed (checked
    # every JobAcctGatherFrequency seconds), so retries with more memory can be tested
    acct_gather="JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=${SLURM_LOCAL_ACCT_FREQ:-2}
JobAcctGatherParams=OverMemoryKill"
  else
    acct="AccountingStorageType=accounting_storage/none"
    acct_gather="JobAcctGatherType=jobacct_gather/none"
  fi
  cat > "$CONF" <<EOF
# written by slurm-local.sh on $(date '+%F %T'); single node, no cgroups
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without this a job with no --mem gets the whole node's memory
DefMemPerCPU=1024
$acct
$acct_gather
JobCompType=jobcomp/none
ReturnToService=2
# the snakemake plugin's squeue status mode needs finished jobs visible for >= 3 x its
# first status interval (default 40 s): keep them 300 s
MinJobAge=300
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
$gres_types
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Boards=$boards SocketsPerBoard=$spb CoresPerSocket=$cps ThreadsPerCore=$tpc RealMemory=$mem$gres_line State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  if [ -n "$GPU_PARTITION" ]; then
    echo "PartitionName=$GPU_PARTITION Nodes=ALL Default=NO MaxTime=INFINITE State=UP" >> "$CONF"
  fi
  if [ "$GPUS" -gt 0 ]; then
    local i files=() chardevs=(/dev/null /dev/zero /dev/full /dev/urandom /dev/random)
    mkdir -p "$DIR/dev"
    for i in $(seq 0 $((GPUS - 1))); do
      [ -c "$DIR/dev/fakegpu$i" ] || mknod "$DIR/dev/fakegpu$i" c 1 3 2>/dev/null || break
      files+=("$DIR/dev/fakegpu$i")
    done
    if [ "${#files[@]}" -ne "$GPUS" ]; then   # no mknod here: reuse existing char devices
      [ "$GPUS" -le 5 ] || die "mknod failed and only 5 stand-in devices exist for fake GPUs"
      files=("${chardevs[@]:0:$GPUS}")
      log "mknod unavailable; fake GPUs backed by ${files[*]}"
    fi
    { echo "AutoDetect=off"
      for i in "${files[@]}"; do echo "NodeName=$NODE Name=gpu File=$i"; done; } > "$DIR/etc/gres.conf"
  else
    rm -f "$DIR/etc/gres.conf"
  fi
  if [ "$ACCOUNTING" = 1 ]; then
    cat > "$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=slurm-local
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"   # slurmdbd refuses a conf others can read
  fi
}

link_etc() {
  [ "$LINK_ETC" = 1 ] || return 0
  mkdir -p /etc/slurm
  if [ -L "$ETC_LINK" ] || [ ! -e "$ETC_LINK" ]; then
    ln -sfn "$CONF" "$ETC_LINK"
  else
    log "WARNING: $ETC_LINK is a real file; not replaced. Nested srun (snakemake jobstep) will read it."
  fi
}
unlink_etc() {
  [ -L "$ETC_LINK" ] && [ "$(readlink "$ETC_LINK")" = "$CONF" ] && rm -f "$ETC_LINK"
  return 0
}

# ---------------------------------------------------------------- daemons
start_munged() {
  owned_pid munged >/dev/null && { log "munged already running"; return 0; }
  mkdir -p "$DIR/munge"; chmod 700 "$DIR/munge"
  if [ ! -s "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 2>/dev/null; chmod 400 "$DIR/munge/munge.key"
  fi
  rm -f "$RUN/munged.pid"
  /usr/sbin/munged --socket="$MUNGE_SOCK" --key-file="$DIR/munge/munge.key" --log-file="$LOG/munged.log" \
    --pid-file="$RUN/munged.pid" --seed-file="$DIR/munge/munged.seed" || die "munged failed (see $LOG/munged.log)"
  local p; p=$(pid_from_file "$RUN/munged.pid") || die "munged wrote no pid"; record munged "$p"
  wait_until "$TIMEOUT" bash -c "munge -S '$MUNGE_SOCK' -n | unmunge -S '$MUNGE_SOCK'" || die "munge round trip failed"
  log "munged up (pid $p)"
}

start_mariadb() {
  owned_pid mariadbd >/dev/null && { log "mariadbd already running"; return 0; }
  port_busy "$MYSQL_PORT" && die "port $MYSQL_PORT busy (another MySQL?) - set SLURM_LOCAL_MYSQL_PORT"
  if [ ! -d "$DIR/mysql/mysql" ]; then
    mkdir -p "$DIR/mysql"
    mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root --auth-root-authentication-method=normal \
      --skip-test-db > "$LOG/mariadb-install-db.log" 2>&1 || die "mariadb-install-db failed (see $LOG/mariadb-install-db.log)"
  fi
  rm -f "$RUN/mysqld.pid"
  setsid mariadbd --no-defaults --datadir="$DIR/mysql" --socket="$RUN/mysqld.sock" --port="$MYSQL_PORT" \
    --bind-address=127.0.0.1 --pid-file="$RUN/mysqld.pid" --log-error="$LOG/mysqld.log" --user=root \
    --skip-name-resolve --innodb-buffer-pool-size=1024M --innodb-lock-wait-timeout=900 \
    < /dev/null > /dev/null 2>&1 &
  local p
  p=$(pid_from_file "$RUN/mysqld.pid") || die "mariadbd wrote no pid (see $LOG/mysqld.log)"; record mariadbd "$p"
  wait_until "$TIMEOUT" mariadb-admin --no-defaults -S "$RUN/mysqld.sock" ping || die "mariadbd not answering (see $LOG/mysqld.log)"
  mariadb --no-defaults -S "$RUN/mysqld.sock" -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-local';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-local';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || die "creating the slurm DB user failed"
  log "mariadbd up (pid $p, 127.0.0.1:$MYSQL_PORT)"
}

start_slurmdbd() {
  owned_pid slurmdbd >/dev/null && { log "slurmdbd already running"; return 0; }
  port_busy "$DBD_PORT" && die "port $DBD_PORT busy - another slurmdbd? set SLURM_LOCAL_DBD_PORT"
  rm -f "$RUN/slurmdbd.pid"
  # slurmdbd has no -f: it reads slurmdbd.conf beside $SLURM_CONF
  SLURM_CONF=$CONF /usr/sbin/slurmdbd || die "slurmdbd failed (see $LOG/slurmdbd.log)"
  local p; p=$(pid_from_file "$RUN/slurmdbd.pid") || die "slurmdbd wrote no pid (see $LOG/slurmdbd.log)"; record slurmdbd "$p"
  wait_until "$TIMEOUT" sacctmgr -n list cluster || die "slurmdbd not answering (see $LOG/slurmdbd.log)"
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" > /dev/null || die "sacctmgr add cluster failed"
  fi
  log "slurmdbd up (pid $p); cluster $CLUSTER registered"
}

start_slurmctld() {
  owned_pid slurmctld >/dev/null && { log "slurmctld already running"; return 0; }
  port_busy "$CTLD_PORT" && die "port $CTLD_PORT busy - another slurmctld? set SLURM_LOCAL_CTLD_PORT"
  rm -f "$RUN/slurmctld.pid"
  /usr/sbin/slurmctld -f "$CONF" || die "slurmctld failed (see $LOG/slurmctld.log)"
  local p; p=$(pid_from_file "$RUN/slurmctld.pid") || die "slurmctld wrote no pid (see $LOG/slurmctld.log)"; record slurmctld "$p"
  wait_until "$TIMEOUT" bash -c "scontrol ping | grep -q UP" || die "slurmctld not answering (see $LOG/slurmctld.log)"
  log "slurmctld up (pid $p)"
}

start_slurmd() {
  owned_pid slurmd >/dev/null && { log "slurmd already running"; return 0; }
  port_busy "$SLURMD_PORT" && die "port $SLURMD_PORT busy - another slurmd? set SLURM_LOCAL_SLURMD_PORT"
  rm -f "$RUN/slurmd.pid"
  /usr/sbin/slurmd -f "$CONF" -N "$NODE" || die "slurmd failed (see $LOG/slurmd.log)"
  local p; p=$(pid_from_file "$RUN/slurmd.pid") || die "slurmd wrote no pid (see $LOG/slurmd.log)"; record slurmd "$p"
  log "slurmd up (pid $p)"
}

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -1; }

wait_node() {
  local t0 st i resumed=0; t0=$(now)
  for i in $(seq 1 $((TIMEOUT * 2))); do
    st=$(node_state)
    case "$st" in
      idle) log "node $NODE idle after $(since "$t0") s"; return 0 ;;
      mix|alloc|comp) [ "${1:-}" = any ] && { log "node $NODE is $st (jobs running)"; return 0; } ;;
      drain*|drng|down*|inval*|fail*)
        if [ $resumed = 0 ]; then
          log "node $NODE is $st ($(sinfo -h -R -o %E | head -1)); resuming"
          scontrol update nodename="$NODE" state=resume 2>/dev/null || true; resumed=1
        fi ;;
    esac
    sleep 0.5
  done
  die "node $NODE not idle after $TIMEOUT s (state '$st'; see $LOG/slurmd.log, $LOG/slurmctld.log)"
}

all_running() {
  local n list="munged slurmctld slurmd"
  [ "$ACCOUNTING" = 1 ] && list="munged mariadbd slurmdbd slurmctld slurmd"
  for n in $list; do owned_pid "$n" >/dev/null || return 1; done
}
any_running() {
  local n
  for n in munged mariadbd slurmdbd slurmctld slurmd; do owned_pid "$n" >/dev/null && return 0; done
  return 1
}

scancel_queue() { scancel --full $(squeue -h -o %i) 2>/dev/null || true; }

cancel_all() { # scancel every job in our queue and wait until it is empty
  local i
  scancel_queue
  for i in $(seq 1 $((TIMEOUT * 2))); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && return 0; sleep 0.5; done
  log "jobs still queued after $TIMEOUT s: $(squeue -h -o '%i %T' | tr '\n' ' ')"
}

# When slurmctld starts cold, every job it recovers from its saved state belongs to daemons that
# died without `stop` (a killed test session): pending ones would run again, running ones keep the
# node 'mix' for ever. `forget_orphans` (before slurmd starts) cancels them, so that accounting
# records their end; `release_node` (after) frees an allocation a cancelled job still holds.
ORPHANS=
forget_orphans() {
  ORPHANS=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  [ -n "${ORPHANS// /}" ] || { ORPHANS=; return 0; }
  log "cold start: cancelling the jobs of a cluster stopped without 'stop': $ORPHANS"
  scancel_queue
}
release_node() {
  local i
  [ -n "$ORPHANS" ] || return 0
  cancel_all
  for i in $(seq 1 10); do [ "$(node_state)" = idle ] && return 0; sleep 0.5; done
  log "node $NODE is $(node_state) with an empty queue; down and resume to free it"
  scontrol update nodename="$NODE" state=down reason="orphans of a stopped cluster" 2>/dev/null || true
  scontrol update nodename="$NODE" state=resume 2>/dev/null || true
}

do_start() {
  local t0; t0=$(now)
  have_pkgs || { [ "$AUTO_INSTALL" = 1 ] && do_install; } || true
  have_pkgs || die "packages missing: run '$0 install' (or set SLURM_LOCAL_INSTALL=1)"
  mkdir -p "$DIR"/{etc,state,spool,log,run}; chmod 755 "$RUN"
  if all_running; then
    log "already running from $DIR"
    link_etc; wait_node any; return 0
  fi
  if ! any_running || [ ! -f "$CONF" ]; then write_conf; log "config written to $DIR/etc"; fi
  link_etc
  start_munged
  if [ "$ACCOUNTING" = 1 ]; then start_mariadb; start_slurmdbd; fi
  local cold=1; owned_pid slurmctld >/dev/null && cold=0
  start_slurmctld
  if [ $cold = 1 ]; then forget_orphans; fi
  start_slurmd
  release_node
  wait_node
  log "cluster up in $(since "$t0") s: $(sinfo -h -o '%P %a %D %t %N %G' | head -1)"
  log "clients: export SLURM_CONF=$CONF$([ "$LINK_ETC" = 1 ] && echo " (or rely on $ETC_LINK)")"
}

stop_one() { # name
  local p i
  p=$(owned_pid "$1") || { rm -f "$RUN/$1.owned"; return 0; }
  kill -TERM "$p" 2>/dev/null
  for i in $(seq 1 $((TIMEOUT * 5))); do [ -d "/proc/$p" ] || break; sleep 0.2; done
  if [ -d "/proc/$p" ]; then log "$1 (pid $p) ignored SIGTERM; SIGKILL"; kill -KILL "$p" 2>/dev/null; sleep 0.5; fi
  rm -f "$RUN/$1.owned"
  log "$1 (pid $p) stopped"
}

do_stop() {
  local i
  any_running || { log "nothing of ours running from $DIR"; unlink_etc; return 0; }
  if owned_pid slurmctld >/dev/null; then
    if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
      log "cancelling jobs: $(squeue -h -o %i | tr '\n' ' ')"
      cancel_all
    fi
  fi
  for n in slurmd slurmctld slurmdbd mariadbd munged; do stop_one "$n"; done
  unlink_etc
}

do_crash() { # SIGKILL our jobs' processes and daemons, as a killed session leaves them: state stays
  local pid parent n
  if owned_pid slurmd >/dev/null; then
    for pid in $(scontrol listpids 2>/dev/null | awk 'NR > 1 {print $1}'); do
      parent=$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null) || continue
      [ "$(cat "/proc/$parent/comm" 2>/dev/null)" = slurmstepd ] && kill -KILL "$parent" 2>/dev/null
      kill -KILL "$pid" 2>/dev/null
    done
  fi
  for n in slurmd slurmctld slurmdbd mariadbd munged; do
    pid=$(owned_pid "$n") && { kill -KILL "$pid"; log "$n (pid $pid) killed"; }
  done
  sleep 1
}

do_status() {
  local n p
  for n in munged mariadbd slurmdbd slurmctld slurmd; do
    if p=$(owned_pid "$n"); then echo "$n: running (pid $p)"; else echo "$n: not running"; fi
  done
  if owned_pid slurmctld >/dev/null; then sinfo -o '%P %a %D %t %N %G'; squeue; fi
}

case "${1:-}" in
  install) do_install ;;
  install-if-missing) have_pkgs || do_install ;;
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop; rm -f "$CONF"; do_start ;;
  restart-slurmd) stop_one slurmd; start_slurmd; wait_node any ;;
  crash) do_crash ;;
  status) do_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  clean) do_stop; [ -n "$DIR" ] && [ "$DIR" != / ] && rm -rf "$DIR"; echo "removed $DIR" ;;
  *) sed -n '2,40p' "$0"; exit 2 ;;
esac
