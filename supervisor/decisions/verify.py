"""``decisions verify``: is the chain intact, across every file, and if not, where and how.

Each record's ``prev`` is the SHA-256 of the line before it and its ``seq`` one more than that
line's, so one pass over the files in chain order (the rotated ones by the seqs in their
names, then the current one) checks everything. At the first record that does not follow,
a look ahead tells what happened, and the problem names the record:

- **changed**: seq N's line no longer hashes to what seq N+1 recorded (a field was edited);
- **removed**: seqs N..M are not there (a line, a run of lines or a whole file deleted);
- **inserted**: a line that no later record points at (a record forged in);
- **reordered**: seq N comes after seq N+k (lines swapped);
- **truncated**: a rotated file holds fewer records than its name says, a gzip ends early, or
  the log ends before the head the daemon says it wrote (``--head``, or asked of a running
  daemon);
- **unreadable**: a line that is not a record, a file that cannot be read.

After a problem the pass takes the chain up again at the next record, so that every problem is
counted, not only the first. A last line cut short in the newest file (a write that a
``kill -9`` or a full disk interrupted) is a **torn tail**: reported, not a problem, since
the daemon removes it at its next start and says so in its ``start`` record. ``gap`` records
(what the daemon could not write, counted) are listed, not problems: the log says itself what
it lacks. A log whose oldest file starts past seq 1 needs a ``retention`` record saying the
older files were removed on purpose.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from supervisor.decisions import record
from supervisor.decisions.files import iter_lines, rotated_files
from supervisor.decisions.record import GENESIS, prev_of, seq_of

# How far ahead a record missing from its place is looked for before it counts as removed.
LOOKAHEAD: Final = 64
# Problems listed in full; past that they are only counted.
MAX_LISTED: Final = 50


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # changed, removed, inserted, reordered, truncated, unreadable
    message: str
    seq: int | None = None
    file: str | None = None
    line: int | None = None


@dataclass
class Report:
    ok: bool = True
    files: list[str] = field(default_factory=list)
    records: int = 0
    bytes: int = 0
    seconds: float = 0.0
    first_seq: int | None = None
    last_seq: int | None = None
    head: str | None = None  # the hash of the last record
    problems: list[Problem] = field(default_factory=list)
    problems_total: int = 0
    torn_tail: dict[str, Any] | None = None
    gaps: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, problem: Problem) -> None:
        self.ok = False
        self.problems_total += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(problem)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mb_per_s"] = round(self.mb_per_s, 1)
        return out


@dataclass(slots=True)
class _Entry:
    file: str
    line: int
    raw: bytes
    seq: int | None
    prev: str | None
    hash: str

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _entry(file: str, lineno: int, raw: bytes) -> _Entry:
    seq, prev = seq_of(raw), prev_of(raw)
    if seq is None or prev is None:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            s, p = value.get("seq"), value.get("prev")
            seq = s if type(s) is int else None
            prev = p if isinstance(p, str) else None
    return _Entry(file, lineno, raw, seq, prev, record.line_hash(raw))


class _Source:
    """The lines of the log's files in chain order, as entries, with a look-ahead."""

    def __init__(self, files: list[Path], report: Report) -> None:
        self.files = files
        self.report = report
        self.ahead: deque[_Entry] = deque()
        self.raw = self._lines()  # (file, line number, line): the walk's fast path reads these
        self.torn: tuple[str, int, bytes] | None = None
        self.file_records: dict[str, list[int]] = {}  # file → [first seq, last seq, count]

    def _lines(self) -> Iterator[tuple[str, int, bytes]]:
        report = self.report
        last_index = len(self.files) - 1
        for index, path in enumerate(self.files):
            name = path.name
            report.files.append(str(path))
            lineno = 0
            try:
                for raw, complete in iter_lines(path):
                    lineno += 1
                    report.bytes += len(raw) + 1
                    if not complete:
                        if index == last_index:
                            self.torn = (name, lineno, raw)
                        else:
                            report.add(
                                Problem(
                                    "truncated",
                                    f"{name} ends in the middle of a line (line {lineno}, "
                                    f"{len(raw)} bytes): the file was cut short",
                                    file=name,
                                    line=lineno,
                                )
                            )
                        continue
                    yield name, lineno, raw
            except EOFError:
                report.add(
                    Problem(
                        "truncated",
                        f"{name}: the gzip stream ends early, after line {lineno}",
                        file=name,
                        line=lineno,
                    )
                )
            except (OSError, zlib.error) as exc:
                report.add(
                    Problem("unreadable", f"{name}: cannot be read: {exc}", file=name, line=lineno)
                )

    def next(self) -> _Entry | None:
        if self.ahead:
            return self.ahead.popleft()
        item = next(self.raw, None)
        return None if item is None else _entry(*item)

    def peek(self, n: int) -> list[_Entry]:
        """Up to ``n`` entries after the current one, without taking them."""
        while len(self.ahead) < n:
            item = next(self.raw, None)
            if item is None:
                break
            self.ahead.append(_entry(*item))
        return list(self.ahead)[:n]

    def take(self, n: int) -> None:
        for _ in range(n):
            self.ahead.popleft()


