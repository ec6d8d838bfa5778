"""A handoff's progress, kept where a restarted daemon finds it: Redis ``{ns}:handoff`` and
``state_dir/handoff.json``.

The record is written before the first step (fsynced: a daemon killed right after quiescing
must know it did) and after each step (written and renamed, not fsynced: a ``kill -9`` of the
daemon loses no page cache, and after a power cut the daemon still finds the record of the
start, which is all that undoing needs). Redis holds the same fields for anyone looking; the
file is what the daemon trusts at start, Redis having perhaps gone back in time.

The phases, in order::

    quiescing → snapshotting → storing → restoring → flipping
        → completed (the new color in charge, holding the state; the record stays until the
          candidate is confirmed or rolled back: a rollback carries the state back)
        → carried_back / confirmed
    any step before the flip → aborted (the old color resumed, never stopped being in charge)
    dry_run: a verified restore, nothing flipped

A daemon started over a record in a phase before ``completed`` decides by who acts: the new
color in charge means the flip committed (finished), else it did not (undone).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from supervisor.arbiter.durable import DurableWriteError, write_atomically
from supervisor.config import Color
from supervisor.logs import get as get_logger

log = get_logger("handoff")


class Phase(StrEnum):
    QUIESCING = "quiescing"  # the old color asked to finish what it does and take nothing new
    SNAPSHOTTING = "snapshotting"  # asked for its state
    STORING = "storing"  # writing it to state_dir and Redis
    RESTORING = "restoring"  # the new color loads it (and migrates it)
    FLIPPING = "flipping"  # the digests matched; the flip is being committed
    COMPLETED = "completed"  # the new color is in charge with the state
    DRY_RUN = "dry_run"  # a verified restore; nothing flipped
    ABORTED = "aborted"  # stopped before the flip; the old color acts on
    CARRYING_BACK = "carrying_back"  # rolled back: stable is getting the candidate's state
    CARRIED_BACK = "carried_back"  # stable got it (or the timeout passed: see reason)
    CONFIRMED = "confirmed"  # the candidate became stable: nothing to carry back any more

    @property
    def in_progress(self) -> bool:
        return self in _IN_PROGRESS


_IN_PROGRESS = frozenset(
    {Phase.QUIESCING, Phase.SNAPSHOTTING, Phase.STORING, Phase.RESTORING, Phase.FLIPPING}
)


@dataclass
class HandoffRecord:
    id: str
    source: Color  # the color in charge when it began
    target: Color  # the color the state goes to
    epoch: int  # the epoch when it began
    by: str
    dry_run: bool = False
    phase: Phase = Phase.QUIESCING
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    snapshot: str = ""  # the id of the snapshot taken for it (stored under source's key)
    digest: str = ""
    # After the flip: the candidate's latest snapshot that stable can read, if any (else a
    # rollback starts from the handoff's snapshot); events since it are in the journal.
    base: str = ""
    reason: str = ""  # why it was aborted, undone, or how the state went back

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(source=self.source.value, target=self.target.value, phase=self.phase.value)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> HandoffRecord:
        return cls(
            id=str(raw["id"]),
            source=Color(raw["source"]),
            target=Color(raw["target"]),
            epoch=int(raw["epoch"]),
            by=str(raw.get("by", "")),
            dry_run=bool(raw.get("dry_run", False)),
            phase=Phase(raw["phase"]),
            started_at=float(raw.get("started_at", 0.0)),
            updated_at=float(raw.get("updated_at", 0.0)),
            snapshot=str(raw.get("snapshot", "")),
            digest=str(raw.get("digest", "")),
            base=str(raw.get("base", "")),
            reason=str(raw.get("reason", "")),
        )


class Records:
    """The one record of the latest handoff, in state_dir and in Redis."""

    def __init__(self, redis: Redis, namespace: str, state_dir: Path) -> None:
        self.redis = redis
        self.key = f"{namespace}:handoff"
        self.path = state_dir / "handoff.json"

    def load(self) -> HandoffRecord | None:
        """At start: the record in state_dir (the daemon's own truth), or None."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return HandoffRecord.from_json(orjson.loads(raw))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.error(
                "handoff_record_unreadable",
                path=str(self.path),
                error=str(exc),
                hint="ignored: who acts is what Redis and state.json say",
            )
            return None

    async def write(self, record: HandoffRecord, *, durable: bool = False) -> None:
        """Record ``record`` on disk (fsynced when ``durable``) and in Redis. Raises
        :class:`DurableWriteError` when the disk refuses; a Redis that does not answer is
        logged (the disk is what a restart reads)."""
        record.updated_at = time.time()
        data = orjson.dumps(record.to_json())
        if durable:
            await asyncio.to_thread(write_atomically, self.path, data)
        else:
            self._write_fast(data)
        await self.mirror(record)

    def _write_fast(self, data: bytes) -> None:
        # Survives a kill -9 of the daemon (the page cache is the kernel's), not a power cut;
        # what a power cut loses here is a later phase, and the start decides by who acts.
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise DurableWriteError(f"{self.path}: {exc.strerror or exc}") from exc

    async def mirror(self, record: HandoffRecord) -> None:
        """The record's fields into ``{ns}:handoff`` (for anyone looking); best effort."""
        fields = {
            k: str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in record.to_json().items()
        }
        with contextlib.suppress(RedisError, OSError):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.key)
                pipe.hset(self.key, mapping=fields)  # type: ignore[arg-type]
                await pipe.execute()
