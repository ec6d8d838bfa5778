"""What the kernel says about processes: one reading of ``/proc``, the trees in it, and a kill
that checks a process's identity first.

A pid alone does not name a process: once reaped, its number goes to the next fork. A pid and
its start time (field 22 of ``/proc/PID/stat``, clock ticks since boot) do, so every kill here
checks both, through a pidfd, so that the process checked is the process signalled.

The table is read by scanning ``/proc/*/stat`` (about 1 ms per 100 processes). The kernel's
``/proc/PID/task/TID/children`` would be cheaper, but it needs CONFIG_PROC_CHILDREN (absent on
the kernels this was built on, so it could not be tried) and is documented as unreliable for a
process that is not stopped; a full scan has neither problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

CMDLINE_EXCERPT = 200  # characters of a command line worth a log line


@dataclass(frozen=True, slots=True)
class Proc:
    """One process, as /proc/PID/stat describes it."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    start_time: int  # clock ticks since boot: with the pid, the process's identity
    zombie: bool  # exited, not yet reaped: nothing left to kill


def _parse_stat(pid: int, raw: bytes) -> Proc | None:
    # The command name is in parentheses and may contain anything, ')' included: split after
    # the last one. What follows starts at field 3 (state).
    fields = raw[raw.rfind(b")") + 2 :].split(maxsplit=20)
    if len(fields) < 20:
        return None
    return Proc(
        pid=pid,
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
        start_time=int(fields[19]),
        zombie=fields[0] in (b"Z", b"X"),
    )


def read_proc(pid: int) -> Proc | None:
    """This pid's process now, or None when there is none."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    return _parse_stat(pid, raw)


def start_time_of(pid: int) -> int | None:
    """The start time of this pid's process (tells a pid from its reuse), None if none."""
    proc = read_proc(pid)
    return None if proc is None else proc.start_time


def cmdline_of(pid: int) -> str:
    """An excerpt of the command line, for the log ('' once the process is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(CMDLINE_EXCERPT * 4)
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:CMDLINE_EXCERPT]


class ProcessTable:
    """Every process on the host at one moment, indexed by pid and by parent."""

    def __init__(self, procs: Iterable[Proc]) -> None:
        self.procs: dict[int, Proc] = {p.pid: p for p in procs}
        self._by_parent: dict[int, list[Proc]] = {}
        self._by_group: dict[int, list[Proc]] = {}
        for p in self.procs.values():
            self._by_parent.setdefault(p.ppid, []).append(p)
            self._by_group.setdefault(p.pgid, []).append(p)
            if p.sid != p.pgid:
                self._by_group.setdefault(p.sid, []).append(p)

    @classmethod
    def read(cls) -> ProcessTable:
        """Scan /proc (blocking, about 1 ms per 100 processes: call it from a thread)."""
        procs = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                proc = read_proc(int(name))
                if proc is not None:  # gone between the listing and the read
                    procs.append(proc)
        return cls(procs)

    def children_of(self, pid: int) -> list[Proc]:
        return list(self._by_parent.get(pid, ()))

    def is_same(self, pid: int, start_time: int | None) -> bool:
        proc = self.procs.get(pid)
        return proc is not None and start_time is not None and proc.start_time == start_time

    def tree(self, pid: int) -> dict[int, int]:
        """What a live process started: its descendants and the members of its group and
        session, transitively (the groups and sessions its descendants lead included), as
        pid → start time; zombies and the process itself left out.

        Walking parent links alone misses a grandchild whose parent died (it was reparented),
        and walking the group alone misses one that called setsid(); together, and read while
        the process is alive, they find both."""
        found: dict[int, Proc] = {}
        frontier = [pid]
        while frontier:
            x = frontier.pop()
            for p in self._related(x):
                if p.pid != pid and p.pid not in found:
                    found[p.pid] = p
                    frontier.append(p.pid)
        return {p.pid: p.start_time for p in found.values() if not p.zombie}

    def left_behind(self, pid: int) -> dict[int, int]:
        """What a process that is gone (reaped) left in its group and session, transitively.

        Its children were reparented and cannot be told from anyone else's by their parent.
        If the pid already names another process, the kernel handed it out again, which it
        never does while a group or session still bears that number: nothing was left."""
        if pid in self.procs:
            return {}
        found: dict[int, Proc] = {}
        frontier = list(self._by_group.get(pid, ()))
        for p in frontier:
            found[p.pid] = p
        while frontier:
            x = frontier.pop()
            for p in self._related(x.pid):
                if p.pid not in found:
                    found[p.pid] = p
                    frontier.append(p)
        return {p.pid: p.start_time for p in found.values() if not p.zombie}

    def _related(self, pid: int) -> Iterator[Proc]:
        yield from self._by_parent.get(pid, ())
        yield from self._by_group.get(pid, ())  # its group and its session


def kill_if_same(pid: int, start_time: int, sig: int = signal.SIGKILL) -> bool:
    """Signal the process only if it is the one that had this start time; True if sent.

    The pidfd is opened first and the start time read after: a process that held the pid from
    before the pidfd was opened until after the check is the one the pidfd names, so the
    signal cannot reach a process that took the number in between."""
    if pid <= 1:
        return False
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd (an old kernel): check, then signal, a narrow window apart
        if start_time_of(pid) != start_time:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            return True
        return False
    try:
        now = read_proc(pid)
        if now is None or now.start_time != start_time or now.zombie:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            signal.pidfd_send_signal(pidfd, sig)
            return True
        return False
    finally:
        os.close(pidfd)


def kill_all(procs: Mapping[int, int], sig: int = signal.SIGKILL) -> dict[int, str]:
    """Signal each pid → start time that is still the same process; returns the signalled ones
    with their command lines (read before the signal, while there is one to read)."""
    signalled = {}
    for pid, start in procs.items():
        cmdline = cmdline_of(pid)
        if kill_if_same(pid, start, sig):
            signalled[pid] = cmdline
    return signalled


async def wait_exited(pids: Iterable[int]) -> None:
    """Wait until each of these processes has exited (a zombie counts); bound it with
    ``asyncio.timeout``. A pidfd turns readable when its process exits: an event, not a poll."""
    loop = asyncio.get_running_loop()
    waiting: list[tuple[int, asyncio.Future[None]]] = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone already, or no pidfd here: nothing to wait for
            continue
        done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve, done)
        waiting.append((fd, done))
    try:
        if waiting:
            await asyncio.wait([f for _, f in waiting])
    finally:
        for fd, _ in waiting:
            loop.remove_reader(fd)
            os.close(fd)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def reap(pid: int) -> bool:
    """Collect this one child's exit status if it has exited; True once it is gone.

    Only ever by pid: the event loop's child watcher reaps its own children by pid too and
    must still find their statuses (a wait on any child would steal them)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not (or no longer) our child
        return True
    return done == pid
