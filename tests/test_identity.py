"""A child can act only as itself (DESIGN.md, invariant 10): it cannot move the active key,
forge the other color's permit, reach Redis as the daemon, command the supervisor, or read
the daemon's memory. A real daemon, real children (tests/agents/hostile_agent.py, the
seed-style agent), a real redis-server, embedded and external.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from supervisor.arbiter.scripts import PERMIT, Keys
from supervisor.config import Color
from supervisor.identity import PERMIT_SCRIPT_WRITES, Lineage, acl_rules, lineage
from tests.harness import PY, SEED_AGENT, DaemonProcess, agent, running_daemon
from tests.redis_server import RedisServer, short_tempdir

HOSTILE = [PY, str(Path(__file__).parent / "agents" / "hostile_agent.py")]


# --- the control socket's ancestry check ------------------------------------------------------


def test_lineage_tells_descendants_from_the_rest() -> None:
    me = os.getpid()
    assert lineage(me, me) is Lineage.OWN
    assert lineage(os.getppid(), me) is Lineage.OUTSIDE
    assert lineage(1, me) is Lineage.OUTSIDE
    assert lineage(0, me) is Lineage.OUTSIDE  # SO_PEERCRED's pid for another pid namespace
    # A grandchild: the shell is our child, the sleep its child.
    with subprocess.Popen(
        ["sh", "-c", "sleep 30 & echo $!; wait"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as shell:
        try:
            assert shell.stdout is not None
            grandchild = int(shell.stdout.readline())
            assert lineage(shell.pid, me) is Lineage.CHILD
            assert lineage(grandchild, me) is Lineage.CHILD
            assert lineage(grandchild, shell.pid) is Lineage.CHILD
            assert lineage(shell.pid, grandchild) is Lineage.OUTSIDE
        finally:
            os.killpg(shell.pid, signal.SIGKILL)
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert lineage(gone.pid, me) is Lineage.UNKNOWN


ORPHAN = """
import ctypes, os, subprocess, sys
from supervisor.identity import lineage
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER, as the daemon is
shell = ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"]
out = subprocess.run(shell, capture_output=True, text=True)
orphan = int(out.stdout)  # its shell has exited: the sleep was reparented to us
with open(f"/proc/{orphan}/stat") as f:
    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
print(ppid == os.getpid(), lineage(orphan, os.getpid()).value, flush=True)
os.kill(orphan, 9)
os.waitpid(orphan, 0)
"""


def test_an_orphan_reparented_to_the_subreaper_is_still_a_child() -> None:
    done = subprocess.run([PY, "-c", ORPHAN], capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["True", "child"], done.stderr


# --- the ACL rules, checked by Redis itself ---------------------------------------------------


def dryrun(r: redis.Redis, user: str, *command: str) -> bool:
    return r.execute_command("ACL", "DRYRUN", user, *command) == b"OK"


@pytest.fixture
def acl_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_server.url)
    yield r
    r.close()


def test_read_access_follows_the_flags_prefix(acl_redis: redis.Redis) -> None:
    """Several deployments on one Redis, each with its flags under a prefix of its own: a
    seed-style agent reads its deployment's flags, not the others'."""
    keys = Keys("bot1", "bot1:active_version")
    rules = acl_rules("read", keys, Color.BLUE, "0" * 64, flags_prefix="bot1:flag:")
    acl_redis.execute_command("ACL", "SETUSER", "b", *rules)
    assert dryrun(acl_redis, "b", "GET", "bot1:flag:game")
    assert not dryrun(acl_redis, "b", "GET", "flag:game")
    assert not dryrun(acl_redis, "b", "GET", "bot2:flag:game")


def test_read_access_reads_the_active_key_and_the_flags_only(acl_redis: redis.Redis) -> None:
    keys = Keys("agent", "agent:active_version")
    acl_redis.execute_command("ACL", "SETUSER", "b", *acl_rules("read", keys, Color.BLUE, "0" * 64))
    allowed = [
        ("GET", "agent:active_version"),
        ("GET", "flag:game"),
        ("XRANGE", "agent:flags:log", "-", "+"),
        ("SUBSCRIBE", "__keyspace@0__:agent:active_version"),
        ("PSUBSCRIBE", "__keyspace@*__:*"),
        ("PING",),
        ("SELECT", "0"),
        ("CLIENT", "SETNAME", "agentsup-blue"),
    ]
    refused = [
        ("SET", "agent:active_version", "blue"),
        ("DEL", "agent:active_version"),
        ("GET", "agent:epoch"),
        ("EVAL", "return 1", "0"),
        ("EVALSHA", hashlib.sha1(PERMIT.encode()).hexdigest(), "0"),
        ("SCRIPT", "LOAD", "return 1"),
        ("FCALL", "f", "0"),
        ("CONFIG", "SET", "notify-keyspace-events", ""),
        ("ACL", "SETUSER", "b", "+@all"),
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("CLIENT", "KILL", "ID", "1"),
        ("PUBLISH", "__keyspace@0__:agent:active_version", "set"),
        ("SUBSCRIBE", "agent:anything"),
        ("SHUTDOWN",),
    ]
    assert [c for c in allowed if not dryrun(acl_redis, "b", *c)] == []
    assert [c for c in refused if dryrun(acl_redis, "b", *c)] == []


def test_permit_access_runs_the_permit_script_but_never_writes_the_active_key(
    acl_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """Namespace ``agent``: the seed's active key ``agent:active_version`` lies under it."""
    keys = Keys("agent", "agent:active_version")
    for color in Color:
        digest = hashlib.sha256(color.value.encode()).hexdigest()
        acl_redis.execute_command(
            "ACL", "SETUSER", color.value, *acl_rules("permit", keys, color, digest)
        )
    assert dryrun(acl_redis, "blue", "SET", keys.permit("order-1"), "x")
    assert dryrun(acl_redis, "blue", "HINCRBY", keys.permit_stats, "ok", "1")
    assert dryrun(acl_redis, "blue", "GET", keys.epoch)
    for command in (
        ("SET", keys.active, "blue"),
        ("DEL", keys.permit("order-1")),
        ("SET", keys.epoch, "99"),
        ("SCRIPT", "FLUSH"),
        ("FLUSHALL",),
    ):
        assert not dryrun(acl_redis, "blue", *command), command
    blue = redis.Redis.from_url(redis_server.url, username="blue", password="blue")
    try:
        # A script's own commands are checked against the user: no SET of the active key.
        with pytest.raises(redis.ResponseError, match="can't access"):
            blue.eval("return redis.call('SET', KEYS[1], 'blue')", 1, keys.active)
        # What a script can ask to tell its caller's color (see Keys.identity).
        check = "return {redis.acl_check_cmd('SET', KEYS[1], '1') and 1 or 0}"
        mine, theirs = (keys.identity(c.value) for c in (Color.BLUE, Color.GREEN))
        assert blue.eval(check, 1, mine) == [1]
        assert blue.eval(check, 1, theirs) == [0]
        assert acl_redis.eval(check, 1, theirs) == [1]  # the daemon asks for either color
    finally:
        blue.close()


