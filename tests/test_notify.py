"""sd_notify: READY only when everything is up, STATUS on changes, WATCHDOG from the loop,
STOPPING on the way out; the children never see NOTIFY_SOCKET or WATCHDOG_*."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from pathlib import Path

from tests.harness import PY, agent, running_daemon
from tests.redis_server import RedisServer, short_tempdir

RAW = [PY, "tests/agents/raw_agent.py"]
ENV_DUMP = ["sh", "-c", "env | sort; exec sleep 1000"]


class NotifyListener:
    """A datagram socket standing in for systemd's, read all along as systemd reads it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)
        self.messages: list[str] = []
        self._returned = 0  # next_with looks past the last message it returned
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.messages.append((await loop.sock_recv(self.sock, 65536)).decode())
            self._arrived.set()

    async def next_with(self, field: str, timeout: float = 15.0) -> str:
        """The first datagram after the last one returned that has a line starting with
        ``field``."""
        async with asyncio.timeout(timeout):
            while True:
                for i in range(self._returned, len(self.messages)):
                    msg = self.messages[i]
                    if any(line.startswith(field) for line in msg.splitlines()):
                        self._returned = i + 1
                        return msg
                self._arrived.clear()
                await self._arrived.wait()

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self.sock.close()


async def test_notify_protocol_and_children_do_not_inherit_it(
    redis_server: RedisServer,
) -> None:
    directory = short_tempdir("as-n-")
    listener = NotifyListener(directory)
    try:
        await _notify_protocol(redis_server, listener)
    finally:
        await listener.close()
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


async def test_a_notify_socket_nobody_reads_does_not_stop_the_daemon(
    redis_server: RedisServer,
) -> None:
    """systemd's socket takes ten datagrams (net.unix.max_dgram_qlen) and then blocks a
    sender that waits: found as a daemon frozen in sendto, watchdog and control socket and all,
    under a load that slowed the reader. Here nobody reads at all: the daemon goes on."""
    directory = short_tempdir("as-n-")
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        deaf.bind(str(directory / "notify.sock"))
        env = {"NOTIFY_SOCKET": str(directory / "notify.sock"), "WATCHDOG_USEC": "100000"}
        async with running_daemon(
            redis_url=redis_server.url,
            blue=agent(RAW, "1.0.0"),
            green=agent(RAW, "2.0.0"),
            env=env,
        ) as d:
            await d.wait_status(lambda s: s["children"]["green"]["state"] == "RUNNING")
            # Well past ten watchdog pings (one every 50 ms) and a STATUS per flip.
            for color in ("green", "blue", "green"):
                assert (await d.cli("switch", color, timeout=15)).rc == 0
            await asyncio.sleep(1.0)  # more pings, into the full queue
            status = await d.status()
            assert status["active"] == "green"
    finally:
        deaf.close()
        shutil.rmtree(directory, ignore_errors=True)
