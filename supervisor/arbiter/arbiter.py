"""The arbiter: the only writer of who may act (apart from an operator's own ``redis-cli SET``,
which it adopts). Every decision is one Lua call; see :mod:`supervisor.arbiter.scripts`.

The epoch never goes down. Redis holds it, and this host also keeps a high-water mark on disk
(fsynced) that every flip passes to the script as a floor: if Redis comes back empty, the next
epoch is still above every epoch any child was ever told.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from supervisor.arbiter import scripts
from supervisor.errors import RedisUnavailable

_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)
FLIPS_MAXLEN = 10_000


class EpochMark:
    """The highest epoch this host has seen, in one small file, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.value = self._read()

    def _read(self) -> int:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return 0
        return int(text) if text.isdigit() else 0

    def write(self, epoch: int) -> None:
        """Record ``epoch`` if it is higher; durable when this returns (file and directory
        fsynced). Blocking: call it off the event loop."""
        if epoch <= self.value:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{epoch}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.value = epoch


@dataclass(frozen=True, slots=True)
class Flip:
    """What a flip script answered."""

    status: str  # ok, dup (this flip id had already run), conflict (the active key moved)
    epoch: int
    from_: str
    to: str


@dataclass(frozen=True, slots=True)
class Truth:
    """What Redis holds right now."""

    active: str | None
    epoch: int
    rollout: dict[str, str]


class Arbiter:
    """Flips, permits and reads, each one atomic Redis call."""

    def __init__(
        self, redis: Redis, keys: scripts.Keys, mark: EpochMark, permit_ttl_s: int
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.mark = mark
        self.permit_ttl_ms = str(permit_ttl_s * 1000)
        self.seen = mark.value  # the highest epoch this process has seen (the mark may lag)
        self.replica_count = 0  # refreshed by the daemon at start and after each reconnect
        self._flip = redis.register_script(scripts.FLIP)
        self._permit = redis.register_script(scripts.PERMIT)

    async def flip(
        self,
        to: str | None,
        reason: str,
        by: str,
        *,
        expect: str | None = None,
        record_from: str | None = None,
        rollout: dict[str, str] | None = None,
    ) -> Flip:
        """Set the active color (``to=None`` keeps it: an epoch bump) and bump the epoch above
        both Redis's and the on-disk mark, recording the flip in the stream; all in one call.

        Retried on a lost connection with the same flip id, so a retry of a flip that did run
        answers ``dup`` with the epoch it got rather than bumping twice."""
        flip_id = uuid.uuid4().hex
        keys = [
            self.keys.active,
            self.keys.epoch,
            self.keys.flips,
            self.keys.last_flip,
            self.keys.rollout,
        ]
        floor = max(self.mark.value, self.seen)
        args = [
            to or "",
            str(floor),
            flip_id,
            reason,
            by,
            f"{time.time():.6f}",
            expect or "",
            str(FLIPS_MAXLEN),
            record_from or "",
            orjson.dumps(rollout).decode() if rollout else "",
        ]
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_TRANSIENT),
                stop=stop_after_attempt(3),
                wait=wait_fixed(0.05),
                reraise=True,
            ):
                with attempt:
                    raw = await self._flip(keys=keys, args=args)
        except _TRANSIENT as exc:
            raise RedisUnavailable(f"flip not committed: {exc}") from exc
        status, epoch, from_, to_ = (_text(x) for x in raw)
        result = Flip(status, int(epoch or 0), from_, to_)
        self.seen = max(self.seen, result.epoch)
        if self.replica_count and status == "ok":
            # A failover could lose a flip no replica holds: wait for one before it counts.
            await self.wait_replica()
        return result

    async def permit(self, color: str, epoch: int, key: str, token: str) -> str:
        """One permit decision: ok, not_active, stale_epoch, duplicate, or unavailable."""
        try:
            answer = await self._permit(
                keys=[
                    self.keys.active,
                    self.keys.epoch,
                    self.keys.permit(key),
                    self.keys.permit_stats,
                ],
                args=[color, str(epoch), self.permit_ttl_ms, token],
            )
        except (*_TRANSIENT, RedisError):
            return "unavailable"
        return _text(answer)

    async def read(self) -> Truth:
        """The active key, the epoch and the rollout record, in one round trip."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.get(self.keys.active)
                pipe.get(self.keys.epoch)
                pipe.hgetall(self.keys.rollout)
                active, epoch, rollout = await pipe.execute()
        except _TRANSIENT as exc:
            raise RedisUnavailable(str(exc)) from exc
        epoch_text = _text(epoch) if epoch is not None else "0"
        return Truth(
            _text(active) if active is not None else None,
            int(epoch_text) if epoch_text.isdigit() else 0,
            {_text(k): _text(v) for k, v in rollout.items()},
        )

    async def save_rollout(self, fields: dict[str, str]) -> None:
        """Record stable/candidate changes that are not flips (a confirm)."""
        drop = [k for k, v in fields.items() if v == ""]
        keep = {k: v for k, v in fields.items() if v != ""}
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                if keep:
                    pipe.hset(self.keys.rollout, mapping=dict(keep))  # type: ignore[arg-type]
                if drop:
                    pipe.hdel(self.keys.rollout, *drop)
                await pipe.execute()
        except _TRANSIENT as exc:
            raise RedisUnavailable(str(exc)) from exc

    async def permit_stats(self) -> dict[str, int]:
        """Permit answers counted by the script (every path: SDK, channel, other languages)."""
        raw = await self.redis.hgetall(self.keys.permit_stats)
        return {_text(k): int(v) for k, v in raw.items()}

    async def flips(self, count: int = 20) -> list[dict[str, str]]:
        """The latest flips, newest first."""
        entries = await self.redis.xrevrange(self.keys.flips, count=count) or []
        out = []
        for entry_id, fields in entries:
            item = {_text(k): _text(v) for k, v in (fields or {}).items()}
            item["id"] = _text(entry_id)
            out.append(item)
        return out

    async def enable_notifications(self) -> bool:
        """Turn on keyspace events for string and generic commands, keeping whatever flags
        were already set. False where CONFIG is not allowed (managed Redis): the timer then
        does the work alone."""
        try:
            current = await self.redis.config_get("notify-keyspace-events")
            flags = set(_text(current.get("notify-keyspace-events", "")))
            wanted = flags | set("K$g")
            if wanted != flags:
                await self.redis.config_set("notify-keyspace-events", "".join(sorted(wanted)))
        except RedisError:
            return False
        return True

    async def replicas(self) -> int:
        with contextlib.suppress(RedisError, ValueError):
            info = await self.redis.info("replication")
            return int(info.get("connected_slaves", 0))
        return 0

    async def wait_replica(self, timeout_ms: int = 100) -> int:
        """After a flip, with replicas present: wait for one to hold it (a failover could
        otherwise lose it)."""
        try:
            return int(await self.redis.wait(1, timeout_ms))
        except RedisError:
            return 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
