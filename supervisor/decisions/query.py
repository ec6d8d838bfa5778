"""``decisions query`` and ``decisions tail``: records by time, color, version, kind, key,
epoch, read straight from the files (no daemon needed), printed as JSON lines or a table.

Two engines answer the same :class:`Filter`:

- **python** (always there): streams every file in chain order; a line is parsed only when the
  bytes it must contain are in it (``"color":"green"``, the key in quotes...), so a selective
  query runs at about the speed of reading the files. Rotated files that end before
  ``--since`` or start after ``--until`` are not opened.
- **duckdb** (``pip install 'agent-supervisor[query]'``, ``--engine duckdb``): DuckDB's JSON
  reader over the same files. Measured on a 1 GB log here (bench/decision_log.py, 2 shared
  cores): one key 2.7-3.5 s against 0.9-1.1 s for the Python engine (0.5 s for ``grep -c``);
  308,000 of 2.8 million records 3.3-3.5 s against 3.3-5.0 s. It does not pay for a selective
  query and little for a broad one, so ``--engine auto`` (the default) is the Python engine.

The output is the same records either way: the lines as stored (``--json``), or a table.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import importlib.util
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from supervisor.decisions.files import (
    READ_CHUNK,
    chain_files,
    first_line,
    iter_lines,
    open_read,
    rotated_files,
)

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class QueryError(ValueError):
    """A filter that cannot be understood (its message says which and why)."""


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from ``1767225600``, an ISO 8601 time (UTC unless it says otherwise),
    ``now``, or an age (``90s``, ``15m``, ``2h``, ``1d``, ``1w``: that long ago).

    >>> parse_time("1767225600.5")
    1767225600.5
    >>> parse_time("2026-01-01T00:00:00Z")
    1767225600.0
    >>> parse_time("2h", now=10_000.0)
    2800.0
    """
    text = text.strip()
    now = time.time() if now is None else now
    if text == "now":
        return now
    with contextlib.suppress(ValueError):
        return float(text)
    m = _RELATIVE.fullmatch(text)
    if m:
        return now - float(m[1]) * _UNITS[m[2]]
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(
            f"{text!r} is not a time: use unix seconds, ISO 8601 (2026-01-01T12:00:00Z) or an "
            "age (15m, 2h, 1d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def parse_epochs(text: str) -> tuple[int, int]:
    """``7`` or ``7..9`` (both included).

    >>> parse_epochs("7"), parse_epochs("7..9")
    ((7, 7), (7, 9))
    """
    lo, sep, hi = text.partition("..")
    try:
        low = int(lo)
        high = int(hi) if sep else low
    except ValueError:
        raise QueryError(f"{text!r} is not an epoch: use N or N..M") from None
    if high < low:
        raise QueryError(f"{text!r}: the range is empty")
    return low, high


@dataclass(frozen=True, slots=True)
class Filter:
    """What a record must be to be shown; every field left empty lets anything through."""

    since: float | None = None
    until: float | None = None
    colors: tuple[str, ...] = ()
    versions: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    key: str | None = None  # an execution's idempotency key, or any record's decision_id
    epochs: tuple[int, int] | None = None
    limit: int | None = None  # the latest N

    def needles(self) -> list[tuple[bytes, ...]]:
        """Byte strings of which a matching line holds at least one, per condition."""
        out: list[tuple[bytes, ...]] = []
        if self.kinds:
            out.append(tuple(b'"kind":' + orjson.dumps(k) for k in self.kinds))
        if self.colors:
            out.append(tuple(b'"color":' + orjson.dumps(c) for c in self.colors))
        if self.versions:
            out.append(tuple(b'"agent_version":' + orjson.dumps(v) for v in self.versions))
        if self.key is not None:
            out.append((orjson.dumps(self.key),))
        return out

    def matches(self, rec: dict[str, Any]) -> bool:
        at = rec.get("timestamp")
        if self.since is not None and not (isinstance(at, int | float) and at >= self.since):
            return False
        if self.until is not None and not (isinstance(at, int | float) and at <= self.until):
            return False
        if self.colors and rec.get("color") not in self.colors:
            return False
        if self.versions and rec.get("agent_version") not in self.versions:
            return False
        if self.kinds and rec.get("kind") not in self.kinds:
            return False
        if self.key is not None and self.key not in (rec.get("key"), rec.get("decision_id")):
            return False
        if self.epochs is not None:
            epoch = rec.get("epoch")
            if type(epoch) is not int or not self.epochs[0] <= epoch <= self.epochs[1]:
                return False
        return True


def _files_for(path: Path, f: Filter) -> list[Path]:
    """The files that may hold matching records: a rotated file whose last write was before
    ``since``, or whose first record is after ``until``, is left out."""
    out = []
    rotated = rotated_files(path)
    for r in rotated:
        if f.since is not None:
            with contextlib.suppress(OSError):
                if r.path.stat().st_mtime < f.since:
                    continue
        if f.until is not None:
            first = _first_timestamp(r.path)
            if first is not None and first > f.until:
                break
        out.append(r.path)
    if path.exists():
        out.append(path)
    return out


def _first_timestamp(path: Path) -> float | None:
    with contextlib.suppress(OSError, EOFError, orjson.JSONDecodeError):
        line = first_line(path)
        if line:
            value = orjson.loads(line)
            at = value.get("timestamp") if isinstance(value, dict) else None
            return float(at) if isinstance(at, int | float) else None
    return None


def python_query(path: Path, f: Filter) -> Iterator[bytes]:
    """Matching records as stored (one line each, no newline), oldest first."""
    needles = f.needles()
    out: Iterator[bytes] = _scan(_files_for(path, f), f, needles)
    if f.limit is not None:
        out = iter(deque(out, maxlen=f.limit))
    return out


def _scan(files: list[Path], f: Filter, needles: list[tuple[bytes, ...]]) -> Iterator[bytes]:
    loads = orjson.loads
    # The condition with the fewest byte strings drives: each chunk is searched for them at C
    # speed (as grep does) and only the lines they fall in are looked at; the others are
    # checked on those lines, then the record is parsed and matched exactly.
    driver = min(needles, key=len) if needles else None
    others = [g for g in needles if g is not driver]
    for file in files:
        try:
            for chunk in _chunks(file):
                for line in _lines_with(chunk, driver):
                    if others and not all(any(n in line for n in g) for g in others):
                        continue
                    try:
                        rec = loads(line)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(rec, dict) and f.matches(rec):
                        yield line
        except (OSError, EOFError):
            continue  # `decisions verify` says what is wrong with a file


def _chunks(file: Path) -> Iterator[bytes]:
    """The file in large pieces that each end on a newline (a torn last line is left out)."""
    with open_read(file) as fh:
        carry = b""
        while block := fh.read(READ_CHUNK):
            data = carry + block if carry else block
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if cut:
                yield data[:cut]


def _lines_with(chunk: bytes, driver: tuple[bytes, ...] | None) -> Iterator[bytes]:
    """The lines of ``chunk`` (no newline) holding one of ``driver``, in order; all lines
    when there is no driver."""
    if driver is None:
        yield from chunk.split(b"\n")[:-1]
        return
    starts: dict[int, int] = {}
    for needle in driver:
        at = chunk.find(needle)
        while at >= 0:
            begin = chunk.rfind(b"\n", 0, at) + 1
            end = chunk.find(b"\n", at)
            starts[begin] = end
            at = chunk.find(needle, end)
    for begin in sorted(starts):
        yield chunk[begin : starts[begin]]


def duckdb_available() -> bool:
    return importlib.util.find_spec("duckdb") is not None


def duckdb_query(path: Path, f: Filter) -> Iterator[bytes]:
    """The same records through DuckDB (raises ImportError when it is not installed)."""
    duckdb = importlib.import_module("duckdb")  # an optional extra: untyped here

    files = [str(p) for p in _files_for(path, f)]
    if not files:
        return iter(())
    where, params = _sql_where(f)
    # Every line as its text, and only the fields filtered on parsed: records differ by kind,
    # and a schema inferred from a sample would drop the fields of the kinds it did not see.
    sql = (
        "SELECT json FROM ("
        " SELECT json, json_extract(json, '$.seq')::BIGINT AS seq,"
        " json_extract(json, '$.timestamp')::DOUBLE AS ts,"
        " json_extract_string(json, '$.kind') AS kind,"
        " json_extract_string(json, '$.color') AS color,"
        " json_extract_string(json, '$.agent_version') AS version,"
        " json_extract_string(json, '$.key') AS key,"
        " json_extract_string(json, '$.decision_id') AS decision_id,"
        " TRY_CAST(json_extract(json, '$.epoch') AS BIGINT) AS epoch"
        " FROM read_json_objects(?, format='newline_delimited', ignore_errors=true)"
        f") WHERE {where} ORDER BY seq"
    )
    if f.limit is not None:
        latest = f"{sql} DESC LIMIT {int(f.limit)}"
        sql = f"SELECT json FROM ({latest}) ORDER BY json_extract(json, '$.seq')::BIGINT"
    con = duckdb.connect()
    try:
        rows = con.execute(sql, [files, *params]).fetchall()
    finally:
        con.close()
    return (row[0].encode() if isinstance(row[0], str) else bytes(row[0]) for row in rows)


def _sql_where(f: Filter) -> tuple[str, list[Any]]:
    clauses: list[str] = ["TRUE"]
    params: list[Any] = []
    if f.since is not None:
        clauses.append("ts >= ?")
        params.append(f.since)
    if f.until is not None:
        clauses.append("ts <= ?")
        params.append(f.until)
    for column, values in (("kind", f.kinds), ("color", f.colors), ("version", f.versions)):
        if values:
            clauses.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params.extend(values)
    if f.key is not None:
        clauses.append("(key = ? OR decision_id = ?)")
        params += [f.key, f.key]
    if f.epochs is not None:
        clauses.append("epoch BETWEEN ? AND ?")
        params += list(f.epochs)
    return " AND ".join(clauses), params


def query(path: Path, f: Filter, engine: str = "auto") -> tuple[str, Iterator[bytes]]:
    """(the engine used, the matching lines). ``engine``: auto (python: see the module's
    docstring for why), python or duckdb."""
    if engine == "duckdb":
        try:
            return "duckdb", duckdb_query(path, f)
        except ImportError:
            raise QueryError(
                "DuckDB is not installed: pip install 'agent-supervisor[query]'"
            ) from None
    return "python", python_query(path, f)


# tail ------------------------------------------------------------------------------------


def last_records(path: Path, n: int) -> list[bytes]:
    """The last ``n`` complete records of the log (the current file, then older ones)."""
    out: deque[bytes] = deque(maxlen=n)
    files = chain_files(path)
    # Read from the newest file back until n are found.
    taken: list[list[bytes]] = []
    count = 0
    for file in reversed(files):
        lines: deque[bytes] = deque(maxlen=n)
        with contextlib.suppress(OSError, EOFError):
            for line, complete in iter_lines(file):
                if complete and line:
                    lines.append(line)
        taken.append(list(lines))
        count += len(lines)
        if count >= n:
            break
    for chunk in reversed(taken):
        out.extend(chunk)
    return list(out)


def follow(
    path: Path, emit: Callable[[bytes], None], *, poll_s: float = 0.2, stop: Callable[[], bool]
) -> None:
    """Print what is appended to the current file as it comes, across rotations (the old
    file is read to its end before the new one is opened), until ``stop()``."""
    fd: int | None = None
    ino = None
    carry = b""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        ino = os.fstat(fd).st_ino
        os.lseek(fd, 0, os.SEEK_END)
    try:
        while not stop():
            if fd is not None:
                while chunk := os.read(fd, 1 << 20):
                    *lines, carry = (carry + chunk).split(b"\n")
                    for line in lines:
                        if line:
                            emit(line)
            try:
                now_ino = os.stat(path).st_ino
            except FileNotFoundError:
                now_ino = None
            if now_ino is not None and now_ino != ino:
                if fd is not None:
                    os.close(fd)
                fd, ino, carry = os.open(path, os.O_RDONLY), now_ino, b""
                continue
            time.sleep(poll_s)
    finally:
        if fd is not None:
            os.close(fd)


# printing ---------------------------------------------------------------------------------

COLUMNS: Final = ("time (UTC)", "seq", "kind", "color", "version", "epoch", "what")


def summary(rec: dict[str, Any]) -> str:
    """One line saying what a record is about."""
    kind = rec.get("kind")
    if kind == "decision":
        reasoning = f"  ({rec['reasoning']})" if rec.get("reasoning") else ""
        return (
            f"{rec.get('decision_type')} {_compact(rec.get('inputs'))} -> "
            f"{_compact(rec.get('output'))}{reasoning}"
        )
    if kind == "execution":
        return f"key={rec.get('key')} amount={rec.get('amount')} decision={rec.get('decision_id')}"
    if kind == "outcome":
        pnl = rec.get("pnl")
        shown = f"{pnl:+g}" if isinstance(pnl, int | float) else str(pnl)
        return f"pnl={shown} decision={rec.get('decision_id')}"
    if kind == "error":
        return f"{rec.get('error_kind')}: {rec.get('message')}"
    if kind == "flip":
        trigger = f", trigger {rec['trigger']}" if rec.get("trigger") else ""
        why = f"{rec.get('reason')}, by {rec.get('by')}{trigger}"
        return f"{rec.get('from')} -> {rec.get('to')} ({why})"
    if kind == "gap":
        return f"GAP: {rec.get('count')} records not written {_compact(rec.get('by_kind'))}"
    own = {k: v for k, v in rec.items() if k not in _COMMON}
    return _compact(own)


_COMMON: Final = frozenset(
    {"v", "seq", "id", "timestamp", "kind", "color", "epoch", "role", "agent_version"}
    | {"flags", "config", "prev"}
)


def _compact(value: Any, width: int = 120) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def table_row(line: bytes) -> tuple[str, ...]:
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return ("?", "?", "?", "", "", "", line[:120].decode(errors="replace"))
    if not isinstance(rec, dict):
        return ("?", "?", "?", "", "", "", "")
    at = rec.get("timestamp")
    when = (
        dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        if isinstance(at, int | float)
        else "?"
    )
    return (
        when,
        str(rec.get("seq", "?")),
        str(rec.get("kind", "?")),
        str(rec.get("color") or "-"),
        str(rec.get("agent_version") or "-"),
        str(rec.get("epoch") if rec.get("epoch") is not None else "-"),
        summary(rec),
    )


def render_table(lines: Sequence[bytes]) -> str:
    rows = [table_row(line) for line in lines]
    widths = [len(c) for c in COLUMNS]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    out = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(COLUMNS)).rstrip()]
    for row in rows:
        out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    return "\n".join(out)


def row_line(line: bytes) -> str:
    """One record as one table row without a header (for ``tail -f``)."""
    return "  ".join(table_row(line))
