#!/usr/bin/env bash
# try-live.sh: boot systemd as PID 1 in a sealed namespace, start agent-supervisor.service
# there exactly as written in systemd/agent-supervisor.service (Type=notify, the watchdog, the
# whole hardening set, User=agentsup), and check that the daemon really works under it: READY=1
# arrives, STATUS= is shown, the watchdog is fed, the control socket answers root, both demo
# agents run and speak the protocol (uvloop, the embedded redis-server, the socketpair channel
# all under the seccomp filter, the private /dev and /proc, MemoryDenyWriteExecute, the BPF
# address filter), `agentsup switch green` works, the metrics answer on 127.0.0.1:19464, and
# `systemctl stop` ends it cleanly inside TimeoutStopSec. One PASS or FAIL line per check; the
# exit status is non-zero on any FAIL.
#
# Why all the sealing: an init system booted naively on a live machine takes it over. It runs
# systemd-tmpfiles (which empties /tmp and cleans /run, taking PostgreSQL's lock file with it),
# starts every enabled service (a second prometheus on the host's network), writes sysctls
# (kernel.core_pattern, fs.nr_open), sets the hostname, creates /dev/log, and builds cgroups in
# the host's hierarchy. Here, everything happens in new PID, mount, UTS, IPC, network and
# cgroup namespaces, set up before systemd is exec'd:
#   - / is re-bound read-only (a per-mount flag in this namespace only: the host's / stays rw),
#     and only fresh tmpfs are writable: /tmp, /var (so /var/lib, /var/log/journal,
#     /var/lib/systemd, /var/tmp), /run, /opt (the install: a venv made at
#     /opt/agent-supervisor from wheels built beforehand, with Debian's python3.11, which the
#     unit's user can read, unlike /root/.pyenv behind ProtectHome and /root's mode 0700);
#   - /etc is a bind of a copy: agentsup is added to its passwd and group, it has its own
#     machine-id, hostname and an empty fstab, /etc/agent-supervisor/config.toml, and its
#     /etc/systemd/system holds only the unit under test, the target that wants it, and a mask
#     (a symlink to /dev/null) for every other service, socket, timer, path, mount, automount
#     and swap unit on this machine, journald's excepted: nothing else can start;
#   - /dev is a tmpfs with the basic nodes and a new devpts instance; /sys is a new read-only
#     sysfs with a cgroup2 mounted at /sys/fs/cgroup, whose root is a cgroup of this run's own
#     (removed at the end); /proc/sys and /proc/sysrq-trigger are read-only;
#   - systemd runs with container=agentsup-try and without CAP_SYS_MODULE, CAP_SYS_TIME,
#     CAP_SYS_RAWIO, CAP_SYSLOG, the audit capabilities and a few more in its bounding set;
#   - the network namespace has only its loopback: 127.0.0.1:19464 is the namespace's own.
# The checks run inside through nsenter. The namespace is torn down (SIGKILL to its PID 1, which
# kills everything in it) on every exit, failure included; then the host is checked against a
# snapshot taken before: a marker file in /tmp, PostgreSQL, Redis, the other services' ports,
# nothing new on 9090 or 19464, the hostname, core_pattern, fs.nr_open, / still rw, /etc/passwd,
# the top of /dev and /run, and no cgroup left behind.
#
# Usage (root; needs util-linux's unshare, nsenter and setpriv, systemd, python3.11 with venv,
# redis-server, and the package registries once, to build the wheels):
#   sudo systemd/try-live.sh
# AGENTSUP_TRY_CACHE (default /var/cache/agentsup-try) keeps the dependencies' wheels between
# runs. AGENTSUP_TRY_DROPIN='[Service]\nMemoryDenyWriteExecute=no' adds a drop-in to the unit:
# the way to bisect a hardening option that breaks the daemon.
set -euo pipefail

self="$(readlink -f "${BASH_SOURCE[0]}")"
root="$(cd "$(dirname "$self")/.." && pwd)"
clean_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
cache="${AGENTSUP_TRY_CACHE:-/var/cache/agentsup-try}"
metrics_port=19464
socket=/run/agent-supervisor/control.sock
venv=/opt/agent-supervisor
unit=agent-supervisor.service
# Units left unmasked besides the one under test: the journal, so that its output is kept.
allowed_units=(systemd-journald.service systemd-journald.socket
    systemd-journald-dev-log.socket systemd-journald-audit.socket)
