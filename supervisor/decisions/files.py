"""The decision log's files: the current one, the rotated ones beside it, and how to read both.

For ``[decision_log] path = /var/lib/agent-supervisor/decisions.jsonl``::

    decisions.jsonl                                the current file, appended to
    decisions.000000000001-000000052344.jsonl.gz   rotated: its first and last seq, gzipped
    decisions.000000052345-000000104711.jsonl      rotated, not gzipped yet (or compress="none")

The names sort in chain order, and carry the seqs the file must hold, so that a rotated file
cut short or missing is found by :mod:`supervisor.decisions.verify` even where the chain
alone would not say which file it was. Everything here is blocking file I/O: the writer calls
it from its own thread, the CLI from its only one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import io
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from supervisor.decisions.record import GENESIS, line_hash, seq_of

READ_CHUNK: Final = 8 << 20
# gzip level: 3 compresses JSON lines at about 200 MB/s here, 6 (zlib's default) at 90 MB/s for
# files 12 % smaller: a log written at 40 MB/s must be compressed faster than it grows.
GZIP_LEVEL: Final = 3
FILE_MODE: Final = 0o640


class LogFileError(OSError):
    """A file operation of the log failed; ``op`` names which (the metric's label)."""

    def __init__(self, op: str, path: Path, exc: OSError) -> None:
        super().__init__(exc.errno, f"{op} {path}: {exc.strerror or exc}")
        self.op = op


@dataclass(frozen=True, slots=True)
class Rotated:
    """A rotated file and the seqs its name says it holds."""

    path: Path
    first: int
    last: int

    @property
    def compressed(self) -> bool:
        return self.path.suffix == ".gz"


def _split(path: Path) -> tuple[str, str]:
    """``decisions.jsonl`` → (``decisions``, ``.jsonl``)."""
    suffix = path.suffix
    return (path.name[: -len(suffix)] if suffix else path.name), suffix


def rotated_name(path: Path, first: int, last: int) -> Path:
    """Where the current file goes when it is rotated holding seqs ``first``..``last``.

    >>> rotated_name(Path("/l/decisions.jsonl"), 1, 52344).name
    'decisions.000000000001-000000052344.jsonl'
    """
    stem, suffix = _split(path)
    return path.with_name(f"{stem}.{first:012d}-{last:012d}{suffix}")


def rotated_files(path: Path) -> list[Rotated]:
    """The rotated files of the log at ``path``, in chain order. A file both plain and
    gzipped (a compression cut short) is listed once, plain: the gzip may be partial."""
    stem, suffix = _split(path)
    pattern = re.compile(rf"{re.escape(stem)}\.(\d{{12,}})-(\d{{12,}}){re.escape(suffix)}(\.gz)?")
    found: dict[tuple[int, int], Rotated] = {}
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None:
            continue
        first, last = int(m[1]), int(m[2])
        r = Rotated(Path(entry.path), first, last)
        known = found.get((first, last))
        if known is None or (known.compressed and not r.compressed):
            found[(first, last)] = r
    return [found[k] for k in sorted(found)]


def chain_files(path: Path) -> list[Path]:
    """Every file of the log at ``path``, oldest first: the rotated ones, then the current."""
    files = [r.path for r in rotated_files(path)]
    if path.exists():
        files.append(path)
    return files


def open_read(path: Path) -> io.BufferedIOBase:
    """A file of the log for reading, decompressed when its name ends in ``.gz``."""
    if path.suffix == ".gz":
        return gzip.GzipFile(path, "rb")
    return path.open("rb")


def iter_lines(path: Path) -> Iterator[tuple[bytes, bool]]:
    """``(line, complete)`` for each line of ``path`` (without its newline): ``complete`` is
    False only for a last line with no newline (a torn tail). Reads in large chunks.
    A gzip file cut short raises ``EOFError`` after its last whole line."""
    with open_read(path) as f:
        carry = b""
        while chunk := f.read(READ_CHUNK):
            lines = (carry + chunk).split(b"\n") if carry else chunk.split(b"\n")
            carry = lines.pop()
            for line in lines:
                yield line, True
        if carry:
            yield carry, False


def first_line(path: Path) -> bytes | None:
    """The first complete line of ``path``, or None."""
    for line, complete in iter_lines(path):
        return line if complete else None
    return None


@dataclass(frozen=True, slots=True)
class Tail:
    """Where the chain stands at the end of a file: the next record continues it."""

    seq: int  # the last record's seq (0: none yet)
    prev: str  # the hash of the last record's line (GENESIS: none yet)
    torn: bytes = b""  # what followed the last newline (a write cut short), now removed
    first_seq: int | None = None  # the first record's seq in the current file
    first_at: float | None = None  # the first record's timestamp in the current file


def _last_line_of_plain(fd: int, size: int) -> tuple[bytes, int]:
    """(the last complete line, the offset just past its newline) of an open file whose
    ``size`` bytes end with a newline; (b"", 0) when it holds none."""
    if size == 0:
        return b"", 0
    want = 1 << 16
    while True:
        start = max(0, size - want)
        data = os.pread(fd, size - start, start)
        nl = data.rfind(b"\n", 0, len(data) - 1)
        if nl >= 0 or start == 0:
            return data[nl + 1 : -1], size
        want *= 4


def _tail_of_rotated(r: Rotated) -> tuple[int, str]:
    last = b""
    for line, complete in iter_lines(r.path):
        if complete and line:
            last = line
    return _seq_or(last, r.last), line_hash(last) if last else GENESIS


def _seq_or(line: bytes, default: int) -> int:
    seq = seq_of(line)
    if seq is not None:
        return seq
    with contextlib.suppress(orjson.JSONDecodeError):
        value = orjson.loads(line)
        if isinstance(value, dict) and type(value.get("seq")) is int:
            return int(value["seq"])
    return default


class LogFile:
    """The current file, from the writer's thread: append, sync, rotate, compress, prune."""

    def __init__(self, path: Path, *, compress: bool, keep: int) -> None:
        self.path = path
        self.compress = compress
        self.keep = keep
        self.fd: int | None = None
        self.size = 0
        self.first_seq: int | None = None
        self.first_at: float | None = None
        self.last_seq = 0
        self.dirty = False  # written since the last sync
        self._lock_fd: int | None = None

    def open(self) -> Tail:
        """Open (or create) the current file and find where the chain stands: its last
        complete record, or the newest rotated file's when it is empty. A torn last line (a
        write cut short by kill -9 or a full disk) is cut off and returned, so that the
        next record starts on a line of its own."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise LogFileError("open", self.path, exc) from exc
        try:
            size = os.fstat(fd).st_size
            torn = b""
            if size:
                keep = size
                while keep > 0:
                    start = max(0, keep - (1 << 16))
                    data = os.pread(fd, keep - start, start)
                    nl = data.rfind(b"\n")
                    if nl >= 0:
                        keep = start + nl + 1
                        break
                    keep = start
                if keep < size:
                    torn = os.pread(fd, size - keep, keep)
                    os.ftruncate(fd, keep)
                    os.fsync(fd)
                    size = keep
            line, _ = _last_line_of_plain(fd, size)
        except OSError as exc:
            os.close(fd)
            raise LogFileError("open", self.path, exc) from exc
        self.fd, self.size = fd, size
        if line:
            head = first_line(self.path) or line
            self.first_seq = _seq_or(head, 1)
            self.first_at = _timestamp(head)
            seq, prev = _seq_or(line, self.first_seq), line_hash(line)
        else:
            rotated = rotated_files(self.path)
            seq, prev = _tail_of_rotated(rotated[-1]) if rotated else (0, GENESIS)
        self.last_seq = seq
        return Tail(seq, prev, torn, self.first_seq, self.first_at)

    def _lock(self) -> None:
        """One writer per log: two daemons appending to one file would interleave two
        chains (``[decision_log] path`` shared by mistake). Let go by the kernel with us."""
        if self._lock_fd is not None:
            return
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(errno.EWOULDBLOCK, "another process writes this log") from None
        self._lock_fd = fd

    def write(
        self, data: bytes | bytearray, first_seq: int, last_seq: int, first_at: float
    ) -> None:
        """Append whole records. On a failure nothing of ``data`` stays in the file (what
        was written of it is cut off again), so the file always ends on a whole record."""
        fd = self.fd
        assert fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.size)
            raise LogFileError("write", self.path, exc) from exc
        if self.first_seq is None:
            self.first_seq, self.first_at = first_seq, first_at
        self.size += len(data)
        self.last_seq = last_seq
        self.dirty = True

    def sync(self) -> float:
        """fdatasync; returns the seconds it took."""
        assert self.fd is not None
        started = time.perf_counter()
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise LogFileError("sync", self.path, exc) from exc
        self.dirty = False
        return time.perf_counter() - started

    def due(self, rotate_bytes: int, rotate_age_s: float, now: float) -> bool:
        """Whether the current file should be rotated now (it holds at least one record)."""
        if self.first_seq is None or self.size == 0:
            return False
        if self.size >= rotate_bytes:
            return True
        return (
            rotate_age_s > 0 and self.first_at is not None and now - self.first_at >= rotate_age_s
        )

    def rotate(self) -> Rotated:
        """Sync, rename the current file to its rotated name, start an empty one."""
        assert self.fd is not None
        assert self.first_seq is not None
        target = rotated_name(self.path, self.first_seq, self.last_seq)
        try:
            os.fsync(self.fd)
            os.rename(self.path, target)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            _sync_dir(self.path.parent)
        except OSError as exc:
            raise LogFileError("rotate", self.path, exc) from exc
        os.close(self.fd)
        rotated = Rotated(target, self.first_seq, self.last_seq)
        self.fd, self.size, self.first_seq, self.first_at, self.dirty = fd, 0, None, None, False
        return rotated

    def close(self) -> None:
        for fd in (self.fd, self._lock_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self._lock_fd = None


def compress(r: Rotated) -> Rotated:
    """Gzip a rotated file (``.gz.tmp``, fsync, rename, then the plain one removed): a
    crash at any point leaves the plain file, or both (and the plain one is read)."""
    if r.compressed:
        return r
    target = r.path.with_name(r.path.name + ".gz")
    tmp = target.with_name(target.name + ".tmp")
    try:
        st = r.path.stat()
        with r.path.open("rb") as src, tmp.open("wb") as raw:
            os.fchmod(raw.fileno(), FILE_MODE)
            with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL) as gz:
                shutil.copyfileobj(src, gz, READ_CHUNK)
            raw.flush()
            os.fsync(raw.fileno())
        # The plain file's times: a query skips a rotated file by when it was last written.
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, target)
        _sync_dir(target.parent)
        r.path.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LogFileError("compress", r.path, exc) from exc
    return Rotated(target, r.first, r.last)


def prunable(path: Path, keep: int) -> list[Rotated]:
    """The oldest rotated files beyond ``keep`` (0: keep all), oldest first."""
    rotated = rotated_files(path)
    if keep <= 0 or len(rotated) <= keep:
        return []
    return rotated[: len(rotated) - keep]


def remove(gone: list[Rotated]) -> None:
    """Remove these rotated files (and a plain twin of a gzipped one)."""
    for r in gone:
        try:
            r.path.unlink()
            if r.compressed:
                with contextlib.suppress(FileNotFoundError):
                    r.path.with_suffix("").unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LogFileError("retention", r.path, exc) from exc


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _timestamp(line: bytes) -> float | None:
    with contextlib.suppress(orjson.JSONDecodeError):
        value = orjson.loads(line)
        if isinstance(value, dict) and isinstance(value.get("timestamp"), int | float):
            return float(value["timestamp"])
    return None
