"""Flips measured as production sees them, for ``bench.py``: the daemon as its own process,
started exactly as ``agentsup run -c FILE`` starts it (``python -m supervisor run -c FILE``,
sd_notify READY, logs to a file as systemd's journal would take them), two child processes on
the SDK, and the cause of each flip coming from yet another process. Redis is a redis-server
the benchmark starts on a Unix socket in its temporary directory, configured as the embedded
default is (append-only, fsync every second), and given to the daemon as ``[redis] url``: the
embedded one answers only to the daemon, and an operator's SET needs a Redis it can reach.

What is timed, every timestamp CLOCK_MONOTONIC (one clock for every process on Linux):

- ``operator SET -> both children told``: a separate process holding a Redis connection
  (bench/operator_set.py) takes the time just before it sends ``SET active_key COLOR``; each
  child takes the time it *receives* its new role (bench/probe_agent.py); the later of the two.
- the floor, measured the same way in the same run and on the same Redis: a plain subscriber
  process (bench/floor_subscriber.py) notified of a SET of another key, which reads that key
  once. Floor and daemon SETs alternate, so the machine's noise falls on both alike.
- ``trigger -> both children told``: green, the candidate in charge, reports an unhandled
  exception through the SDK; from the moment before it sends the line until both children
  hold their new roles (blue back in charge).

Each kind is timed with an idle pause before every flip (production flips are rare, and
waking idle processes is most of what a flip costs here) and back to back ("busy").

Every wait is on an event with a timeout; every process is started with PR_SET_PDEATHSIG (it
goes if the benchmark dies) and is stopped on every way out; the temporary directory goes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "bench"
PY = sys.executable
ACTIVE_KEY = "agent:active_version"
FLOOR_KEY = "bench:floor"
STEP_TIMEOUT_S = 10.0  # one flip, one SET: far above anything seen, far below "hung"
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 30.0
WARMUP = 5  # flips of each kind not counted: first script loads, first connections

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


class BenchError(RuntimeError):
    """The measurement could not be taken (a process died, an event never came)."""


def _die_with_the_bench() -> None:
    # Runs in the child between fork and exec: if the benchmark is killed, so is this process.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Inbox:
    """The datagram socket the children, the floor subscriber and the probes report to."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.roles: dict[str, list[tuple[str, int, int]]] = {"blue": [], "green": []}
        self.floor: dict[str, int] = {}  # value read -> when
        self.sent: list[tuple[int, int]] = []  # when a child sent its error (monotonic, wall)
        self.floor_ready = False
        self.bad = 0
        self._changed = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = (await loop.sock_recv(self.sock, 65536)).decode()
            try:
                self._take(data.split())
            except (ValueError, KeyError, IndexError):
                self.bad += 1
            self._changed.set()

    def _take(self, words: list[str]) -> None:
        kind = words[0]
        if kind == "role" and words[3] != "None":  # role COLOR ROLE EPOCH T_S (probe_agent)
            when = round(float(words[4]) * 1e9)
            self.roles[words[1]].append((words[2], int(words[3]), when))
        elif kind == "floor":  # floor VALUE T_NS
            self.floor.setdefault(words[1], int(words[2]))
        elif kind == "sent":  # sent COLOR T_NS WALL_NS
            self.sent.append((int(words[2]), int(words[3])))
        elif kind == "floor-ready":
            self.floor_ready = True

    async def until(
        self, check: Callable[[], T | None], what: str, timeout: float = STEP_TIMEOUT_S
    ) -> T:
        try:
            async with asyncio.timeout(timeout):
                while (found := check()) is None:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise BenchError(f"no {what} within {timeout:g} s") from None
        return found

    def told(self, active: str, after: int) -> tuple[int, int] | None:
        """When both children had received their roles with ``active`` in charge at an epoch
        above ``after`` (the later of the two), and the highest such epoch."""
        times, epochs = [], []
        for color, reports in self.roles.items():
            want = "active" if color == active else "standby"
            hit = next(((e, t) for role, e, t in reports if e > after and role == want), None)
            if hit is None:
                return None
            epochs.append(hit[0])
            times.append(hit[1])
        return max(times), max(epochs)

    def command(self, directory: Path, color: str, line: str) -> None:
        self.sock.sendto(line.encode(), str(directory / f"{color}.ctl"))

    def close(self) -> None:
        self.sock.close()


class Setter:
    """The operator's process (bench/operator_set.py), driven over its stdin."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def _line(self, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise BenchError(f"the setter process said nothing within {timeout:g} s") from None
        if not line:
            raise BenchError(f"the setter process exited ({await self.proc.wait()})")
        return line

    async def ready(self) -> None:
        await self._line(START_TIMEOUT_S)

    async def set(self, key: str, value: str, pause_s: float) -> tuple[int, int]:
        """SET after ``pause_s`` idle; when it was sent (monotonic and wall clock, ns)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{key} {value} {pause_s!r}\n".encode())
        await self.proc.stdin.drain()
        sent, wall = (await self._line(STEP_TIMEOUT_S + pause_s)).split()
        return int(sent), int(wall)


