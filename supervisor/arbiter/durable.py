"""What this host knows that Redis might forget: three small files in state_dir.

Redis can go back in time: restored from an old dump, failed over to a lagging replica,
flushed, or replaced by an empty one. The supervisor never trusts it over these files:

- ``epoch``: the **epoch reservation**, a ceiling above every epoch any child was ever told.
  Flips go up to it without touching the disk; the flip script refuses to go past it
  (``reserve``), and the daemon then raises it (written and fsynced) *before* the flip commits.
  So a flip costs no fsync, yet after a Redis that came back empty the next epoch starts above
  the ceiling and is still higher than anything a child holds. One fsync per
  :data:`RESERVE_BLOCK` flips.
- ``epoch.told``: the highest epoch any child was told, written (not fsynced) before each
  push: a Redis behind it is a Redis that went back in time.
- ``state.json``: the rollout as the daemon last knew it (who acts, stable, candidate, the
  rejected versions, the epoch, the highest grant sequence number). Written in the
  background after every change; read at start when Redis turns out to be behind it.
- ``permits.journal``: one JSON line per permit granted through the daemon, appended before
  the child hears ``ok`` (so even a ``kill -9`` of the daemon cannot lose a key a child acted
  on; fdatasync'd every :data:`SYNC_INTERVAL_S` against a host crash) and put back into Redis
  when Redis forgot it. Compacted when it grows: expired permits are dropped.

A write that fails (a full disk, a read-only filesystem) raises :class:`DurableWriteError`;
the callers fail closed (no flip past the reservation, no permit that could not be journaled)
and keep running: one failed write is an alert, not an outage.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from supervisor.errors import SupervisorError

RESERVE_BLOCK: Final = 1000
SYNC_INTERVAL_S: Final = 0.1
COMPACT_BYTES: Final = 64 << 20


class DurableWriteError(SupervisorError):
    """A state file could not be written durably (disk full, read-only, I/O error)."""

    code = "state_write_failed"


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: durable when this returns (file and directory fsynced).
    Blocking: call it off the event loop. Raises :class:`DurableWriteError`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise DurableWriteError(f"{path}: {exc.strerror or exc}") from exc


class EpochReservation:
    """The ceiling: no child is ever told an epoch above it, and it only rises."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ceiling = self._read()

    def _read(self) -> int:
        try:
            text = self.path.read_text().strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return 0
        return int(text) if text.isdigit() else 0

    def covers(self, epoch: int) -> bool:
        return epoch <= self.ceiling

    def reserve(self, epoch: int) -> None:
        """Raise the ceiling to at least ``epoch`` (plus a block, so the next flips need no
        disk). Blocking; raises :class:`DurableWriteError`."""
        if epoch <= self.ceiling:
            return
        ceiling = epoch + RESERVE_BLOCK
        write_atomically(self.path, f"{ceiling}\n".encode())
        self.ceiling = ceiling


class ToldMark:
    """The highest epoch a child was told: ``epoch.told``, overwritten in place before every
    push of a new epoch. No fsync (a flip must not wait for the disk): it is in the page cache
    when the push goes out, so it survives the daemon's ``kill -9``, which is what lets the
    next daemon see that a Redis restored from an older dump is behind what its children
    heard. (A host that loses power loses it; the reservation, fsynced, still bounds it.)"""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.value = EpochReservation(path).ceiling  # same format: one integer
        self._fd: int | None = None

    def write(self, epoch: int) -> None:
        """Raises :class:`DurableWriteError`."""
        if epoch <= self.value:
            return
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.pwrite(self._fd, f"{epoch:020d}\n".encode(), 0)
        except OSError as exc:
            raise DurableWriteError(f"{self.path}: {exc.strerror or exc}") from exc
        self.value = epoch

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class KnownState:
    """The rollout as this host last knew it (what ``state.json`` holds)."""

    epoch: int = 0
    seq: int = 0  # the highest grant sequence number seen
    active: str | None = None
    rollout: dict[str, str] = field(default_factory=dict)

    def dumps(self) -> bytes:
        return orjson.dumps(
            {"epoch": self.epoch, "seq": self.seq, "active": self.active, "rollout": self.rollout}
        )

    @classmethod
    def load(cls, path: Path) -> KnownState | None:
        """What the file says, or None when there is none (or it is damaged: then Redis is
        all there is, as on a first start)."""
        try:
            data = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        if not isinstance(data, dict):
            return None
        rollout = data.get("rollout")
        active = data.get("active")
        return cls(
            epoch=_int(data.get("epoch")),
            seq=_int(data.get("seq")),
            active=active if isinstance(active, str) else None,
            rollout={str(k): str(v) for k, v in rollout.items()}
            if isinstance(rollout, dict)
            else {},
        )