def verify(path: Path, *, whole_log: bool = True, head: tuple[int, str] | None = None) -> Report:
    """Check the chain of the log at ``path`` (its rotated files too, ``whole_log``), or of
    the one file ``path`` (``whole_log=False``: its first record is taken as the anchor).
    ``head``: (seq, hash) the log must reach, from a running daemon or a saved anchor."""
    started = time.perf_counter()
    report = Report()
    if whole_log:
        rotated = rotated_files(path)
        files = [r.path for r in rotated] + ([path] if path.exists() else [])
        named = {r.path.name: (r.first, r.last) for r in rotated}
    else:
        files, named = [path], {}
    if not files:
        report.add(Problem("unreadable", f"{path}: no such log"))
        return report
    source = _Source(files, report)
    walked = _walk(source, report, head)
    _check_names(source, named, report)
    if head is not None:
        _check_head(report, head, walked)
    if report.first_seq is not None and (report.first_seq > 1 or walked.first_not_genesis):
        _check_start(report, whole_log, walked)
    report.seconds = time.perf_counter() - started
    return report


@dataclass(slots=True)
class _Walked:
    """What the pass learnt besides the report."""

    first_not_genesis: bool = False
    retention: set[int] = field(default_factory=set)  # before_seq of every retention record
    head_seen: bool = False


