"""The control socket: malformed requests answered and counted, foreign uids refused."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.harness import PY, agent, running_daemon
from tests.redis_server import RedisServer

RAW = [PY, "tests/agents/raw_agent.py"]
NOBODY = 65534

CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect-error", e.errno); sys.exit(0)
try:
    s.sendall(b'{"cmd": "switch", "args": {"color": "green"}}\\n')
except OSError:
    pass  # refused: the daemon may have answered and closed before we wrote
print(s.recv(65536).decode().strip())
"""


def talk(path: str, *lines: bytes) -> list[dict[str, object]]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    out = []
    buf = b""
    for line in lines:
        s.sendall(line)
        while b"\n" not in buf:
            buf += s.recv(65536)
        reply, buf = buf.split(b"\n", 1)
        out.append(orjson.loads(reply))
    s.close()
    return out


async def test_malformed_requests_get_errors_and_the_connection_stays_usable(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url, blue=agent(RAW, "1"), green=agent(RAW, "2")
    ) as d:
        replies = talk(
            str(d.socket),
            b"this is not json\n",
            b'{"cmd": "teleport"}\n',
            b'{"cmd": "switch", "args": {"color": "purple"}}\n',
            b'{"cmd": "status", "args": {}, "surprise": 1}\n',
            b'["status"]\n',
            b'{"cmd": "status"}\n',
        )
        codes = [r["error"]["code"] if not r["ok"] else "ok" for r in replies]  # type: ignore[index]
        assert codes == [
            "bad_request",
            "unknown_command",
            "bad_request",
            "bad_request",
            "bad_request",
            "ok",
        ]
        assert "switch: color: Input should be" in replies[2]["error"]["message"]  # type: ignore[index]
        assert replies[5]["result"]["active"] == "blue"  # type: ignore[index]
        # An oversized request: answered, then the connection is closed; the daemon goes on.
        big = talk(str(d.socket), b'{"cmd": "status", "x": "' + b"a" * 100_000 + b'"}\n')
        assert big[0]["error"]["code"] == "bad_request"  # type: ignore[index]
        assert (await d.status())["active"] == "blue"
        usage = await d.cli("switch", "purple")
        assert usage.rc == 2


def as_nobody(socket_path: Path) -> subprocess.CompletedProcess[str]:
    """Run CLIENT as uid and gid 65534, no groups: the daemon sees a genuinely other uid.

    Needs root (CI runs as root). A user namespace cannot stand in for it without root: the
    daemon reads the peer's uid in its own namespace, where an unprivileged user's processes
    all map back to that same user (a second uid would need /etc/subuid and newuidmap)."""
    # The system's python (the standard library is all CLIENT needs): nobody may not be able
    # to read the virtualenv.
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    command += ["/usr/bin/python3", "-c", CLIENT, str(socket_path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=20)


needs_root = pytest.mark.skipif(
    os.getuid() != 0, reason="needs root to run a client as another uid (setpriv)"
)


@needs_root
async def test_the_socket_is_0600_so_another_uid_cannot_even_connect(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url, blue=agent(RAW, "1"), green=agent(RAW, "2")
    ) as d:
        assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
        os.chmod(d.dir, 0o755)  # the directory lets nobody through: the socket's mode stops it
        out = as_nobody(d.socket)
        assert out.stdout.startswith("connect-error 13"), out  # EACCES


@needs_root
async def test_so_peercred_refuses_another_uid_that_can_connect_and_accepts_an_allowed_one(
    redis_server: RedisServer,
) -> None:
    # A world-writable socket in a world-searchable directory: nobody connects, so only the
    # uid check (SO_PEERCRED) stands between it and the commands.
    mode = {"control_socket_mode": 0o666}
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(RAW, "1"),
        green=agent(RAW, "2"),
        sections={"supervisor": mode},
    ) as d:
        await d.wait_status(lambda s: s["children"]["green"]["state"] == "RUNNING")
        os.chmod(d.dir, 0o755)
        out = as_nobody(d.socket)
        assert out.stdout, out
        reply = orjson.loads(out.stdout)  # it connected: the refusal is the daemon's answer
        assert reply["ok"] is False
        assert reply["error"]["code"] == "forbidden"
        assert f"uid {NOBODY}" in reply["error"]["message"]
        await d.wait_log("control_refused", peer_uid=NOBODY)
        assert (await d.status())["active"] == "blue"  # the command was not run

    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(RAW, "1"),
        green=agent(RAW, "2"),
        sections={"supervisor": {**mode, "allowed_uids": [NOBODY]}},
    ) as d:
        await d.wait_status(lambda s: s["children"]["green"]["state"] == "RUNNING")
        os.chmod(d.dir, 0o755)
        out = as_nobody(d.socket)
        assert out.stdout, out
        assert orjson.loads(out.stdout)["ok"] is True
        assert (await d.status())["active"] == "green"
        assert not d.find("control_refused")


async def test_unreachable_daemon_exits_69(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run(
        [PY, "-m", "supervisor", "status", "--socket", str(tmp_path / "none.sock")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 69
    assert "no daemon answers" in out.stderr