# Dropped from systemd's bounding set: what reaches the host's kernel beyond the namespaces.
dropped_caps=-sys_module,-sys_time,-sys_rawio,-syslog,-wake_alarm,-audit_control,-audit_read
dropped_caps+=,-audit_write,-sys_pacct,-mac_admin,-mac_override,-block_suspend,-sys_tty_config

say() { printf 'try-live: %s\n' "$*"; }
die() { say "error: $*" >&2; exit 2; }

# --- inside: PID 1 of the new namespaces, until it execs systemd ---------------------------

# The host's own files must not be written: every writable place is a tmpfs of this namespace.
seal_and_boot() {
    local stage="$1"
    umask 022
    export PATH="$clean_path"
    # /run first, and with -n: mount(8) would otherwise create the host's /run/mount for its
    # utab; once this tmpfs is there it keeps that here.
    mount -n -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
    mkdir -m 1777 /run/lock
    mount --bind "$stage/etc" /etc
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /opt

    # The install, the README's way, offline, at the path the unit names.
    mkdir "$venv"
    python3.11 -m venv "$venv"
    env -i PATH="$clean_path" PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$venv/bin/pip" install -q --no-index --find-links "$cache/wheels" agent-supervisor
    env -i PATH="$clean_path" "$venv/bin/agentsup" check-config \
        -c /etc/agent-supervisor/config.toml >/dev/null

    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /var
    mkdir -p /var/lib /var/log /var/cache /var/spool
    mkdir -m 1777 /var/tmp
    ln -s ../run /var/run
    ln -s ../run/lock /var/lock

    mount -t tmpfs -o mode=0755,nosuid tmpfs /dev
    mknod -m 666 /dev/null c 1 3
    mknod -m 666 /dev/zero c 1 5
    mknod -m 666 /dev/full c 1 7
    mknod -m 666 /dev/random c 1 8
    mknod -m 666 /dev/urandom c 1 9
    mknod -m 666 /dev/tty c 5 0
    mkdir /dev/pts /dev/shm
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
    ln -s pts/ptmx /dev/ptmx
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
    ln -s /proc/self/fd /dev/fd
    ln -s /proc/self/fd/0 /dev/stdin
    ln -s /proc/self/fd/1 /dev/stdout
    ln -s /proc/self/fd/2 /dev/stderr

    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
    mount --bind /proc/sys /proc/sys
    mount -o remount,bind,ro /proc/sys
    if [[ -e /proc/sysrq-trigger ]]; then
        mount --bind /proc/sysrq-trigger /proc/sysrq-trigger
        mount -o remount,bind,ro /proc/sysrq-trigger
    fi
    # "bind" makes this a per-mount flag of this namespace's view of /, not the filesystem's.
    mount -o remount,bind,ro /

    cd /
    say "sealed; booting systemd"
    exec setpriv --bounding-set "$dropped_caps" -- \
        env -i container=agentsup-try TERM=dumb PATH="$clean_path" \
        /lib/systemd/systemd --system --unit=agentsup-try.target \
        --log-target=journal --show-status=false
}

if [[ "${1:-}" == __pid1 ]]; then
    seal_and_boot "$2"
fi

# --- outside: prepare, boot, check, tear down, check the host ------------------------------

