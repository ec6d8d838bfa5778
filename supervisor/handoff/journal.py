"""What the candidate did since its latest snapshot: the events a rollback replays to stable.

After a handoff, while the candidate that received the state is in charge, every
``execution``, ``outcome`` and ``escrow`` event it sends is journaled here (in memory, and
appended to ``state_dir/handoff-events.jsonl`` so that a restarted daemon still has them).
When the state has to come back to stable and the candidate cannot give it (it crashed, it
hangs), stable is restored from the candidate's latest snapshot plus the events journaled
since that snapshot was asked for: stable then knows every position the candidate opened.

The journal starts over at each snapshot of the candidate (what came before is in the
snapshot). Events sent while the snapshot was being taken are kept (they may be in it or
not): a replay may repeat an event the state already holds, and an agent deduplicates by
its key (an execution's idempotency key, an escrow's id). Bounded: past ``MAX_EVENTS`` the
oldest are dropped and the replay says it is incomplete.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Final

import orjson

from supervisor.config import Color
from supervisor.logs import get as get_logger

log = get_logger("handoff")

MAX_EVENTS: Final = 100_000
JOURNALED: Final = ("execution", "outcome", "escrow")


class EventJournal:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "handoff-events.jsonl"
        self.color: Color | None = None  # whose events are kept (None: nobody's)
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.seq = 0  # events journaled since start (the marks below count in it)
        self.truncated = False
        self._fd: int | None = None

    def follow(self, color: Color | None) -> None:
        """Journal ``color``'s events from now on (None: stop); starts over."""
        self.color = color
        self.start_over()

    def start_over(self, keep_after: int | None = None) -> None:
        """Forget the events up to mark ``keep_after`` (None: all): a snapshot holds them."""
        if keep_after is None:
            self.events.clear()
        else:
            while self.events and self.events[0]["seq"] <= keep_after:
                self.events.popleft()
        self.truncated = False
        self._rewrite()

    def mark(self) -> int:
        """The position now: events after it are those :meth:`since` returns."""
        return self.seq

    def record(self, color: Color, msg: dict[str, Any]) -> None:
        """A pipeline subscriber: keep the followed color's journaled events."""
        if color is not self.color:
            return
        self.seq += 1
        if len(self.events) == self.events.maxlen:
            self.truncated = True
        event = {**msg, "seq": self.seq, "at": time.time()}
        self.events.append(event)
        if self._fd is not None:
            try:
                os.write(self._fd, orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
            except OSError:  # memory keeps them; only a restarted daemon would miss them
                self._close()

    def since(self, mark: int) -> list[dict[str, Any]]:
        return [e for e in self.events if e["seq"] > mark]

    def load(self, color: Color | None) -> None:
        """At start: the events a daemon before this one journaled for ``color``."""
        self.color = color
        if color is None:
            return
        with contextlib.suppress(OSError):
            for line in self.path.read_bytes().splitlines():
                with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                    event = orjson.loads(line)
                    if type(event) is dict and type(event.get("seq")) is int:
                        self.events.append(event)
                        self.seq = max(self.seq, event["seq"])
        self._open()

    def _rewrite(self) -> None:
        self._close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in self.events))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("handoff_journal_unwritable", error=str(exc), hint="kept in memory")
            return
        if self.color is not None:
            self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError:
            self._fd = None

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close()