def _walk(source: _Source, report: Report, head: tuple[int, str] | None) -> _Walked:
    """One pass. A line that is exactly what comes next (it starts with the seq expected
    and ends with the hash of the line before) takes the fast path: one hash, two compares;
    anything else is parsed and diagnosed."""
    walked = _Walked()
    expected_seq: int | None = None
    expected_prev: str | None = None
    two_back: str | None = None  # the hash of the record before the last good one
    last: _Entry | None = None
    last_raw: tuple[str, int, bytes, str] | None = None  # the fast path's last, unparsed
    tail = b""  # how the next line must end: ,"prev":"<expected_prev>"}
    spans = source.file_records
    head_seq = head[0] if head is not None else -1
    sha256, raw_lines, ahead = hashlib.sha256, source.raw, source.ahead
    while True:
        if not ahead and expected_seq is not None:
            item = next(raw_lines, None)
            if item is None:
                break
            name, lineno, raw = item
            if raw.endswith(tail) and raw.startswith(b'{"v":1,"seq":%d,' % expected_seq):
                digest = sha256(raw).hexdigest()
                if (
                    b'"kind":"gap"' in raw
                    or b'"kind":"retention"' in raw
                    or expected_seq == head_seq
                ):
                    e = _Entry(name, lineno, raw, expected_seq, expected_prev, digest)
                    _note(e, report, walked, head)
                span = spans.get(name)
                if span is None:
                    spans[name] = span = [expected_seq, expected_seq, 0]
                span[1] = expected_seq
                span[2] += 1
                report.records += 1
                two_back, expected_prev = expected_prev, digest
                expected_seq += 1
                last, last_raw = None, (name, lineno, raw, digest)
                tail = b',"prev":"' + digest.encode() + b'"}'
                continue
            e = _entry(name, lineno, raw)
        else:
            got = source.next()
            if got is None:
                break
            e = got
        if last is None and last_raw is not None:
            last = _entry(*last_raw[:3])
        span = spans.setdefault(e.file, [e.seq or 0, e.seq or 0, 0])
        span[2] += 1
        if e.seq is not None:
            span[1] = e.seq
        if e.seq is None or e.prev is None:
            report.add(
                Problem(
                    "unreadable",
                    f"{e.where()} is not a record of this log",
                    file=e.file,
                    line=e.line,
                )
            )
            continue
        _note(e, report, walked, head)
        if expected_seq is None:
            report.first_seq = e.seq
            walked.first_not_genesis = e.prev != GENESIS
        elif e.seq != expected_seq or e.prev != expected_prev:
            assert last is not None
            assert expected_prev is not None
            resync = _diagnose(source, report, e, last, expected_seq, expected_prev, two_back)
            if resync is not None:
                e = resync
        report.records += 1
        two_back = expected_prev
        assert e.seq is not None  # every entry past the check above has one
        expected_seq, expected_prev, last, last_raw = e.seq + 1, e.hash, e, None
        tail = b',"prev":"' + e.hash.encode() + b'"}'
    if last is None and last_raw is not None:
        last = _entry(*last_raw[:3])
    if last is not None:
        report.last_seq, report.head = last.seq, last.hash
    if source.torn is not None:
        name, lineno, raw = source.torn
        report.torn_tail = {
            "file": name,
            "line": lineno,
            "bytes": len(raw),
            "after_seq": report.last_seq,
        }
    return walked


def _note(e: _Entry, report: Report, walked: _Walked, head: tuple[int, str] | None) -> None:
    """What a record says besides its place in the chain: a gap, a retention, the head."""
    _note_kind(e, report, walked.retention)
    if head is not None and e.seq == head[0]:
        walked.head_seen = True
        if e.hash != head[1]:
            report.add(
                Problem(
                    "changed",
                    f"seq {e.seq} ({e.where()}) does not hash to the head the daemon wrote",
                    seq=e.seq,
                    file=e.file,
                    line=e.line,
                )
            )


def _note_kind(e: _Entry, report: Report, retention: set[int]) -> None:
    raw = e.raw
    if b'"kind":"gap"' in raw or b'"kind":"retention"' in raw:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if not isinstance(value, dict):
            return
        if value.get("kind") == record.GAP:
            report.gaps.append(
                {
                    "seq": e.seq,
                    "count": value.get("count"),
                    "by_kind": value.get("by_kind"),
                    "since": value.get("since"),
                    "until": value.get("until"),
                }
            )
        elif value.get("kind") == record.RETENTION and type(value.get("before_seq")) is int:
            retention.add(value["before_seq"])