failures=0
pass() { say "PASS $*"; }
fail() { say "FAIL $*"; failures=$((failures + 1)); }
lacks() { ! grep -qiE -- "$1" <<<"$2"; }
check() { # check DESCRIPTION COMMAND...: PASS or FAIL by the command's status
    local what="$1"
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

[[ $(id -u) -eq 0 ]] || die "run as root: it boots an init system in new namespaces"
for tool in unshare nsenter setpriv mount mknod python3.11 redis-server ss; do
    PATH="$clean_path" command -v "$tool" >/dev/null || die "$tool not found"
done
[[ -x /lib/systemd/systemd ]] || die "/lib/systemd/systemd not found (apt-get install systemd)"
PATH="$clean_path" python3.11 -c 'import ensurepip, venv' 2>/dev/null \
    || die "python3.11 cannot make a venv (apt-get install python3-venv)"

# The host's cgroup2 hierarchy: all of /sys/fs/cgroup, or the "unified" half of a hybrid.
cgroup_base=""
for candidate in /sys/fs/cgroup /sys/fs/cgroup/unified; do
    if [[ "$(stat -fc %T "$candidate" 2>/dev/null)" == cgroup2fs ]]; then
        cgroup_base="$candidate"
        break
    fi
done
[[ -n "$cgroup_base" ]] || die "no cgroup2 hierarchy mounted"
# This run's cgroup is made under this script's own, the launcher goes back there once the
# namespace is up.
home_cgroup="$cgroup_base$(sed -n 's/^0:://p' "/proc/$$/cgroup")"
home_cgroup="${home_cgroup%/}"
[[ -w "$home_cgroup/cgroup.procs" ]] || die "cannot write $home_cgroup/cgroup.procs"

# What a run killed without its trap (SIGKILL) leaves: its stage, its marker, its empty cgroup
# (its namespace died with it: see --kill-child below). Each is named by the run's pid.
for stale in /tmp/agentsup-try.* /tmp/agentsup-try-marker.* "$home_cgroup"/agentsup-try.*; do
    [[ -e "$stale" ]] || continue
    owner="${stale##*/agentsup-try?}"
    owner="${owner#marker.}"
    owner="${owner%%.*}"
    [[ "$owner" =~ ^[0-9]+$ ]] || continue
    kill -0 "$owner" 2>/dev/null && continue
    say "removing $stale, left by run $owner"
    if [[ "$stale" == "$home_cgroup"/* ]]; then
        find "$stale" -depth -type d -exec rmdir {} + 2>/dev/null || true
    else
        rm -rf "$stale"
    fi
done

stage="$(mktemp -d "/tmp/agentsup-try.$$.XXXXXX")"
chmod 0755 "$stage"
marker="/tmp/agentsup-try-marker.$$"
cgroup="$home_cgroup/agentsup-try.$$"
unshare_pid=""
pid1=""

# One line per fact about the host that a leak from the namespace could change.
host_state() {
    local port version
    printf 'marker in /tmp: %s\n' "$(cat "$marker" 2>/dev/null || echo missing)"
    printf 'host / mount: %s\n' "$(findmnt -no OPTIONS / | cut -d, -f1)"
    printf 'hostname: %s\n' "$(uname -n)"
    printf 'kernel.core_pattern: %s\n' "$(cat /proc/sys/kernel/core_pattern)"
    printf 'fs.nr_open: %s\n' "$(cat /proc/sys/fs/nr_open)"
    printf '/etc/passwd and /etc/group: %s\n' "$(cat /etc/passwd /etc/group | sha256sum | cut -c1-16)"
    printf 'top of /dev: %s\n' "$(find /dev -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | tr '\n' ' ')"
    printf 'top of /run: %s\n' "$(find /run -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | tr '\n' ' ')"
    for version in /etc/postgresql/*; do
        [[ -d "$version" ]] || continue
        version="${version##*/}"
        if pg_ctlcluster --skip-systemctl-redirect "$version" main status >/dev/null 2>&1; then
            printf 'postgresql %s/main: running\n' "$version"
        else
            printf 'postgresql %s/main: not running\n' "$version"
        fi
    done
    printf 'redis 6379 ping: %s\n' "$(redis-cli -p 6379 ping 2>/dev/null || echo no answer)"
    for port in 5432 3306 6379 5672 1883 4222 9090 "$metrics_port"; do
        if [[ -n "$(ss -Hltn "sport = :$port")" ]]; then
            printf 'tcp port %s: listening\n' "$port"
        else
            printf 'tcp port %s: closed\n' "$port"
        fi
    done
}

teardown() {
    if [[ -n "$pid1" ]] && kill -0 "$pid1" 2>/dev/null; then
        kill -KILL "$pid1" # PID 1 of a PID namespace: the kernel kills every process in it
    fi
    if [[ -n "$unshare_pid" ]]; then
        wait "$unshare_pid" 2>/dev/null || true
    fi
    if [[ -d "$cgroup" ]]; then
        local tries
        for tries in $(seq 50); do
            find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true
            [[ -d "$cgroup" ]] || break
            sleep 0.1
        done
        : "$tries"
    fi
}

finish() {
    local status=$?
    trap - EXIT INT TERM
    teardown
    if [[ -s "$stage/host-before" ]]; then
        host_state >"$stage/host-after"
        local line
        while IFS= read -r line; do
            if grep -qxF -- "$line" "$stage/host-after"; then
                pass "host unchanged: $line"
            else
                fail "host changed: was '$line', now '$(grep -F -- "${line%%: *}: " \
                    "$stage/host-after" || echo gone)'"
            fi
        done <"$stage/host-before"
        check "host: tcp port $metrics_port never opened outside the namespace" \
            grep -qxF "tcp port $metrics_port: closed" "$stage/host-after"
        check "host: this run's cgroup $cgroup removed" test ! -e "$cgroup"
    fi
    rm -f "$marker"
    rm -rf "$stage"
    if ((status != 0 && failures == 0)); then
        fail "try-live.sh stopped early (status $status)"
    fi
    if ((failures)); then
        say "FAILED: $failures check(s)"
        exit 1
    fi
    say "PASS: all checks passed"
    exit 0
}
trap finish EXIT
trap 'exit 130' INT TERM

# The host as it is before: every line must read the same after.
echo "agentsup-try $$ $(date -u +%FT%TZ)" >"$marker"
host_state >"$stage/host-before"
while IFS= read -r line; do say "host before: $line"; done <"$stage/host-before"

# Wheels for the offline install inside: the package from this tree, its dependencies cached.
say "building wheels in $cache/wheels"
mkdir -p "$cache/wheels"
if [[ ! -x "$cache/build-env/bin/pip" ]]; then
    PATH="$clean_path" python3.11 -m venv "$cache/build-env"
fi
mkdir "$stage/src"
cp -r "$root/pyproject.toml" "$root/README.md" "$root/supervisor" "$stage/src/"
find "$stage/src" -name __pycache__ -prune -exec rm -rf {} +
rm -f "$cache"/wheels/agent_supervisor-*.whl
"$cache/build-env/bin/pip" wheel -q --disable-pip-version-check --wheel-dir "$cache/wheels" \
    --find-links "$cache/wheels" "$stage/src" >"$stage/pip.log" 2>&1 \
    || { cat "$stage/pip.log" >&2; die "pip wheel failed"; }

# The namespace's /etc: a copy of the host's, with the trial's changes.
say "staging /etc in $stage/etc"
cp -a /etc "$stage/etc"
etc="$stage/etc"
id=999
while grep -q "^[^:]*:[^:]*:$id:" "$etc/passwd" "$etc/group"; do id=$((id - 1)); done
echo "agentsup:x:$id:$id:agent-supervisor daemon:/var/lib/agent-supervisor:/usr/sbin/nologin" \
    >>"$etc/passwd"
echo "agentsup:x:$id:" >>"$etc/group"
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$etc/machine-id"
echo >>"$etc/machine-id"
echo agentsup-try >"$etc/hostname"
echo "# agentsup-try: nothing to mount" >"$etc/fstab"
rm -rf "$etc/agent-supervisor"
install -d -m 0755 "$etc/agent-supervisor"
cat >"$etc/agent-supervisor/config.toml" <<EOF
[supervisor]
name = "try-live"
state_dir = "/var/lib/agent-supervisor"
control_socket = "$socket"

[metrics]
listen = "127.0.0.1:$metrics_port"

[agents.blue]
command = ["$venv/bin/python", "-m", "supervisor.demo.agent"]
version = "1.0.0"
cwd = "/var/lib/agent-supervisor"

[agents.green]
command = ["$venv/bin/python", "-m", "supervisor.demo.agent"]
version = "2.0.0"
cwd = "/var/lib/agent-supervisor"
EOF
chgrp "$id" "$etc/agent-supervisor/config.toml"
chmod 0640 "$etc/agent-supervisor/config.toml"

units="$etc/systemd/system"
rm -rf "$units"
mkdir -p "$units"
install -m 0644 "$root/systemd/$unit" "$units/$unit"
cat >"$units/agentsup-try.target" <<EOF
[Unit]
Description=agent-supervisor trial: the unit under test and nothing else
Wants=$unit
EOF
if [[ -n "${AGENTSUP_TRY_DROPIN:-}" ]]; then
    mkdir -p "$units/$unit.d"
    printf '%b\n' "$AGENTSUP_TRY_DROPIN" >"$units/$unit.d/try.conf"
    say "drop-in: $(tr '\n' ' ' <"$units/$unit.d/try.conf")"
fi
masked=0
while IFS= read -r name; do
    [[ "$name" == "$unit" ]] && continue
    [[ " ${allowed_units[*]} " == *" $name "* ]] && continue
    ln -sfn /dev/null "$units/$name"
    masked=$((masked + 1))
done < <(
    {
        find /usr/lib/systemd/system /lib/systemd/system /etc/systemd/system \
            /usr/local/lib/systemd/system -mindepth 1 -maxdepth 2 \
            \( -type f -o -type l \) -printf '%f\n' 2>/dev/null
        find /etc/init.d -mindepth 1 -maxdepth 1 -type f -printf '%f.service\n' 2>/dev/null
    } | grep -E '\.(service|socket|timer|path|mount|automount|swap)$' | sort -u
)
say "masked $masked units; unmasked: $unit ${allowed_units[*]}"

# Boot. The launching subshell enters this run's cgroup first: the new cgroup namespace is
# rooted there, and so is everything systemd creates.
mkdir "$cgroup"
(
    echo "$BASHPID" >"$cgroup/cgroup.procs"
    # Should this script die without its trap (SIGKILL), unshare gets SIGKILL too, and then
    # the namespace's PID 1 (--kill-child): no orphaned init keeps running.
    exec setpriv --pdeathsig KILL -- unshare --kill-child=KILL --pid --fork --mount \
        --propagation private --mount-proc --uts --ipc --net --cgroup -- \
        "$BASH" "$self" __pid1 "$stage"
) >"$stage/boot.log" 2>&1 &
unshare_pid=$!

ns() {
    nsenter --target "$pid1" --mount --uts --ipc --net --pid --cgroup -- \
        env -i PATH="$clean_path" LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
wait_for() { # wait_for SECONDS COMMAND...: true once the command succeeds
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}
systemd_is_pid1() {
    kill -0 "$unshare_pid" 2>/dev/null || boot_failed "the namespace ended before systemd started"
    pid1="$(tr -d ' ' <"/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null)"
    [[ -n "$pid1" && "$(readlink "/proc/$pid1/exe" 2>/dev/null)" == */systemd ]]
}
boot_failed() {
    fail "$1"
    say "boot log:"
    sed 's/^/  | /' "$stage/boot.log"
    exit 1
}

wait_for 300 systemd_is_pid1 || boot_failed "systemd did not start as PID 1 of the namespace"
# Only the namespace lives in this run's cgroup: the launcher goes back to this script's.
echo "$unshare_pid" >"$home_cgroup/cgroup.procs"
wait_for 60 ns systemctl show -p Version --value >/dev/null 2>&1 \
    || boot_failed "systemd in the namespace does not answer systemctl"
pass "systemd $(ns systemctl show -p Version --value) is PID 1 of the namespace (host pid $pid1)"

unit_show() { ns systemctl show -p "$1" --value "$unit"; }
unit_settled() { [[ "$(unit_show ActiveState)" =~ ^(active|failed|inactive)$ ]] && \
    [[ -z "$(ns systemctl list-jobs --no-legend "$unit")" ]]; }
journal() { ns journalctl --no-pager -o cat -u "$unit" "$@"; }
show_journal() {
    say "journal of $unit (last 40 lines):"
    journal -n 40 | sed 's/^/  | /'
}

wait_for 120 unit_settled || true
state="$(unit_show ActiveState)"
if [[ "$state" != active ]]; then
    fail "$unit is active (Type=notify: READY=1 came): it is $state ($(unit_show Result))"
    show_journal
    exit 1
fi
pass "$unit is active: Type=notify, so READY=1 came"
started=$SECONDS
main_pid="$(unit_show MainPID)"
watchdog_first="$(unit_show WatchdogTimestampMonotonic)"

others="$(ns systemctl list-units --no-legend --plain --state=active,activating,reloading \
    --type=service,socket,timer,path,automount,swap | awk '{print $1}' \
    | grep -vxF -e "$unit" "${allowed_units[@]/#/-e}" || true)"
check "nothing else runs in the namespace (other active units: ${others:-none})" \
    test -z "$others"

status_text="$(unit_show StatusText)"
check "StatusText is the daemon's STATUS= line: '$status_text'" \
    grep -qE '^active=blue epoch=[0-9]+ mode=.* redis=up$' <<<"$status_text"

check "WatchdogUSec is 10s ($(unit_show WatchdogUSec))" test "$(unit_show WatchdogUSec)" = 10s

uid_in_ns() { ns grep '^Uid:' "/proc/$1/status" 2>/dev/null | cut -f2 || true; }
main_uid="$(uid_in_ns "$main_pid")"
check "the daemon (pid $main_pid) runs as agentsup, uid $id: uid ${main_uid:-?}" \
    test "$main_uid" = "$id"
# The sandbox is really on: seccomp filtering, no_new_privs, no capabilities at all.
sandbox="$(ns grep -E '^(Seccomp|NoNewPrivs|CapEff|CapBnd):' "/proc/$main_pid/status" \
    | tr -s '\t\n' '  ')"
check "the daemon is sandboxed: $sandbox" test "$sandbox" = \
    "NoNewPrivs: 1 Seccomp: 2 CapEff: 0000000000000000 CapBnd: 0000000000000000 " \
    -o "$sandbox" = "CapEff: 0000000000000000 CapBnd: 0000000000000000 NoNewPrivs: 1 Seccomp: 2 "
exposure="$(ns systemd-analyze security "$unit" 2>/dev/null | grep -F 'Overall exposure' || true)"
say "systemd-analyze security of the running unit: ${exposure:-no answer}"

agentsup() { ns "$venv/bin/agentsup" "$@" --socket "$socket"; }
status_json() { agentsup status --json 2>/dev/null; }
children_up() {
    status_json | python3 -c '
import json, sys
s = json.load(sys.stdin)
kids = s["children"]
sys.exit(0 if len(kids) == 2 and all(
    c["state"] == "RUNNING" and c["protocol"] for c in kids.values()) else 1)'
}
if wait_for 30 children_up; then
    pass "agentsup status --json as root: both children RUNNING, protocol true"
else
    fail "agentsup status --json as root: both children RUNNING, protocol true"
    say "status: $(status_json || agentsup status --json 2>&1 | tail -3)"
fi
for pid in $(status_json | python3 -c '
import json, sys
print(" ".join(str(c["pid"]) for c in json.load(sys.stdin)["children"].values()))' || true); do
    uid="$(uid_in_ns "$pid")"
    check "child pid $pid runs as agentsup: uid ${uid:-?}" test "$uid" = "$id"
done

metrics() {
    ns python3.11 -c "
import urllib.request
print(urllib.request.urlopen('http://127.0.0.1:$metrics_port/metrics', timeout=5).read().decode())"
}
metrics_text="$(metrics 2>&1 || true)"
check "metrics on 127.0.0.1:$metrics_port: agentsup_active_epoch and agentsup_redis_up 1" \
    grep -qE '^agentsup_redis_up 1(\.0)?$' <<<"$metrics_text"
grep -q '^agentsup_active_epoch ' <<<"$metrics_text" || fail "no agentsup_active_epoch in metrics"

# IPAddressDeny=any with IPAddressAllow=localhost is a BPF program on the unit's cgroup: a
# probe put into that cgroup (from the host, which sees every cgroup) may connect to 127.0.0.1
# but may not send to 192.0.2.1, an address given to the namespace's loopback for this; the
# same probe outside the unit's cgroup may do both (so the refusal is the unit's filter).
probe_py='
import errno, socket
def attempt(host, kind):
    sock = socket.socket(type=kind)
    sock.settimeout(3)
    try:
        if kind == socket.SOCK_STREAM:
            server = socket.create_server(("0.0.0.0", 0))
            sock.connect((host, server.getsockname()[1]))
            return "connected"
        sock.sendto(b"probe", (host, 9))
        return "sent"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc))
    finally:
        sock.close()
print("tcp 127.0.0.1", attempt("127.0.0.1", socket.SOCK_STREAM),
      "udp 192.0.2.1", attempt("192.0.2.1", socket.SOCK_DGRAM))'
firewall_probe() { # firewall_probe [CGROUP]: run the probe in the namespace, in CGROUP if given
    local procs=/dev/null
    [[ -n "${1:-}" ]] && procs="$1/cgroup.procs"
    # shellcheck disable=SC2016 # $$ and "$@" are the inner shell's
    sh -c 'echo $$ >"$1" && shift && exec "$@"' _ "$procs" \
        nsenter --target "$pid1" --mount --uts --ipc --net --pid --cgroup -- \
        env -i PATH="$clean_path" python3.11 -c "$probe_py" 2>&1 || true
}
if ns ip addr replace 192.0.2.1/32 dev lo 2>/dev/null; then
    outside="$(firewall_probe)"
    inside="$(firewall_probe "$cgroup/system.slice/$unit")"
    check "IPAddressDeny is enforced: outside the unit '$outside', in its cgroup '$inside'" \
        test "$outside/$inside" \
        = "tcp 127.0.0.1 connected udp 192.0.2.1 sent/tcp 127.0.0.1 connected udp 192.0.2.1 EPERM"
else
    say "SKIP IPAddressDeny enforcement: ip(8) could not add an address in the namespace"
fi

epoch_before="$(status_json | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])')"
switch_out="$(agentsup switch green 2>&1)" && switched=0 || switched=$?
check "agentsup switch green: exit $switched: $(tr '\n' ' ' <<<"$switch_out")" test "$switched" = 0
active_now="$(status_json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(s["active"], s["epoch"])')"
check "after the switch: active green at epoch $((epoch_before + 1)) ($active_now)" \
    test "$active_now" = "green $((epoch_before + 1))"
status_green() { [[ "$(unit_show StatusText)" == "active=green epoch=$((epoch_before + 1)) "* ]]; }
wait_for 10 status_green || true
check "StatusText follows the switch: '$(unit_show StatusText)'" status_green
metrics_green() { metrics 2>/dev/null | grep -qE "^agentsup_active\{color=\"green\"\} 1(\.0)?$"; }
check "metrics after the switch: agentsup_active{color=\"green\"} 1" wait_for 10 metrics_green

# The watchdog: 10 s; a daemon that stopped pinging would have been killed and restarted.
remaining=$((started + 16 - SECONDS))
((remaining > 0)) && sleep "$remaining"
check "after $((SECONDS - started)) s: still active, same MainPID $main_pid, no restart" \
    test "$(unit_show ActiveState)/$(unit_show MainPID)/$(unit_show NRestarts)" \
    = "active/$main_pid/0"
watchdog_last="$(unit_show WatchdogTimestampMonotonic)"
check "WATCHDOG=1 pings arrive (WatchdogTimestampMonotonic $watchdog_first -> $watchdog_last)" \
    test "$watchdog_last" -gt "$watchdog_first"
check "the journal has no watchdog timeout" \
    lacks "watchdog timeout" "$(ns journalctl --no-pager -o cat)"

stop_started=$SECONDS
ns systemctl stop "$unit" || true
stop_s=$((SECONDS - stop_started))
result="$(unit_show Result) $(unit_show ExecMainCode) $(unit_show ExecMainStatus)"
check "systemctl stop: Result=success, exited (code 1) with status 0 ($result)" \
    test "$result" = "success 1 0"
check "systemctl stop took $stop_s s, within TimeoutStopSec=90s" test "$stop_s" -lt 90
check "nothing was SIGKILLed at stop" lacks "SIGKILL|timed out" "$(journal)"
check "the daemon logged its shutdown: event stopped, exit_code 0" \
    grep -qE '"event": ?"stopped".*"exit_code": ?0|"exit_code": ?0.*"event": ?"stopped"' \
    <<<"$(journal)"

if ((failures)); then show_journal; fi
if [[ -n "${AGENTSUP_TRY_VERBOSE:-}" ]]; then
    say "the namespace's whole journal:"
    ns journalctl --no-pager -o short-monotonic | sed 's/^/  | /'
fi
