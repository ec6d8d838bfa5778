"""Where snapshots live: Redis ``{ns}:snapshot:{color}`` and a copy in state_dir.

A snapshot is *acknowledged* once :meth:`SnapshotStore.save` returns: its copy in
``state_dir/snapshots/{color}.snap`` is written and fsynced (file and directory), and Redis
holds it. The copy on disk is the one that survives everything (a Redis restarted empty, an
older dump, a failover): :meth:`SnapshotStore.put_back` writes it into Redis again when Redis
answers after an outage, so an acknowledged snapshot is never lost (DESIGN.md, invariant 4).

The Redis key is a hash: the meta fields (``id``, ``color``, ``version``, ``schema`` (JSON),
``digest``, ``bytes``, ``taken_at``, ``stored_at``, ``handoff``) and ``state``, the canonical
encoding. The file is the meta as one JSON line, then the state's bytes. One per color: the
latest replaces the one before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from supervisor.arbiter.durable import DurableWriteError, write_atomically
from supervisor.config import Color
from supervisor.handoff.snapshot import Snapshot
from supervisor.logs import get as get_logger

log = get_logger("handoff")


def snapshot_key(namespace: str, color: Color) -> str:
    """``{ns}:snapshot:{color}`` (DESIGN.md, Redis)."""
    return f"{namespace}:snapshot:{color.value}"


class SnapshotStore:
    """The latest snapshot of each color, on disk and in Redis; their metas in memory."""

    def __init__(self, redis: Redis, namespace: str, state_dir: Path) -> None:
        self.redis = redis
        self.namespace = namespace
        self.dir = state_dir / "snapshots"
        self.latest: dict[Color, Snapshot | None] = dict.fromkeys(Color)
        self._in_redis: dict[Color, bool] = dict.fromkeys(Color, True)

    def path(self, color: Color) -> Path:
        return self.dir / f"{color.value}.snap"

    # -- writing --------------------------------------------------------------------------
    async def save(self, snap: Snapshot, *, need_redis: bool = True) -> Snapshot:
        """Acknowledge ``snap``: fsynced to disk, then into Redis; the snapshot as stored
        (its ``stored_at`` set). Raises :class:`DurableWriteError` when the disk refuses it
        (nothing is acknowledged), and ``RedisError``/``OSError`` when Redis does and
        ``need_redis`` (the copy on disk stays, and goes to Redis when it answers again)."""
        snap = dataclasses.replace(snap, stored_at=time.time())
        await asyncio.to_thread(self._write_file, snap)
        self.latest[snap.color] = snap
        self._in_redis[snap.color] = False
        try:
            await self._write_redis(snap)
        except (RedisError, OSError) as exc:
            log.warning(
                "snapshot_not_in_redis",
                color=snap.color,
                snapshot=snap.id,
                error=str(exc),
                hint="kept in state_dir; written to Redis when it answers again",
            )
            if need_redis:
                raise
        return snap

    def _write_file(self, snap: Snapshot) -> None:
        try:
            self.dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise DurableWriteError(f"{self.dir}: {exc.strerror or exc}") from exc
        head = orjson.dumps(snap.meta(), option=orjson.OPT_APPEND_NEWLINE)
        write_atomically(self.path(snap.color), head + snap.data)

    async def _write_redis(self, snap: Snapshot) -> None:
        fields: dict[str, bytes | str] = {
            k: orjson.dumps(v) if k == "schema" else ("" if v is None else str(v))
            for k, v in snap.meta().items()
        }
        fields["state"] = snap.data
        key = snapshot_key(self.namespace, snap.color)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            await pipe.execute()
        self._in_redis[snap.color] = True

    # -- reading --------------------------------------------------------------------------
    def load(self) -> None:
        """At start (blocking, small): each color's latest snapshot from state_dir. A copy
        that does not check out (torn, altered) is logged and left out."""
        for color in Color:
            snap = self.read_file(color)
            if snap is not None:
                self.latest[color] = snap
                self._in_redis[color] = False  # until put_back has looked

    def read_file(self, color: Color) -> Snapshot | None:
        try:
            raw = self.path(color).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("snapshot_unreadable", color=color, error=str(exc), hint="check state_dir")
            return None
        head, _, data = raw.partition(b"\n")
        try:
            return Snapshot.from_meta(orjson.loads(head), data)
        except (orjson.JSONDecodeError, ValueError) as exc:
            log.error(
                "snapshot_corrupt",
                color=color,
                path=str(self.path(color)),
                error=str(exc),
                hint="this copy is ignored; the next snapshot replaces it",
            )
            return None

    async def put_back(self) -> int:
        """Write into Redis every latest snapshot Redis does not hold (it restarted empty,
        went back to an older dump, was flushed); the number put back. One ``HGET`` per
        color when nothing is missing: cheap enough to call every few seconds."""
        restored = 0
        for color, snap in self.latest.items():
            if snap is None:
                continue
            with contextlib.suppress(RedisError, OSError):
                held = await self.redis.hget(snapshot_key(self.namespace, color), "id")
                if held is not None and _text(held) == snap.id:
                    self._in_redis[color] = True
                    continue
                self._in_redis[color] = False
                await self._write_redis(snap)
                restored += 1
                log.warning(
                    "snapshot_put_back",
                    color=color,
                    snapshot=snap.id,
                    digest=snap.digest,
                    hint="Redis had lost it; the copy in state_dir was written back",
                )
        return restored

    def describe(self, now: float) -> dict[str, Any]:
        """For status: each color's latest snapshot (age, size, digest...) or None."""
        out: dict[str, Any] = {}
        for color, snap in self.latest.items():
            if snap is None:
                out[color.value] = None
                continue
            out[color.value] = {
                **snap.meta(),
                "age_s": round(snap.age(now), 3),
                "in_redis": self._in_redis[color],
            }
        return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
