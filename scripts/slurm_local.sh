#!/usr/bin/env bash
# Private single-node SLURM 22.05 cluster from Debian bookworm packages: no systemd, no cgroups,
# nothing written under /etc at runtime. Everything (config, keys, sockets, logs, state, PID
# files, the MariaDB datadir) lives in DIR.
#
#   scripts/slurm_local.sh install                   # apt-get the packages (skipped if present)
#   scripts/slurm_local.sh start  DIR [--accounting] # munged, (mariadbd, slurmdbd), slurmctld, slurmd
#   scripts/slurm_local.sh status DIR                # which daemons run; sinfo
#   scripts/slurm_local.sh stop   DIR                # cancel jobs, stop exactly the daemons of DIR
#   then: export SLURM_CONF=DIR/etc/slurm.conf       # sbatch/squeue/sacct/submitit/hydra use it
#
# Partitions: debug (default, PriorityTier=1, preemptible: PreemptMode=REQUEUE, GraceTime=10),
# low (same as debug, kept for the notes' examples) and high (PriorityTier=10, never preempted).
# A job in `high` that needs the CPUs of a running debug/low job preempts it; the victim gets its
# --signal (submitit: USR2 -> checkpoint -> requeue) thanks to preempt_send_user_signal.
# --accounting adds MariaDB + slurmdbd so that `sacct` works (submitit needs it to see jobs that
# died without a result, e.g. cancelled ones).
#
# Needs root (SlurmUser=root). Packages: slurm-wlm munge (+ slurmdbd mariadb-server).
# Recipe and pitfalls: docs in shared/notes/slurm_local.md.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin  # the daemons live in /usr/sbin, not always on a CI PATH

PKGS=(slurm-wlm munge slurmdbd mariadb-server)
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)  # stop order

usage() {
  echo "usage: $0 install | start DIR [--accounting] | stop DIR | status DIR" >&2
  exit 2
}
log() { echo "slurm_local: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------------------------------------
cmd_install() {
  local missing=() p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
      missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "already installed: ${PKGS[*]}"
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || die "install needs root (missing: ${missing[*]})"
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d denies starting the services in containers ("invoke-rc.d: ... denied"): harmless
  if ! apt-get install -y --no-install-recommends "${PKGS[@]}"; then
    log "apt-get install failed; retrying after apt-get update"
    apt-get update
    apt-get install -y --no-install-recommends "${PKGS[@]}"
  fi
}

# ---------------------------------------------------------------------------------------------
# PID file helpers. A PID only counts as ours when /proc/PID/comm is the expected daemon, so a
# stale PID file whose number was recycled never makes us signal a foreign process.
pidfile_of() {  # pidfile_of DAEMON -> path (slurmd's file is slurmd-<host>.pid)
  if [ "$1" = slurmd ]; then echo "$RUN/slurmd-$H.pid"; else echo "$RUN/$1.pid"; fi
}
live_pid() {  # live_pid DAEMON -> prints the pid and returns 0 if that daemon of DIR is running
  local f pid comm
  f=$(pidfile_of "$1")
  [ -s "$f" ] || return 1
  pid=$(tr -dc 0-9 <"$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$comm" = "$1" ] || return 1
  echo "$pid"
}
stop_daemons() {  # stop_daemons DAEMON...: TERM all, wait up to 10 s, then KILL; drop PID files
  local d pid pids=() names=()
  for d in "$@"; do
    if pid=$(live_pid "$d"); then
      kill "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$d")
    fi
    rm -f "$(pidfile_of "$d")"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  local i alive
  for _ in $(seq 200); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 1 ] || break
    sleep 0.05
  done
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      log "${names[$i]} (pid ${pids[$i]}) still alive after 10 s, sending KILL"
      kill -9 "${pids[$i]}" 2>/dev/null || true
    fi
    log "stopped ${names[$i]} (pid ${pids[$i]})"
  done
}

wait_for() {  # wait_for SECONDS CMD... ; polls every 0.1 s
  local n=$(($1 * 10))
  shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "timeout waiting for: $*"
  return 1
}

TAKEN=" "
pick_port() {  # pick_port VAR START: first TCP port >= START not listening and not picked before
  local -n _out=$1
  local p=$2
  while ss -Htln "sport = :$p" | grep -q . || [[ $TAKEN == *" $p "* ]]; do p=$((p + 1)); done
  TAKEN+="$p "
  _out=$p
}