def _config(directory: Path, redis_url: str) -> Path:
    """A config as an operator writes it; only the children are the benchmark's probes."""
    probe = json.dumps([PY, str(HERE / "probe_agent.py")])
    env = (
        f"{{ BENCH_SOCKET = {json.dumps(str(directory / 'inbox.sock'))}, "
        f"BENCH_CONTROL = {json.dumps(str(directory))}, PYTHONPATH = {json.dumps(str(ROOT))} }}"
    )
    path = directory / "agentsup.toml"
    path.write_text(
        "[supervisor]\n"
        'name = "bench"\n'
        'namespace = "bench"\n'
        f"state_dir = {json.dumps(str(directory / 'state'))}\n"
        f"control_socket = {json.dumps(str(directory / 'control.sock'))}\n\n"
        "[redis]\n"
        f"url = {json.dumps(redis_url)}\n"
        f"active_key = {json.dumps(ACTIVE_KEY)}\n\n"
        "[metrics]\n"
        'listen = "127.0.0.1:0"\n\n'
        "[rollout]\n"
        "probation_s = 0  # a candidate stays a candidate: each trigger rolls it back\n\n"
        + "".join(
            f'[agents.{color}]\ncommand = {probe}\nversion = "{version}"\nenv = {env}\n\n'
            for color, version in (("blue", "1"), ("green", "2"))
        )
    )
    return path


async def _spawn(*args: str, **kwargs: Any) -> asyncio.subprocess.Process:
    # A session of its own: a Ctrl-C reaches the benchmark alone, which stops them in order.
    return await asyncio.create_subprocess_exec(
        *args, preexec_fn=_die_with_the_bench, start_new_session=True, cwd=ROOT, **kwargs
    )


