"""A real redis-server on a temporary Unix socket, for the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REDIS_BINARY = shutil.which("redis-server")


class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` again on the same socket simulate
    Redis going away and coming back (empty, unless ``appendonly`` is set)."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        if REDIS_BINARY is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        self.dir = directory
        self.socket = directory / "redis.sock"
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        args = [
            str(REDIS_BINARY),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
            "--loglevel",
            "notice",
            "--logfile",
            "",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        # Wait on the event itself: redis prints this line once it accepts connections.
        deadline = time.monotonic() + 10
        for line in self.proc.stdout:
            if b"ready to accept connections" in line.lower():
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not become ready")
        else:
            raise RuntimeError(f"redis-server exited with {self.proc.wait()}")
        # Keep draining its output so that it never blocks on a full pipe.
        out = self.proc.stdout
        self._drain = threading.Thread(target=out.read, daemon=True, name="redis-drain")
        self._drain.start()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        self.proc.wait(timeout=10)
        self._drain.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def cli(self, *args: str) -> str:
        """Run redis-cli against this server, the way an operator would."""
        out = subprocess.run(
            ["redis-cli", "-s", str(self.socket), *args],
            check=True,
            capture_output=True,
            timeout=10,
        )
        return out.stdout.decode().strip()


# Where short_tempdir() makes its directories, and the prefix the tests use (the session
# checks, in tests/conftest.py, that none is left behind).
TEMP_ROOT = Path("/tmp")
TEMP_PREFIX = "as-"
# Every directory handed out in this process, with the test that asked for it.
handed_out: dict[Path, str] = {}


def short_tempdir(prefix: str = TEMP_PREFIX) -> Path:
    """A temporary directory with a short path: Unix socket paths must fit in 107 bytes.

    The caller removes it; a test session fails if it did not (see ``handed_out``)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=TEMP_ROOT))
    handed_out[path] = os.environ.get("PYTEST_CURRENT_TEST", "(outside a test)")
    return path


@contextlib.contextmanager
def running_redis(*, appendonly: bool = False) -> Iterator[RedisServer]:
    directory = short_tempdir("as-redis-")
    server = RedisServer(directory, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
