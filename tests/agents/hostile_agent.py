"""A hostile agent: with only what the supervisor gave it, it tries to act as the other color and
to take control, then prints what each attempt got as one line, ``hostile-report {json}``
(flushed), and waits for SIGTERM.

The attempts (tests/test_identity.py judges the answers):

- ``read_active``: GET the active key with its own user (allowed: the seed's way to poll).
- ``set_active``: SET the active key to its own color.
- ``eval_permit`` / ``evalsha_permit``: the permit script, called as the other color.
- ``set_via_script``: EVAL of a script that SETs the active key to its own color.
- ``no_password``: a client with the URL alone; ``default_user``: AUTH as ``default`` with its
  own password.
- ``confirm`` / ``switch``: ``agentsup confirm`` and ``agentsup switch <own color>`` run as a
  subprocess (a grandchild of the daemon) on the socket named by ``HOSTILE_SOCKET``;
  ``raw_control``: the same ``switch`` written on the socket by the agent itself.
- ``daemon_environ``: read ``/proc/<parent>/environ`` (its parent is the daemon).

Run by the supervisor as ``python tests/agents/hostile_agent.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import redis

from supervisor.arbiter.scripts import PERMIT, Keys


def _stop(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def attempt(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        value = call()
    except Exception as exc:  # every refusal is the answer we report
        return {"ok": False, "error": type(exc).__name__, "message": str(exc)[:300]}
    return {"ok": True, "value": value}


def cli(sock: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", *args, "--socket", sock],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return {"rc": done.returncode, "out": done.stdout[-500:], "err": done.stderr[-500:]}


def raw_control(sock: str, line: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(sock)
        s.sendall(json.dumps(line).encode() + b"\n")
        reply: dict[str, Any] = json.loads(s.makefile("rb").readline())
        return reply


def read_environ(pid: int) -> str:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f"{len(f.read())} bytes"


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    env = os.environ
    color = env["AGENTSUP_COLOR"]
    other = "green" if color == "blue" else "blue"
    url = env["AGENTSUP_REDIS_URL"]
    username = env.get("AGENTSUP_REDIS_USERNAME") or None
    password = env.get("AGENTSUP_REDIS_PASSWORD") or None
    keys = Keys(env["AGENTSUP_NAMESPACE"], env["AGENTSUP_ACTIVE_KEY"])
    mine = redis.Redis.from_url(url, username=username, password=password, socket_timeout=5)
    key = f"stolen-{os.getpid()}"
    # Whatever the permit script's KEYS are today: ask the Keys helper when it knows them.
    permit_keys = (
        keys.permit_keys(key, other)
        if hasattr(keys, "permit_keys")
        else [keys.active, keys.epoch, keys.permit(key), keys.permit_stats]
    )
    epoch = attempt(lambda: mine.get(keys.epoch))
    argv = [other, str(epoch.get("value") or 1), "60000", "hostile", "0", key, "1000"]
    sha = hashlib.sha1(PERMIT.encode()).hexdigest()
    report: dict[str, Any] = {
        "color": color,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "username": username,
        "access": env.get("AGENTSUP_REDIS_ACCESS"),
        # What it was handed: names only, and a digest of its password to compare.
        "env_names": sorted(k for k in env if "REDIS" in k or "PASSWORD" in k or "PW" in k),
        "password_sha256": hashlib.sha256(password.encode()).hexdigest() if password else None,
        "read_active": attempt(lambda: mine.get(keys.active)),
        "set_active": attempt(lambda: mine.set(keys.active, color)),
        "eval_permit": attempt(lambda: mine.eval(PERMIT, len(permit_keys), *permit_keys, *argv)),
        "evalsha_permit": attempt(lambda: mine.evalsha(sha, len(permit_keys), *permit_keys, *argv)),
        "set_via_script": attempt(
            lambda: mine.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, keys.active, color)
        ),
        "no_password": attempt(lambda: redis.Redis.from_url(url, socket_timeout=5).ping()),
        "default_user": attempt(
            lambda: redis.Redis.from_url(
                url, username="default", password=password or "", socket_timeout=5
            ).ping()
        ),
        "daemon_environ": attempt(lambda: read_environ(os.getppid())),
    }
    sock = env.get("HOSTILE_SOCKET")
    if sock:
        report["confirm"] = cli(sock, "confirm")
        report["switch"] = cli(sock, "switch", color)
        report["raw_control"] = attempt(
            lambda: raw_control(sock, {"cmd": "switch", "args": {"color": color}})
        )
    text = json.dumps(report, default=lambda v: v.decode(errors="replace"))
    print("hostile-report " + text, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