def test_every_write_of_the_permit_script_is_allowed_in_permit_access(
    acl_redis: redis.Redis,
) -> None:
    """PERMIT_SCRIPT_WRITES must follow the permit script, or a direct permit fails closed."""
    called = {c.lower() for c in re.findall(r"redis\.call\(\s*'(\w+)'", PERMIT)}
    assert called
    writes = called & {str(c) for c in acl_redis.acl_cat("write")}
    assert writes <= set(PERMIT_SCRIPT_WRITES), writes - set(PERMIT_SCRIPT_WRITES)


# --- a hostile child against a real daemon ----------------------------------------------------


async def hostile_report(d: DaemonProcess, color: str) -> dict[str, Any]:
    record = await d.wait_log(
        "child_output",
        color=color,
        timeout=30,
        where=lambda r: str(r.get("line", "")).startswith("hostile-report "),
    )
    report: dict[str, Any] = json.loads(record["line"].removeprefix("hostile-report "))
    return report


def scrape(d: DaemonProcess) -> str:
    port = int(d.find("metrics_listening")[0]["address"].rsplit(":", 1)[1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    directory = short_tempdir("as-id-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def without_capabilities(socket_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the daemon (and so its children) as the unit file does: no capabilities at all
    (CapabilityBoundingSet=). As root with them, a child would hold CAP_SYS_PTRACE, which
    opens every process's memory whatever the daemon does; as an ordinary user nothing
    changes."""
    if os.geteuid() != 0:
        return
    wrapper = socket_dir / "python-without-caps"
    wrapper.write_text(f'#!/bin/sh\nexec setpriv --bounding-set=-all {PY} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr("tests.harness.PY", str(wrapper))


async def test_a_hostile_child_with_the_embedded_redis_cannot_act_as_anyone_else(
    socket_dir: Path, without_capabilities: None
) -> None:
    sock = socket_dir / "control.sock"
    async with running_daemon(
        redis_url=None,
        blue=agent(SEED_AGENT, "1.0.0"),
        green=agent(HOSTILE, "2.0.0", env={"HOSTILE_SOCKET": str(sock)}),
        sections={"supervisor": {"control_socket": str(sock)}},
    ) as d:
        d.socket = sock
        epoch = d.find("reconciled")[0]["epoch"]
        report = await hostile_report(d, "green")
        # The seed's way still works: blue polls the active key through its read-only user.
        await d.wait_log("child_output", color="blue", line="seed-agent blue active=True")

        assert report["username"] == "agentsup-green"
        assert report["access"] == "read"
        assert report["read_active"] == {"ok": True, "value": "blue"}
        for name in ("set_active", "eval_permit", "evalsha_permit", "set_via_script"):
            assert report[name]["error"] == "NoPermissionError", (name, report[name])
        # No way in as the daemon: no password, or the default user with the child's own.
        assert report["no_password"]["error"] == "AuthenticationError", report["no_password"]
        assert report["default_user"]["error"] == "AuthenticationError", report["default_user"]
        # The control socket: refused for the child and for its own subprocesses.
        for name in ("confirm", "switch"):
            assert report[name]["rc"] == 1, report[name]
            assert "refused (forbidden)" in report[name]["err"], report[name]
            assert "supervised child may not control" in report[name]["err"]
        assert report["raw_control"]["value"]["error"]["code"] == "forbidden"
        # The daemon's memory: closed (PR_SET_DUMPABLE), though it is the agent's own parent.
        assert report["ppid"] == d.pid
        assert report["daemon_environ"]["error"] == "PermissionError", report["daemon_environ"]

        status = await d.status()
        assert (status["active"], status["epoch"], status["candidate"]) == ("blue", epoch, None)
        assert [f for f in status["flips"] if f.get("to") == "green"] == []
        assert not d.find("flip", active="green")
        assert len(d.find("control_refused", reason="child")) >= 3
        assert re.search(r'agentsup_control_refused_total\{reason="child"\} [3-9]', scrape(d))
        # The operator, not a descendant of the daemon, still commands it.
        assert (await d.cli("status")).rc == 0


async def test_permit_access_lets_a_child_call_the_permit_script_but_not_move_the_key(
    socket_dir: Path,
) -> None:
    async with running_daemon(
        redis_url=None,
        blue=agent(SEED_AGENT, "1.0.0"),
        green=agent(HOSTILE, "2.0.0"),
        sections={"supervisor": {"namespace": "agent"}, "redis": {"child_access": "permit"}},
    ) as d:
        report = await hostile_report(d, "green")
        await d.wait_log("child_output", color="blue", line="seed-agent blue active=True")
        assert report["access"] == "permit"
        assert report["read_active"] == {"ok": True, "value": "blue"}
        assert report["set_active"]["error"] == "NoPermissionError", report["set_active"]
        assert report["set_via_script"]["error"] == "ResponseError", report["set_via_script"]
        assert "can't access" in report["set_via_script"]["message"]
        # The permit script runs for it, and refuses it as the other color: the script asks
        # Redis whether its caller may write that color's identity key.
        assert report["eval_permit"]["ok"], report["eval_permit"]
        assert report["eval_permit"]["value"][0] == "not_active", report["eval_permit"]
        assert report["no_password"]["error"] == "AuthenticationError"
        status = await d.status()
        assert status["active"] == "blue"
        assert not d.find("flip", active="green")


async def test_an_external_redis_with_a_password_keeps_it_from_the_children(
    redis_server: RedisServer,
) -> None:
    """The daemon's password (from the variable ``redis.password_env`` names) reaches no child:
    each gets a user named after the namespace, with a password of its own."""
    redis_server.cli("CONFIG", "SET", "requirepass", "the-daemons-own")
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(SEED_AGENT, "1.0.0"),
        green=agent(HOSTILE, "2.0.0"),
        sections={"redis": {"password_env": "MY_REDIS_PW"}},
        env={"MY_REDIS_PW": "the-daemons-own"},
    ) as d:
        report = await hostile_report(d, "green")
        await d.wait_log("child_output", color="blue", line="seed-agent blue active=True")
        assert report["username"] == "agentsup-t-green"
        assert "MY_REDIS_PW" not in report["env_names"]
        assert report["password_sha256"] != hashlib.sha256(b"the-daemons-own").hexdigest()
        assert report["set_active"]["error"] == "NoPermissionError"
        assert report["no_password"]["error"] == "AuthenticationError"
        assert not d.find("children_unrestricted")
        assert (await d.status())["active"] == "blue"


async def test_an_open_external_redis_is_named_at_start(redis_server: RedisServer) -> None:
    """The test Redis needs no password: the children still get their own users, and the
    daemon warns that any child could connect without one."""
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(SEED_AGENT, "1.0.0"),
        green=agent(HOSTILE, "2.0.0"),
    ) as d:
        report = await hostile_report(d, "green")
        await d.wait_log("child_output", color="blue", line="seed-agent blue active=True")
        assert d.find("children_unrestricted", reason="no_password")
        assert report["username"] == "agentsup-t-green"
        assert report["set_active"]["error"] == "NoPermissionError"
        assert report["no_password"]["ok"]  # the hole the warning names
        # Redis restarted empty forgets users made with ACL SETUSER: the daemon puts them
        # back with the same passwords, and the seed-style agent reads again.
        since = len(d.logs)
        redis_server.stop()
        redis_server.start()
        await d.wait_log("child_acl_restored", since=since, user="agentsup-t-blue")
        await d.wait_log(
            "child_output", since=since, color="blue", line="seed-agent blue active=True"
        )


async def test_child_access_none_hands_out_no_credentials() -> None:
    async with running_daemon(
        redis_url=None,
        blue=agent(SEED_AGENT, "1.0.0"),
        green=agent(HOSTILE, "2.0.0"),
        sections={"redis": {"child_access": "none"}},
    ) as d:
        report = await hostile_report(d, "green")
        assert (report["username"], report["access"]) == (None, "none")
        assert report["read_active"]["error"] == "AuthenticationError"
        assert report["set_active"]["error"] == "AuthenticationError"
        assert (await d.status())["active"] == "blue"
