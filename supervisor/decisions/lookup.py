"""Was this idempotency key executed before? The decision log's answer, for the double-spend
trigger when both of its other memories have forgotten.

The trigger remembers the last ``memory_keys`` keys; Redis holds each permit for
``permit_ttl_s``. A key that memory evicted and whose permit Redis does not hold (it went back
in time, the permit expired, or the agent never asks for permits) is looked up here: every
``execution`` record of the log is a durable "key K was executed by color C at epoch E".

The query names the execution being judged by its own seq in the log (``exclude``), so that
it does not find itself, and only records up to ``upto`` count (those made before it). One
pass over the files answers a whole batch of keys, newest file first, and stops as soon as
every key has its answer. Costs a read of the log (decompressing the rotated files) when a key
was never executed before: it runs in a thread, only for keys nothing else remembers, and the
deployment batches them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import orjson

from supervisor.config import Color
from supervisor.decisions.files import chain_files, iter_lines
from supervisor.logs import get as get_logger

if TYPE_CHECKING:
    from supervisor.decisions.writer import DecisionLog

log = get_logger("decision_log")

# Keys per pass over the files, and the least time between two passes.
LOOKUP_BATCH: Final = 1000
LOOKUP_INTERVAL_S: Final = 1.0

_EXECUTION: Final = b'"kind":"execution"'


@dataclass(frozen=True, slots=True)
class Query:
    """An execution of ``key`` by ``color`` at ``epoch`` being judged: its own record's seq
    (``exclude``, None when it was not recorded) and the last seq made when it was
    (``upto``)."""

    key: str
    color: Color
    epoch: int | None
    exclude: int | None
    upto: int


@dataclass(frozen=True, slots=True)
class Earlier:
    """An earlier execution of a key, as the log recorded it."""

    color: str
    epoch: int | None
    seq: int
    timestamp: float | None


def find_earlier(path: Path, queries: list[Query], since: float = 0.0) -> list[Earlier | None]:
    """For each query, the latest execution of its key recorded before it, or None (in the
    queries' order; blocking). Rotated files last written before ``since`` (unix seconds)
    are not read."""
    answers: list[Earlier | None] = [None] * len(queries)
    by_key: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        by_key.setdefault(q.key, []).append(i)
    open_ = set(range(len(queries)))
    needles = [orjson.dumps(k) for k in by_key]
    few = len(needles) <= 8
    for file in reversed(chain_files(path)):
        if file != path and _mtime(file) < since:
            break  # older files were last written earlier still
        try:
            lines = _executions(file, needles if few else None)
        except (OSError, EOFError):
            continue  # a file that cannot be read (verify says why) answers nothing
        for rec in reversed(lines):
            key, seq = rec.get("key"), rec.get("seq")
            if not isinstance(key, str) or not isinstance(seq, int) or key not in by_key:
                continue
            for i in by_key[key]:
                q = queries[i]
                if i not in open_ or seq == q.exclude or seq > q.upto:
                    continue
                color, epoch, at = rec.get("color"), rec.get("epoch"), rec.get("timestamp")
                answers[i] = Earlier(
                    str(color),
                    epoch if isinstance(epoch, int) else None,
                    seq,
                    float(at) if isinstance(at, int | float) else None,
                )
                open_.discard(i)
        if not open_:
            break
    return answers


def _mtime(file: Path) -> float:
    try:
        return file.stat().st_mtime
    except OSError:
        return 0.0


def _executions(file: Path, needles: list[bytes] | None) -> list[dict[str, object]]:
    out = []
    for line, complete in iter_lines(file):
        if not complete or _EXECUTION not in line:
            continue
        if needles is not None and not any(n in line for n in needles):
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("kind") == "execution":
            out.append(rec)
    return out


class Lookups:
    """The questions of the double-spend trigger to one decision log, answered in batches."""

    def __init__(self, decisions: DecisionLog) -> None:
        self._log = decisions
        self._queries: asyncio.Queue[Query] = asyncio.Queue(maxsize=10_000)

    def ask(self, query: Query) -> None:
        """Was ``query``'s key executed before? Answered by :meth:`run`; a full queue drops
        the question, and says so."""
        try:
            self._queries.put_nowait(query)
        except asyncio.QueueFull:
            log.warning("decision_log_lookup_dropped", key=query.key[:80], hint="too many at once")

    async def run(self, found: Callable[[Query, Earlier], None], *, horizon_s: float) -> None:
        """Answer the questions, a batch per pass over the files, at most one pass every
        :data:`LOOKUP_INTERVAL_S` (a pass reads the log); files last written more than
        ``horizon_s`` ago are not read (Redis forgets a permit after as long: an execution
        older than that is no double spend to the permits either)."""
        while True:
            batch = [await self._queries.get()]
            while not self._queries.empty() and len(batch) < LOOKUP_BATCH:
                batch.append(self._queries.get_nowait())
            earlier = await self.executed_before(batch, since=time.time() - horizon_s)
            for query, hit in zip(batch, earlier, strict=True):
                if hit is not None:
                    found(query, hit)
            await asyncio.sleep(LOOKUP_INTERVAL_S)

    async def executed_before(
        self, queries: list[Query], since: float = 0.0
    ) -> list[Earlier | None]:
        """For each query, an execution of its key recorded before the one it names, or None.
        Reads the files in a thread, after what is waiting has been written."""
        decisions = self._log
        if not decisions.enabled or not decisions.opened:
            return [None] * len(queries)
        await decisions.flush()
        return await asyncio.to_thread(find_earlier, decisions.path, queries, since)