def _int(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


@dataclass(frozen=True, slots=True)
class Grant:
    """One permit granted: what must be put back into a Redis that forgot it."""

    seq: int
    key: str
    color: str
    epoch: int
    token: str
    expires_ms: int  # unix milliseconds

    def line(self) -> bytes:
        """The journal line."""
        return orjson.dumps(
            {
                "s": self.seq,
                "k": self.key,
                "c": self.color,
                "e": self.epoch,
                "t": self.token,
                "x": self.expires_ms,
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )

    @property
    def record(self) -> str:
        """The permit key's value, as the permit script writes it."""
        return f"{self.color}:{self.epoch}:{self.token}"


class PermitJournal:
    """Append-only JSON lines of granted permits; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.dirty = False  # written since the last sync
        self.size = 0
        self.failures = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = None

    def append(self, grant: Grant) -> None:
        """One line, in the page cache when this returns (it survives the daemon's death).
        Raises :class:`DurableWriteError`; a partial line is cut off again so the file stays
        a sequence of whole lines."""
        if self._fd is None:
            self.open()
        assert self._fd is not None
        line = grant.line()
        try:
            written = os.write(self._fd, line)
        except OSError as exc:
            self.failures += 1
            raise DurableWriteError(f"{self.path}: {exc.strerror or exc}") from exc
        if written != len(line):
            self.failures += 1
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            raise DurableWriteError(f"{self.path}: short write ({written} of {len(line)} bytes)")
        self.size += written
        self.dirty = True

    def sync(self) -> None:
        """fdatasync what was appended (blocking: run it off the loop)."""
        fd = self._fd
        if fd is None or not self.dirty:
            return
        self.dirty = False
        try:
            os.fdatasync(fd)
        except OSError as exc:
            self.dirty = True
            self.failures += 1
            raise DurableWriteError(f"{self.path}: {exc.strerror or exc}") from exc

    def grants(self, now_ms: int | None = None) -> Iterator[Grant]:
        """Every grant in the file that has not expired; damaged lines (a torn tail after a
        crash) are skipped."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return
        with f:
            for line in f:
                grant = _parse(line)
                if grant is not None and grant.expires_ms > now_ms:
                    yield grant

    def highest_seq(self) -> int:
        return max((g.seq for g in self.grants(0)), default=0)

    def needs_compaction(self) -> bool:
        return self.size > COMPACT_BYTES

    def compact(self) -> int:
        """Drop the expired grants, in one go (blocking; appends must not run meanwhile).
        Returns how many grants were kept."""
        return self.compact_finish(*self.compact_begin())

    def compact_begin(self) -> tuple[Path, int, int]:
        """The slow half, safe in a thread while appends go on: copy the grants that have not
        expired out of the file's first ``size`` bytes into a new file. Returns what
        :meth:`compact_finish` needs."""
        upto = self.size
        now_ms = int(time.time() * 1000)
        kept = 0
        tmp = self.path.with_name(self.path.name + ".compact")
        try:
            with self.path.open("rb") as f, tmp.open("wb") as out:
                for line in f.read(upto).splitlines(keepends=True):
                    grant = _parse(line)
                    if grant is not None and grant.expires_ms > now_ms:
                        out.write(grant.line())
                        kept += 1
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise DurableWriteError(f"{tmp}: {exc.strerror or exc}") from exc
        return tmp, upto, kept

    def compact_finish(self, tmp: Path, upto: int, kept: int) -> int:
        """The quick half, where appends run (the event loop): add what was appended since
        :meth:`compact_begin`, then put the new file in place and append to it."""
        try:
            with self.path.open("rb") as f:
                f.seek(upto)
                tail = f.read()
            with tmp.open("ab") as out:
                out.write(tail)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise DurableWriteError(f"{self.path}: {exc.strerror or exc}") from exc
        self.close()
        self.open()
        return kept + tail.count(b"\n")


def _parse(line: bytes) -> Grant | None:
    try:
        d = orjson.loads(line)
        return Grant(d["s"], d["k"], d["c"], d["e"], d["t"], d["x"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
