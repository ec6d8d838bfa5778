"""Containment: no process of a deployment outlives its stop, whatever it did to detach itself.

A child runs in its own process group with a parent-death signal, and stopping it signals the
group. A grandchild that calls ``setsid()`` leaves both behind: new session, new group, no
parent-death signal. Three things catch it:

- The daemon is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): a process whose parent dies
  is reparented to the daemon instead of PID 1. :class:`Reaper` scans for the daemon's direct
  children that it did not start on purpose (not a color's leader, not the embedded Redis, not
  a process of the daemon's own session), SIGKILLs each with everything it started, and reaps
  it by pid.
- Each color remembers its whole tree (descendants, group and session members), refreshed by
  every scan and read again right before a stop; once its leader is gone, what is left of that
  tree is killed (:meth:`supervisor.children.process.Child._after_exit`).
- ``state_dir/children.json`` holds every leader and every remembered descendant (pid and
  start time), rewritten when they change, so that the next daemon kills them after a
  ``kill -9`` of this one (:func:`kill_leftovers`). A failed write is logged, counted and
  retried by the next scan; it never stops the supervision of a child.

What this cannot hold is a process that forks faster than a scan can follow it: only a
cgroup per color (under systemd, a delegated subtree; ``cgroup.kill``) contains that, and it is
not built yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from supervisor.children.proctable import ProcessTable, kill_all, read_proc, reap, wait_exited
from supervisor.logs import get as get_logger

if TYPE_CHECKING:
    from supervisor.children.process import Child

log = get_logger("reaper")

_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)

SCAN_INTERVAL_S = 0.5
RESCAN_AFTER_KILL_S = 0.05  # a SIGKILLed orphan is a zombie to reap a moment later
FINAL_SWEEP_S = 2.0

_spawns_in_flight = 0


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """Hold this around every fork of a child the daemon means to start, until its pid is
    known to its owner. A spawn is an ``await``: between the fork and the assignment of the
    pid a scan could see a child nobody claims yet, and must not take it for an orphan.
    Process-wide, as the subreaper attribute it guards is."""
    global _spawns_in_flight
    _spawns_in_flight += 1
    try:
        yield
    finally:
        _spawns_in_flight -= 1


def set_subreaper(on: bool) -> bool:
    """Make this process (or stop it being) the reaper of its orphaned descendants."""
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        log.warning(
            "subreaper_unavailable",
            error=os.strerror(ctypes.get_errno()),
            hint="orphans go to PID 1: only children.json and the stop-time sweep catch them",
        )
        return False
    return True


class Reaper:
    """Finds, kills and reaps what the daemon's children left behind, and records the rest.

    An unknown direct child is killed by the first scan that sees it again a whole interval
    after it first did (half a second to a second after it was orphaned), never at once: a
    process that some part of the daemon forked without :func:`spawning` has had that long to
    be claimed by its owner."""

    def __init__(
        self,
        children: Iterable[Child],
        records: Path,
        *,
        ours: Callable[[], Iterable[int | None]],
        on_killed: Callable[[], None],
        on_record_failed: Callable[[], None],
        interval_s: float = SCAN_INTERVAL_S,
    ) -> None:
        self._children = list(children)
        self._records = records
        self._ours = ours
        self._on_killed = on_killed
        self._on_record_failed = on_record_failed
        self._interval = interval_s
        self._wake = asyncio.Event()
        self._running = False
        self._subreaper = False
        self._preexisting: set[tuple[int, int]] = set()
        # Unknown direct children, (pid, start time) → when first seen (monotonic).
        self._suspects: dict[tuple[int, int], float] = {}
        self._condemned: dict[int, int] = {}  # SIGKILLed, pid → start time: reap when a zombie
        self._written: bytes | None = None
        self._write_failing = False
        self._scan_failing = False

    def wake(self) -> None:
        """Scan now (a child exited or was stopped) instead of at the next interval."""
        self._wake.set()

    async def run(self) -> None:
        """Become the subreaper, then scan every interval until cancelled.

        The subreaper is set before the first ``await``, so before any color is spawned when
        this task is created ahead of theirs."""
        self._subreaper = set_subreaper(True)
        self._running = True
        # Children of an embedding process (a test, the demo) are not the daemon's to judge.
        table = ProcessTable.read()
        self._preexisting = {(p.pid, p.start_time) for p in table.children_of(os.getpid())}
        log.info("reaper_started", subreaper=self._subreaper, interval_s=self._interval)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.scan()

    async def scan(self, *, final: bool = False) -> int:
        """One pass: refresh each color's tree, deal with orphans, record. Returns how many
        unknown direct children were left standing (alive or not yet reaped)."""
        try:
            table = await asyncio.to_thread(ProcessTable.read)
        except OSError as exc:
            if not self._scan_failing:
                log.error("process_scan_failed", error=str(exc))
            self._scan_failing = True
            return 0
        self._scan_failing = False
        for child in self._children:
            child.remember(table)
        left = self._judge(table, final=final)
        self.record()
        return left

    def _claimed(self) -> set[int]:
        claimed = {pid for pid in self._ours() if pid}
        claimed.update(c.pid for c in self._children if c.pid is not None)
        return claimed

    def _judge(self, table: ProcessTable, *, final: bool) -> int:
        me, my_session = os.getpid(), os.getsid(0)
        # Read after the scan, on the event loop: a child forked before the scan finished
        # is claimed by now, or its spawn is still in flight.
        claimed = self._claimed()
        in_flight = _spawns_in_flight > 0 and not final
        now = time.monotonic()
        self._condemned = {
            pid: start for pid, start in self._condemned.items() if table.is_same(pid, start)
        }
        suspects: dict[tuple[int, int], float] = {}
        left = 0
        for p in table.children_of(me):
            key = (p.pid, p.start_time)
            # A process in the daemon's own session was started by the daemon itself: no
            # descendant of a child (each in a session of its own) can ever join that session.
            if p.pid in claimed or p.sid == my_session or key in self._preexisting:
                continue
            left += 1
            if self._condemned.get(p.pid) == p.start_time:
                if p.zombie and reap(p.pid):
                    del self._condemned[p.pid]
                    left -= 1
                continue
            first_seen = self._suspects.get(key, now)
            if not final and (in_flight or now - first_seen < self._interval):
                suspects[key] = first_seen
                continue
            if p.zombie:  # an orphan that exited by itself
                if reap(p.pid):
                    left -= 1
                continue
            victims = {p.pid: p.start_time, **table.tree(p.pid)}
            for pid in claimed:  # never, even if a tree were read wrong
                victims.pop(pid, None)
            killed = kill_all(victims)
            for pid, cmdline in killed.items():
                self._condemned[pid] = victims[pid]
                log.warning("orphan_killed", orphan=pid, cmdline=cmdline, reason="reparented")
                self._on_killed()
            if killed and self._running:
                asyncio.get_running_loop().call_later(RESCAN_AFTER_KILL_S, self._wake.set)
        self._suspects = suspects
        return left

    async def stop(self) -> None:
        """The last sweep, once the colors are stopped: kill what their trees left and every
        unknown child, reap them, and stop being a subreaper (the daemon may be embedded)."""
        if not self._running:
            return
        self._running = False
        for child in self._children:
            for pid, cmdline in kill_all(child.descendants).items():
                log.warning("orphan_killed", orphan=pid, cmdline=cmdline, reason="shutdown")
                self._on_killed()
        # Each pass kills what it sees; the next reaps it once the SIGKILLs have landed.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FINAL_SWEEP_S):
                while await self.scan(final=True) and self._condemned:
                    await wait_exited(list(self._condemned))
        if self._subreaper:
            set_subreaper(False)
            self._subreaper = False

    # records ----------------------------------------------------------------------------
    def record(self) -> None:
        """Write what the next daemon must kill after a ``kill -9`` of this one, if it changed.

        Never raises: a full or read-only disk is logged once per burst and counted, the file
        is written again by the next scan, and the children are supervised all the same."""
        entries: list[dict[str, Any]] = [e for c in self._children for e in c.records()]
        entries += [{"pid": p, "start_time": s, "group": False} for p, s in self._suspects]
        data = orjson.dumps(entries)
        if data == self._written:
            return
        try:
            write_records(self._records, data)
        except OSError as exc:
            self._on_record_failed()
            if not self._write_failing:
                log.error(
                    "children_record_write_failed",
                    path=str(self._records),
                    error=str(exc),
                    hint="children stay supervised; a kill -9 now could leave some running",
                )
            self._write_failing = True
            return
        if self._write_failing:
            log.info("children_record_written_again", path=str(self._records))
        self._write_failing = False
        self._written = data

    def forget(self) -> None:
        """A clean stop killed everything: the next daemon has nothing to look for."""
        try:
            self._records.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("children_record_unlink_failed", path=str(self._records), error=str(exc))


def write_records(path: Path, data: bytes) -> None:
    """Replace the records atomically (a reader sees the old file or the new, never half)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_records(path: Path) -> list[dict[str, Any]]:
    """What a previous daemon recorded; nothing when there is no file or it is damaged."""
    try:
        records = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, orjson.JSONDecodeError) as exc:
        log.warning("children_record_unreadable", path=str(path), error=str(exc))
        return []
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def kill_leftovers(records: list[dict[str, Any]]) -> list[int]:
    """SIGKILL what a previous daemon's children left running. Returns the pids signalled.

    A leader's record (``group`` true or absent) kills its process group when the leader is
    the same process (pid *and* start time) or is gone: Linux never hands out a pid that
    still names a live group, so the members left are the old child's. A descendant's record
    (``group`` false) kills that process only if it is the same one, and the group or session
    it leads. A pid reused by an unrelated process is left alone either way."""
    killed = []
    for rec in records:
        pid, start = rec.get("pid"), rec.get("start_time")
        if not isinstance(pid, int) or pid <= 1:
            continue
        now = read_proc(pid)
        if rec.get("group", True) is not False:
            if now is not None and now.start_time != start:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
            continue
        if now is None or now.start_time != start or not kill_all({pid: now.start_time}):
            continue
        killed.append(pid)
        if now.pgid == pid:  # it led a group of its own: the group's members go with it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    return killed
