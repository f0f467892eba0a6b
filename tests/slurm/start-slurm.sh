#!/usr/bin/env bash
# Start a real single-node SLURM cluster (slurmctld + slurmd + slurmdbd/MariaDB for sacct) without systemd,
# so the workflow's SLURM profile can be tested end to end. Needs root and Debian/Ubuntu packages.
#
#   sudo tests/slurm/start-slurm.sh          install (first time) and start; idempotent
#   sudo tests/slurm/start-slurm.sh stop     stop the daemons (by PID file)
#
# Exit status 0 means `sinfo` shows an idle node and `sacct` answers.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "start-slurm: needs root (installs packages and starts daemons)" >&2
    exit 2
fi

stop_pid() {  # stop one daemon by its PID file and wait until it is gone
    local pidfile=$1
    [ -f "$pidfile" ] || return 0
    local pid
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
}

if [ "${1:-start}" = stop ]; then
    stop_pid /run/slurmd.pid
    stop_pid /run/slurmctld.pid
    stop_pid /run/slurmdbd.pid
    stop_pid /run/mysqld/mysqld.pid
    stop_pid /run/munge/munged.pid
    exit 0
fi

if sinfo -h -o %T 2>/dev/null | grep -q idle && sacct -n >/dev/null 2>&1; then
    exit 0  # already up
fi

packages="slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    added_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then  # keep package scripts from starting services
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $packages >/dev/null
    [ -n "$added_policy" ] && rm -f /usr/sbin/policy-rc.d
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /run/mysqld
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld
[ -f /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key

host=$(hostname -s)
node_line=$(slurmd -C | head -1)
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
mem=$((mem * 95 / 100))
cat > /etc/slurm/slurm.conf <<EOF
# single-node cluster for tests: no systemd, no cgroups
ClusterName=localcluster
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
MinJobAge=300
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DebugLevel=info
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmlocalpw
StorageType=accounting_storage/mysql
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
SlurmUser=root
EOF
chmod 600 /etc/slurm/slurmdbd.conf

wait_for() {  # wait_for SECONDS CMD...: poll until CMD succeeds
    local t=$1
    shift
    for _ in $(seq 1 $((t * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "start-slurm: timed out waiting for: $*" >&2
    return 1
}

[ -f /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null || runuser -u munge -- munged
if ! { [ -f /run/mysqld/mysqld.pid ] && kill -0 "$(cat /run/mysqld/mysqld.pid)" 2>/dev/null; }; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
    setsid mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
        --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 >/var/log/slurm/mariadb.log 2>&1 < /dev/null &
fi
wait_for 30 mariadb-admin ping
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmlocalpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

stop_pid /run/slurmd.pid
stop_pid /run/slurmctld.pid
[ -f /run/slurmdbd.pid ] && kill -0 "$(cat /run/slurmdbd.pid)" 2>/dev/null || slurmdbd
wait_for 30 sacctmgr -n list cluster
slurmctld
wait_for 30 scontrol ping
slurmd
wait_for 30 bash -c "sinfo -h -o %T | grep -q idle"
wait_for 30 sacct -n
echo "start-slurm: SLURM is up ($(sinfo -h -o '%P %D %T'))"