async def _stop(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _start_redis(
    directory: Path, tasks: list[asyncio.Task[None]]
) -> tuple[asyncio.subprocess.Process, str]:
    """A redis-server as the embedded default runs one, on a Unix socket in ``directory``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not on PATH (apt-get install redis-server)")
    sock = directory / "redis.sock"
    proc = await _spawn(
        binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--dir", str(directory), "--appendonly", "yes", "--appendfsync", "everysec",
        "--save", "", "--daemonize", "no", "--logfile", "",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while b"ready to accept connections" not in (line := await proc.stdout.readline()):
                if not line:
                    raise BenchError(f"redis-server exited with {await proc.wait()}")
    except TimeoutError:
        await _stop(proc, STOP_GRACE_S)
        raise BenchError(f"redis-server was not ready within {START_TIMEOUT_S:g} s") from None
    tasks.append(asyncio.create_task(_drain(proc.stdout)))  # it must never block on its output
    return proc, f"unix://{sock}"


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


async def _drain_notify(sock: socket.socket, ready: asyncio.Event) -> None:
    """sd_notify datagrams: READY=1 once, then STATUS= on every flip (read, as systemd does)."""
    loop = asyncio.get_running_loop()
    while True:
        if b"READY=1" in await loop.sock_recv(sock, 65536):
            ready.set()


async def _wait_ready(daemon: asyncio.subprocess.Process, ready: asyncio.Event) -> None:
    waiting = asyncio.ensure_future(ready.wait())
    exited = asyncio.ensure_future(daemon.wait())
    try:
        await asyncio.wait(
            {waiting, exited}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiting.cancel()
        exited.cancel()
    if daemon.returncode is not None:
        raise BenchError(f"the daemon exited with {daemon.returncode} before READY")
    if not ready.is_set():
        raise BenchError(f"the daemon was not READY within {START_TIMEOUT_S:g} s")


class Run:
    """One daemon, its two probes, the setter and the floor subscriber, and the flips."""

    def __init__(self, directory: Path, inbox: Inbox, setter: Setter, active_key: str) -> None:
        self.dir = directory
        self.inbox = inbox
        self.setter = setter
        self.active_key = active_key
        self.active = ""
        self.epoch = 0
        self.floor_n = 0

    async def settle(self) -> None:
        """Learn who is in charge once both children were told."""
        for color in ("blue", "green"):
            found = self.inbox.told(color, 0)
            if found is not None:
                self.active, self.epoch = color, found[1]
                return
        await self.inbox.until(
            lambda: self.inbox.told("blue", 0) or self.inbox.told("green", 0),
            "first roles from both children",
            START_TIMEOUT_S,
        )
        await self.settle()

    async def operator_set(self, color: str, pause_s: float) -> Flip:
        sent, wall = await self.setter.set(self.active_key, color, pause_s)
        told, self.epoch = await self.inbox.until(
            lambda: self.inbox.told(color, self.epoch), f"roles with {color} in charge"
        )
        self.active = color
        return Flip((told - sent) / 1e6, self.epoch, wall)

    async def floor(self, pause_s: float) -> float:
        self.floor_n += 1
        value = f"v{self.floor_n}"
        sent, _ = await self.setter.set(FLOOR_KEY, value, pause_s)
        read = await self.inbox.until(
            lambda: self.inbox.floor.get(value), "read by the floor subscriber"
        )
        return (read - sent) / 1e6

    async def trigger(self, pause_s: float) -> Flip:
        if self.active != "green":
            await self.operator_set("green", 0.0)  # green back in charge, as the candidate
        n = len(self.inbox.sent)
        self.inbox.command(self.dir, "green", f"error {pause_s!r}")
        sent, wall = await self.inbox.until(
            lambda: self.inbox.sent[n] if len(self.inbox.sent) > n else None,
            "error sent by green",
        )
        told, self.epoch = await self.inbox.until(
            lambda: self.inbox.told("blue", self.epoch), "roles after the rollback"
        )
        self.active = "blue"
        return Flip((told - sent) / 1e6, self.epoch, wall)


@dataclass(frozen=True, slots=True)
class Flip:
    """One timed flip: until both children were told, the epoch it made, when it was sent."""

    told_ms: float
    epoch: int
    sent_wall_ns: int


async def measure(samples: int, pause_s: float) -> dict[str, list[float]]:
    """Milliseconds per flip, ``samples`` of each kind: ``set`` and ``floor`` (idle and busy,
    alternating), ``trigger`` (idle and busy). A SIGTERM meanwhile stops every
    process and removes the directory, then raises KeyboardInterrupt, as a Ctrl-C would."""
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    previous = signal.getsignal(signal.SIGTERM)
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        me.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await _measure(samples, pause_s)
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


async def _measure(samples: int, pause_s: float) -> dict[str, list[float]]:
    directory = Path(tempfile.mkdtemp(prefix="asp-", dir="/tmp"))  # short: socket paths fit
    log_path = directory / "daemon.log"
    procs: list[asyncio.subprocess.Process] = []  # stopped last-started first
    tasks: list[asyncio.Task[None]] = []
    inbox = Inbox(directory / "inbox.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        notify.bind(str(directory / "notify.sock"))
        notify.setblocking(False)
        ready = asyncio.Event()
        tasks += [
            asyncio.create_task(inbox.run()),
            asyncio.create_task(_drain_notify(notify, ready)),
        ]
        redis, url = await _start_redis(directory, tasks)
        procs.append(redis)
        config = _config(directory, url)
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "NOTIFY_SOCKET" and not k.startswith("WATCHDOG_")
        }
        env["NOTIFY_SOCKET"] = str(directory / "notify.sock")
        with log_path.open("wb") as log:
            daemon = await _spawn(
                PY, "-m", "supervisor", "run", "-c", str(config), env=env, stdout=log,
                stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        procs.append(daemon)
        await _wait_ready(daemon, ready)
        subscriber = await _spawn(
            PY, str(HERE / "floor_subscriber.py"), url, FLOOR_KEY, inbox.path,
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(subscriber)
        setter_proc = await _spawn(
            PY, str(HERE / "operator_set.py"), url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        procs.append(setter_proc)
        setter = Setter(setter_proc)
        await setter.ready()
        await inbox.until(
            lambda: True if inbox.floor_ready else None, "floor subscriber ready", START_TIMEOUT_S
        )
        run = Run(directory, inbox, setter, ACTIVE_KEY)
        await run.settle()
        out = await _flips(run, samples, pause_s)
        if inbox.bad:
            raise BenchError(f"{inbox.bad} reports could not be read")
        return out
    except BenchError as exc:
        with contextlib.suppress(OSError):
            tail = log_path.read_text(errors="replace").splitlines()[-30:]
            raise BenchError(f"{exc}; the daemon's last log lines:\n" + "\n".join(tail)) from None
        raise
    finally:
        for proc in reversed(procs):
            await _stop(proc, STOP_GRACE_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        inbox.close()
        notify.close()
        shutil.rmtree(directory, ignore_errors=True)


async def _flips(run: Run, samples: int, pause_s: float) -> dict[str, list[float]]:
    """The timed flips, by kind."""
    out: dict[str, list[float]] = {}
    for name, pause in (("idle", pause_s), ("busy", 0.0)):
        sets, floors = out.setdefault(f"set_{name}", []), out.setdefault(f"floor_{name}", [])
        for i in range(WARMUP + samples):
            other = "green" if run.active == "blue" else "blue"
            if i % 2:  # alternate who goes first: neither always follows the other
                f, s = await run.floor(pause), await run.operator_set(other, pause)
            else:
                s, f = await run.operator_set(other, pause), await run.floor(pause)
            if i >= WARMUP:
                sets.append(s.told_ms)
                floors.append(f)
    for name, pause in (("idle", pause_s), ("busy", 0.0)):
        triggers = out.setdefault(f"trigger_{name}", [])
        for i in range(WARMUP + samples):
            t = await run.trigger(pause)
            if i >= WARMUP:
                triggers.append(t.told_ms)
    return out