cancel_jobs() {  # ask slurm to end every job of this cluster, so no job process outlives slurmd
  live_pid slurmctld >/dev/null && live_pid slurmd >/dev/null || return 0
  local ids
  ids=$(timeout 15 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ') || return 0
  [ -n "${ids// /}" ] || return 0
  log "cancelling jobs: $ids"
  # shellcheck disable=SC2086
  timeout 15 scancel $ids 2>/dev/null || true
  # submitit ignores SIGTERM, so its jobs die after KillWait (3 s) with SIGKILL
  for _ in $(seq 150); do
    [ -z "$(timeout 5 squeue -h -t R,CG,S -o %A 2>/dev/null)" ] && return 0
    sleep 0.1
  done
  log "jobs still running after 15 s: $(timeout 5 squeue -h -o %A 2>/dev/null | tr '\n' ' ')"
}

cmd_stop() {
  [ -d "$DIR" ] || { log "$DIR does not exist; nothing to stop"; return 0; }
  if [ -f "$DIR/etc/slurm.conf" ]; then
    export SLURM_CONF=$DIR/etc/slurm.conf
    cancel_jobs
  fi
  # in dependency order; daemons of one tier stop concurrently (each takes 1-4 s to shut down)
  stop_daemons slurmd slurmctld
  stop_daemons slurmdbd  # after slurmctld: it flushes its last job records to slurmdbd
  stop_daemons mariadbd munged
  rm -f "$RUN/munge.sock" "$RUN/munge.sock.lock" "$RUN/mysqld.sock" "$RUN/mysqld.sock.lock"
  return 0
}

cmd_status() {
  local d pid n=0 up=0 f
  for d in "${DAEMONS[@]}"; do
    f=$(pidfile_of "$d")
    [ -e "$f" ] || [ "$d" = slurmd ] || [ "$d" = slurmctld ] || [ "$d" = munged ] || continue
    n=$((n + 1))
    if pid=$(live_pid "$d"); then
      up=$((up + 1))
      printf '%-10s running (pid %s)\n' "$d" "$pid"
    else
      printf '%-10s stopped\n' "$d"
    fi
  done
  if [ "$up" -eq 0 ]; then return 3; fi
  if live_pid slurmctld >/dev/null; then
    SLURM_CONF=$DIR/etc/slurm.conf timeout 10 sinfo || true
    echo "export SLURM_CONF=$DIR/etc/slurm.conf"
  fi
  [ "$up" -eq "$n" ] || return 1
}

# ---------------------------------------------------------------------------------------------
START_OK=0
on_start_exit() {
  local rc=$?
  if [ "$START_OK" -ne 1 ]; then
    log "start failed (rc=$rc); stopping what was started in $DIR. Logs: $DIR/log/"
    local f
    for f in "$DIR"/log/*.log; do
      [ -s "$f" ] && { echo "--- tail $f" >&2; tail -n 5 "$f" >&2; }
    done
    cmd_stop || true
    [ "$rc" -ne 0 ] || rc=1
  fi
  exit "$rc"
}

cmd_start() {
  local acct=${1:-}
  case "$acct" in "" | --accounting) ;; *) usage ;; esac
  [ "$(id -u)" -eq 0 ] || die "needs root (SlurmUser=root)"
  local b
  for b in ss munged mungekey munge slurmctld slurmd sinfo squeue scancel; do
    command -v "$b" >/dev/null || die "$b not found; run: $0 install"
  done
  if [ "$acct" = --accounting ]; then
    for b in slurmdbd mariadbd mariadb mariadb-install-db; do
      command -v "$b" >/dev/null || die "$b not found; run: $0 install"
    done
  fi
  if live_pid slurmctld >/dev/null || live_pid munged >/dev/null; then
    if cmd_status >&2; then
      log "already running in $DIR"
      echo "export SLURM_CONF=$DIR/etc/slurm.conf"
      return 0
    fi
    die "a partial cluster runs in $DIR; run: $0 stop $DIR"
  fi
  [[ $DIR != *[[:space:]]* ]] || die "DIR must not contain whitespace (slurm.conf paths): $DIR"
  # unix socket paths are limited to 107 bytes
  [ ${#DIR} -le 80 ] || die "DIR path too long for unix sockets (${#DIR} > 80 chars): $DIR"

  mkdir -p "$DIR"/{etc,munge,run,log,state,spool}
  chmod 755 "$DIR" "$DIR/run"
  chmod 700 "$DIR/munge"
  # munged refuses a socket whose ancestors are not o+x ("Socket is inaccessible: execute
  # permissions for all required"), e.g. below pytest's tmp_path (/tmp/pytest-of-root is 0700).
  local p=$DIR
  while [ "$p" != / ]; do
    p=$(dirname "$p")
    [ $((0$(stat -c %a "$p") & 1)) -eq 1 ] || die "$p is not o+x; munged would refuse $DIR/run"
  done
  trap on_start_exit EXIT
  trap 'exit 130' INT TERM

  # ---- munge: private key and socket ----------------------------------------------------
  [ -s "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key"
  munged --key-file="$DIR/munge/munge.key" --socket="$RUN/munge.sock" \
    --pid-file="$RUN/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
  wait_for 10 munge -S "$RUN/munge.sock" -n

  local CTLD_PORT SLURMD_PORT DB_PORT DBD_PORT MEM_MB TOPO ACCT_LINES
  pick_port CTLD_PORT 16817
  pick_port SLURMD_PORT 16818
  MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  # CPU topology exactly as slurmd detects it (avoids "low socket*core*thread count" drain)
  TOPO=$(slurmd -C | head -1 | tr ' ' '\n' |
    grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')

  ACCT_LINES="AccountingStorageType=accounting_storage/none"
  if [ "$acct" = --accounting ]; then
    pick_port DB_PORT 13306
    pick_port DBD_PORT 16819
    # ---- MariaDB: private datadir, TCP on 127.0.0.1 only ------------------------------------
    if [ ! -d "$DIR/mysql/mysql" ]; then
      rm -rf "$DIR/mysql"
      mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$DIR/log/mariadb-install.log" 2>&1
    fi
    setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql" \
      --socket="$RUN/mysqld.sock" --port="$DB_PORT" --bind-address=127.0.0.1 \
      --pid-file="$RUN/mariadbd.pid" --log-error="$DIR/log/mariadbd.log" \
      --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 --skip-log-bin \
      </dev/null >/dev/null 2>&1 &
    # mariadbd writes the same pid itself later; writing it now lets a failed start stop it
    echo $! >"$RUN/mariadbd.pid"
    wait_for 30 mariadb --no-defaults -S "$RUN/mysqld.sock" -uroot -e 'select 1'
    mariadb --no-defaults -S "$RUN/mysqld.sock" -uroot -e "
      CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
      CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    # slurmdbd.conf is looked up next to $SLURM_CONF; it must be 0600 and owned by SlurmUser
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$RUN/munge.sock
LogFile=$DIR/log/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
    # the slurmctld/sacct -> slurmdbd link ignores AuthInfo=socket=: AccountingStoragePass is
    # the documented "alternate munge socket" for it
    ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$RUN/munge.sock"
  else
    rm -f "$DIR/etc/slurmdbd.conf"
  fi

  cat >"$DIR/etc/slurm.conf" <<EOF
# generated by scripts/slurm_local.sh for $DIR
ClusterName=localtest
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
# socket=: private munged; cred_expire=5 (the minimum): requeued jobs restart after ~6 s, not ~122 s
AuthInfo=socket=$RUN/munge.sock,cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/etc/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
$ACCT_LINES
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
# main scheduling pass every 1 s: submit -> finished ~1 s (~3 s with the defaults). Preemption is
# only decided by the backfill pass (default every 30 s): bf_interval=1 makes it ~1 s.
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=300
# SIGTERM -> SIGKILL delay on cancel/time limit (submitit jobs ignore SIGTERM)
KillWait=3
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
# real preemption: a 'high' job requeues a debug/low job, which gets its --signal (USR2) first
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=$H NodeAddr=127.0.0.1 ${TOPO}RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=10 DefMemPerCPU=1000
PartitionName=low   Nodes=$H MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=10 DefMemPerCPU=1000
PartitionName=high  Nodes=$H MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF DefMemPerCPU=1000
EOF
  : >"$DIR/etc/plugstack.conf"
  export SLURM_CONF=$DIR/etc/slurm.conf

  if [ "$acct" = --accounting ]; then
    slurmdbd
    wait_for 30 bash -c "ss -Htln 'sport = :$DBD_PORT' | grep -q ."
  fi
  slurmctld
  slurmd
  wait_for 30 bash -c "sinfo -h -N -o %T | grep -qE '^(idle|mixed|allocated)'"
  START_OK=1
  log "cluster up in $DIR (slurmctld :$CTLD_PORT${DBD_PORT:+, slurmdbd :$DBD_PORT})"
  echo "export SLURM_CONF=$SLURM_CONF"
}

# ---------------------------------------------------------------------------------------------
cmd=${1:-}
case "$cmd" in
  install) [ $# -eq 1 ] || usage; cmd_install ;;
  start | stop | status)
    [ $# -ge 2 ] || usage
    DIR=$(realpath -m "$2")
    RUN=$DIR/run
    H=$(hostname -s)
    case "$cmd" in
      start) [ $# -le 3 ] || usage; cmd_start "${3:-}" ;;
      stop) [ $# -eq 2 ] || usage; cmd_stop ;;
      status) [ $# -eq 2 ] || usage; cmd_status ;;
    esac
    ;;
  *) usage ;;
esac