def _diagnose(
    source: _Source,
    report: Report,
    e: _Entry,
    last: _Entry,
    expected_seq: int,
    expected_prev: str,
    two_back: str | None,
) -> _Entry | None:
    """Name what broke the chain at ``e``; returns the entry to take the chain up from when
    it is not ``e`` (a reordered run ends at another)."""
    assert e.seq is not None
    where = e.where()
    # The last record was forged in well (its own prev right): nobody points at it.
    if two_back is not None and e.prev == two_back and e.seq <= expected_seq:
        report.add(
            Problem(
                "inserted",
                f"{last.where()} (claiming seq {last.seq}) was inserted: seq {e.seq} at "
                f"{where} points past it",
                seq=last.seq,
                file=last.file,
                line=last.line,
            )
        )
        return None
    if e.seq > expected_seq:
        ahead = source.peek(LOOKAHEAD)
        for j, later in enumerate(ahead):
            if later.seq != expected_seq:
                continue
            window = [e, *ahead[: j + 1]]
            if _chains(sorted(window, key=lambda x: x.seq or 0), expected_prev):
                report.add(
                    Problem(
                        "reordered",
                        f"seq {expected_seq} ({later.where()}) comes after seq {e.seq} "
                        f"({where}): lines were moved",
                        seq=expected_seq,
                        file=later.file,
                        line=later.line,
                    )
                )
                source.take(j + 1)
                return max(window, key=lambda x: x.seq or 0)
            if later.prev == expected_prev:
                report.add(
                    Problem(
                        "inserted",
                        f"{where} (claiming seq {e.seq}) and the {j} line(s) after it were "
                        f"inserted before seq {expected_seq} ({later.where()})",
                        seq=e.seq,
                        file=e.file,
                        line=e.line,
                    )
                )
                source.take(j + 1)
                return later
            break
        missing = (
            f"seq {expected_seq}"
            if e.seq == expected_seq + 1
            else f"seqs {expected_seq}..{e.seq - 1}"
        )
        across = (
            f" (between {last.file} and {e.file}: a whole file?)" if last.file != e.file else ""
        )
        report.add(
            Problem(
                "removed",
                f"{missing} removed: seq {last.seq} at {last.where()} is followed by seq "
                f"{e.seq} at {where}{across}",
                seq=expected_seq,
                file=e.file,
                line=e.line,
            )
        )
        return None
    # This line is not pointed at by the next one while the next one follows the last good
    # record: this one was inserted.
    ahead = source.peek(1)
    if ahead and ahead[0].prev == expected_prev and ahead[0].seq == expected_seq:
        report.add(
            Problem(
                "inserted",
                f"{where} (claiming seq {e.seq}) was inserted: the next line follows seq "
                f"{last.seq} directly",
                seq=e.seq,
                file=e.file,
                line=e.line,
            )
        )
        nxt = source.next()
        assert nxt is not None
        report.records += 1  # the next one, taken here
        return nxt
    if e.seq == expected_seq:
        report.add(
            Problem(
                "changed",
                f"seq {last.seq} ({last.where()}) was changed: its line no longer hashes to "
                f"the prev recorded by seq {e.seq} ({where})",
                seq=last.seq,
                file=last.file,
                line=last.line,
            )
        )
        return None
    report.add(
        Problem(
            "reordered",
            f"seq {e.seq} ({where}) comes after seq {last.seq}: out of order",
            seq=e.seq,
            file=e.file,
            line=e.line,
        )
    )
    return None


def _chains(entries: list[_Entry], prev: str) -> bool:
    for e in entries:
        if e.prev != prev:
            return False
        prev = e.hash
    return True


def _check_names(source: _Source, named: dict[str, tuple[int, int]], report: Report) -> None:
    """A rotated file must hold exactly the seqs its name says."""
    for name, (first, last) in named.items():
        span = source.file_records.get(name)
        if span is None:
            continue
        if span[0] != first or span[1] != last:
            report.add(
                Problem(
                    "truncated",
                    f"{name} should hold seqs {first}..{last} but holds {span[0]}..{span[1]}",
                    seq=last if span[1] < last else first,
                    file=name,
                )
            )


def _check_head(report: Report, head: tuple[int, str], walked: _Walked) -> None:
    seq, _ = head
    last = report.last_seq or 0
    if last < seq:
        report.add(
            Problem(
                "truncated",
                f"the log ends at seq {last}, but the daemon wrote up to seq {seq}: "
                f"seqs {last + 1}..{seq} were cut off",
                seq=last + 1,
            )
        )
    elif not walked.head_seen:
        report.add(Problem("removed", f"seq {seq}, the daemon's head, is not in the log", seq=seq))


def _check_start(report: Report, whole_log: bool, walked: _Walked) -> None:
    first = report.first_seq
    assert first is not None
    if not whole_log:
        report.notes.append(f"starts at seq {first}: the records before it are in older files")
        return
    if first in walked.retention:
        report.notes.append(f"starts at seq {first}: older files were removed (keep)")
        return
    if first > 1:
        why = (
            f"the log starts at seq {first} without a retention record saying why: "
            f"seqs 1..{first - 1} are missing"
        )
    else:
        why = "the first record does not start the chain (its prev is not the genesis)"
    report.add(Problem("removed", why, seq=1))
