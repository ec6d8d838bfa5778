"""sd_notify: READY only when everything is up, STATUS on changes, WATCHDOG from the loop,
STOPPING on the way out; the children never see NOTIFY_SOCKET or WATCHDOG_*."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

from tests.harness import PY, agent, running_daemon
from tests.redis_server import RedisServer, short_tempdir

RAW = [PY, "tests/agents/raw_agent.py"]
ENV_DUMP = ["sh", "-c", "env | sort; exec sleep 1000"]


class NotifyListener:
    """A datagram socket standing in for systemd's."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def next_with(self, field: str, timeout: float = 15.0) -> str:
        """The next datagram (from now on) that has a line starting with ``field``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                data = await loop.sock_recv(self.sock, 65536)
                msg = data.decode()
                self.messages.append(msg)
                if any(line.startswith(field) for line in msg.splitlines()):
                    return msg


async def test_notify_protocol_and_children_do_not_inherit_it(
    redis_server: RedisServer,
) -> None:
    directory = short_tempdir("as-n-")
    listener = NotifyListener(directory)
    try:
        await _notify_protocol(redis_server, listener)
    finally:
        listener.sock.close()
        shutil.rmtree(directory, ignore_errors=True)


async def _notify_protocol(redis_server: RedisServer, listener: NotifyListener) -> None:
    redis_server.stop()  # READY must wait for Redis
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "400000", "LISTEN_FDS": "3"}
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(RAW, "1.0.0"),
        green=agent(ENV_DUMP, "2.0.0"),
        env=env,
        wait_ready=False,
    ) as d:
        # The watchdog is kept from the very start, even while Redis is unreachable.
        await listener.next_with("WATCHDOG=1")
        await d.wait_log("redis_unreachable")
        assert not any("READY=1" in m for m in listener.messages)
        redis_server.start()
        ready = await listener.next_with("READY=1")
        assert "STATUS=active=blue epoch=1 mode=blue-green" in ready
        await d.wait_log("ready")
        assert d.find("child_spawned", color="blue")  # children before READY
        assert d.find("metrics_listening")  # metrics before READY

        await d.wait_status(lambda s: s["children"]["green"]["state"] == "RUNNING")
        assert (await d.cli("switch", "green")).rc == 0
        status = await listener.next_with("STATUS=active=green")
        assert "candidate=green" in status
        await listener.next_with("WATCHDOG=1")  # still coming, from the loop

        env_lines = [r["line"] for r in d.find("child_output", color="green")]
        assert any(line.startswith("AGENTSUP_COLOR=green") for line in env_lines)
        assert not any(
            line.startswith(("NOTIFY_SOCKET=", "WATCHDOG_", "LISTEN_FDS=")) for line in env_lines
        )
        await d.stop()
        stopping = [m for m in listener.messages if "STOPPING=1" in m]
        if not stopping:
            await listener.next_with("STOPPING=1", timeout=5)
