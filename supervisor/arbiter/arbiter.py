"""The arbiter: the only writer of who may act (apart from an operator's own ``redis-cli SET``,
which it adopts). Every decision is one Lua call; see :mod:`supervisor.arbiter.scripts`.

It also keeps what Redis might forget (:mod:`supervisor.arbiter.durable`): the epoch
reservation that every flip stays under, the rollout as last known, and the journal of every
permit granted through it, so that a Redis that went back in time is detected (its epoch or
its grant counter is behind) and set right, never trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from supervisor.arbiter import scripts
from supervisor.arbiter.durable import (
    DurableWriteError,
    EpochReservation,
    Grant,
    KnownState,
    PermitJournal,
    ToldMark,
    write_atomically,
)
from supervisor.arbiter.lane import Lane
from supervisor.errors import LeaseLost, RedisUnavailable
from supervisor.logs import get as get_logger

log = get_logger("arbiter")

_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)
FLIPS_MAXLEN = 10_000
RESTORE_ATTEMPTS = 5  # a Redis restarted this often during one restore: the caller tries later


class FlipStatus(StrEnum):
    OK = "ok"  # committed
    DUP = "dup"  # this flip id had already run (a retry after a lost reply)
    CONFLICT = "conflict"  # the active key moved under us


class AdoptStatus(StrEnum):
    SAME = "same"  # nothing changed
    ADOPTED = "adopted"  # an operator's SET of the active key, adopted in the same call
    REGRESSED = "regressed"  # Redis is behind what this host knows
    CHANGED = "changed"  # something else moved: a deleted key, a value not a color, the epoch


@dataclass(frozen=True, slots=True)
class Flip:
    """What a flip script answered."""

    status: FlipStatus
    epoch: int
    from_: str
    to: str


@dataclass(frozen=True, slots=True)
class Observed:
    """What the reconciler's one call saw (and did)."""

    status: AdoptStatus
    epoch: int
    active: str | None
    owner: str  # for ``adopted``: the color that owned the epoch before
    seq: int


@dataclass(frozen=True, slots=True)
class Truth:
    """What Redis holds right now."""

    active: str | None
    epoch: int
    owner: str
    seq: int
    rollout: dict[str, str]
    # The canary's allocation hash (docs/canary.md): in force only at its own epoch.
    alloc: dict[str, str] = field(default_factory=dict)


# How a lease is asked for: see scripts.LEASE.
LeaseMode = Literal["renew", "claim", "now"]


@dataclass(frozen=True, slots=True)
class Claiming:
    """A start found the lease missing and claimed it: ours once ``wait_s`` has passed with
    no live holder renewing it."""

    wait_s: float


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a namespace's lease (decoded from its value)."""

    id: str
    host: str
    pid: int
    start_time: int | None
    since: float
    raw: str = ""  # the lease's value as stored

    claiming: bool = False  # a start waiting out its claim on a lease it found missing

    @classmethod
    def decode(cls, raw: str) -> Holder:
        """The holder a lease value names (``claim:<ms>:<value>`` is a daemon claiming it;
        anything unreadable is shown as it is)."""
        claiming = raw.startswith("claim:")
        text = raw.split(":", 2)[-1] if claiming else raw
        try:
            d = orjson.loads(text)
            return cls(
                str(d["id"]),
                str(d["host"]),
                int(d["pid"]),
                d.get("start"),
                float(d["since"]),
                raw,
                claiming,
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return cls(raw, "?", 0, None, 0.0, raw, claiming)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        what = "claiming it since" if self.claiming else "since"
        return f"host {self.host}, pid {self.pid}, {what} {when}"

    def is_dead_here(self) -> bool:
        """True when the holder ran on this host and that process is gone (killed with -9:
        its lease outlives it until the TTL, and its successor may take it at once)."""
        if self.host != socket.gethostname():
            return False
        from supervisor.children.process import start_time_of

        now = start_time_of(self.pid)
        return now is None or (self.start_time is not None and now != self.start_time)


class Arbiter:
    """Flips, permits, adoption and the lease, each one atomic Redis call."""

    def __init__(
        self,
        redis: Redis,
        keys: scripts.Keys,
        state_dir: Path,
        permit_ttl_s: int,
        lane: Lane | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.reservation = EpochReservation(state_dir / "epoch")
        self.journal = PermitJournal(state_dir / "permits.journal")
        self._state_path = state_dir / "state.json"
        self.known = KnownState.load(self._state_path)
        self.told = ToldMark(state_dir / "epoch.told")
        self.permit_ttl_s = permit_ttl_s
        self.permit_ttl_ms = str(permit_ttl_s * 1000)
        # The highest epoch and grant sequence this process has seen (Redis must not be behind).
        self.seen = max(self.known.epoch if self.known else 0, self.told.value)
        self.seq = self.known.seq if self.known else 0
        self.replica_count = 0  # refreshed by the daemon at start and after each reconnect
        # A restore of executed keys began and was not seen through (see restore_grants).
        self.restore_pending = False
        from supervisor.children.process import start_time_of

        self.lease_value = orjson.dumps(
            {
                "id": uuid.uuid4().hex,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "start": start_time_of(os.getpid()),
                "since": round(time.time(), 3),
            }
        ).decode()
        self.holds_lease = False
        self.lease_ttl_s: float | None = None
        # Grant sequence numbers in the journal (the latest 100,000): the grant log's tail
        # skips them.
        self._journaled: set[int] = set()
        self._journaled_order: deque[int] = deque(maxlen=100_000)
        # Told of every failed write to state_dir (the daemon counts, logs and alerts).
        self.on_write_failure: Callable[[str, Exception], None] = lambda what, exc: None
        # The fence's scripts on a raw connection, when given one (see lane.py); the caller
        # closes it.
        self.lane = lane
        self._flip = redis.register_script(scripts.FLIP)
        self._adopt = redis.register_script(scripts.ADOPT)
        self._permit = redis.register_script(scripts.PERMIT)
        self._lease = redis.register_script(scripts.LEASE)
        self._release = redis.register_script(scripts.RELEASE)
        self._finish_restore = redis.register_script(scripts.FINISH_RESTORE)

    # the durable side -------------------------------------------------------------------
    def load_journal(self) -> None:
        """Open the journal; the highest sequence in it is a floor Redis must not be under."""
        self.journal.open()
        now_ms, highest = int(time.time() * 1000), 0
        for grant in self.journal.grants(0):  # one read: the highest, and the seqs to skip
            highest = max(highest, grant.seq)
            if grant.expires_ms > now_ms:
                self._remember(grant.seq)  # the grant log's tail skips them
        self.seq = max(self.seq, highest)

    def telling(self, epoch: int) -> None:
        """Called before an epoch is pushed to a child: the told mark rises first."""
        try:
            self.told.write(epoch)
        except DurableWriteError as exc:
            self.on_write_failure("epoch", exc)

    async def reserve(self, epoch: int) -> None:
        """Raise the on-disk ceiling to cover ``epoch`` before anyone hears of it."""
        if not self.reservation.covers(epoch):
            try:
                await asyncio.to_thread(self.reservation.reserve, epoch)
            except DurableWriteError as exc:
                self.on_write_failure("epoch", exc)
                raise

    async def save_known(self, active: str | None, rollout: dict[str, str]) -> None:
        """Write state.json (off the loop). Raises DurableWriteError."""
        known = KnownState(self.seen, self.seq, active, dict(rollout))
        await asyncio.to_thread(write_atomically, self._state_path, known.dumps())
        self.known = known

    # flips ------------------------------------------------------------------------------
    async def flip(
        self,
        to: str | None,
        reason: str,
        by: str,
        *,
        expect: str | None = None,
        record_from: str | None = None,
        rollout: dict[str, str] | None = None,
        floor: int | None = None,
        alloc: dict[str, str] | None = None,
    ) -> Flip:
        """Set the active color (``to=None`` keeps it: an epoch bump) and its epoch's owner,
        bump the epoch above both Redis's and ``floor`` (by default the highest this process
        has seen), recording the flip in the stream; all in one call.

        The new epoch stays under the on-disk reservation: past it the script writes nothing
        and the reservation is raised first (one fsync); if that write fails the flip is
        refused (:class:`DurableWriteError`) and who acts stays who acts. Retried on a lost
        connection with the same flip id, so a retry of a flip that did run answers ``dup``
        with the epoch it got rather than bumping twice. Raises :class:`LeaseLost` when
        another daemon holds the namespace.

        ``alloc`` (the canary's allocation fields, see scripts.PERMIT) is written in the same
        call, at the new epoch; None leaves the allocation hash alone."""
        flip_id = uuid.uuid4().hex
        base_floor = self.seen if floor is None else max(floor, self.seen)
        args = [
            to or "",
            str(base_floor),
            flip_id,
            reason,
            by,
            f"{time.time():.6f}",
            expect or "",
            str(FLIPS_MAXLEN),
            record_from or "",
            orjson.dumps(rollout).decode() if rollout else "",
            self.lease_value if self.holds_lease else "",
            "",
            orjson.dumps(alloc).decode() if alloc else "",
        ]
        for _ in range(3):
            args[11] = str(self.reservation.ceiling)
            raw = await self._call(self._flip, self.keys.flip_keys(), args, "flip not committed")
            status, epoch_text, from_, to_ = (_text(x) for x in raw)
            epoch = int(epoch_text or 0)
            if status == "reserve":
                await self.reserve(epoch)
                continue
            if status == "not_holder":
                await self._lease_gone(to_)
                args[10] = self.lease_value
                continue
            break
        else:
            raise DurableWriteError("the epoch reservation did not hold across three attempts")
        result = Flip(FlipStatus(status), epoch, from_, to_)
        self.seen = max(self.seen, result.epoch)
        if self.replica_count and result.status is FlipStatus.OK:
            # A failover could lose a flip no replica holds: wait for one before it counts.
            await self.wait_replica()
        return result

    def _adopt_args(self, known_epoch: int, stable: str, flip_id: str) -> list[str]:
        return [
            str(known_epoch),
            str(self.seq),
            self.lease_value if self.holds_lease else "",
            flip_id,
            f"{time.time():.6f}",
            str(FLIPS_MAXLEN),
            stable,
            str(self.reservation.ceiling),
        ]

    async def adopt(self, known_epoch: int, stable: str) -> Observed:
        """The reconciler's one round trip: compare Redis with what we know; an operator's SET
        of the active key is adopted in the same call (see scripts.ADOPT)."""
        flip_id = uuid.uuid4().hex
        for _ in range(3):
            args = self._adopt_args(known_epoch, stable, flip_id)
            raw = await self._call(self._adopt, self.keys.adopt_keys(), args, "not reconciled")
            status, epoch_text, active, owner, seq_text = (_text(x) for x in raw)
            epoch = int(epoch_text or 0)
            if status == "reserve":
                await self.reserve(epoch)
                continue
            if status == "not_holder":
                await self._lease_gone(owner)
                continue
            break
        else:
            raise DurableWriteError("the epoch reservation did not hold across three attempts")
        observed = Observed(AdoptStatus(status), epoch, active or None, owner, int(seq_text or 0))
        if observed.status is AdoptStatus.ADOPTED:
            self.seen = max(self.seen, epoch)
        return observed

    def _run(self, script: AsyncScript, keys: list[str], args: list[str]) -> Awaitable[Any]:
        if self.lane is not None:
            return self.lane.script(script, keys, args)
        return script(keys=keys, args=args)

    async def _call(self, script: Any, keys: list[str], args: list[str], what: str) -> Any:
        """One script call, tried up to three times 50 ms apart on a connection error (every
        script here is idempotent when retried after a lost reply). A plain loop: this is on
        the flip's clock, and a retry library's bookkeeping costs more than the Lua."""
        for attempt in range(3):
            try:
                return await self._run(script, keys, args)
            except _TRANSIENT as exc:
                if attempt == 2:
                    raise RedisUnavailable(f"{what}: {exc}") from exc
            await asyncio.sleep(0.05)
        raise AssertionError("unreachable")  # pragma: no cover

    # permits ----------------------------------------------------------------------------
    async def permit(
        self, color: str, epoch: int, key: str, token: str, amount: float | None = None
    ) -> str:
        """One permit decision for ``color`` (the channel it was asked on says which):
        ok, not_active, stale_epoch, duplicate, unavailable, or regressed (Redis is behind
        what this host has seen: refused, and the caller sets Redis right); in a canary also
        amount_required and over_allocation (``amount``: the stake, see scripts.PERMIT).

        A grant is journaled before this returns ``ok``; if the journal cannot be written the
        permit is refused (``unavailable``: the key stays burnt in Redis, nothing moved)."""
        try:
            raw = await self._run(
                self._permit,
                self.keys.permit_keys(key, color),
                [
                    color,
                    str(epoch),
                    self.permit_ttl_ms,
                    token,
                    str(self.seq),
                    key,
                    str(scripts.GRANT_LOG_MAXLEN),
                    "" if amount is None else repr(float(amount)),
                ],
            )
        except (*_TRANSIENT, RedisError):
            return "unavailable"
        reason, seq = _text(raw[0]), int(raw[1])
        if reason != "ok":
            return reason
        if seq > self.seq:
            self.seq = seq
        expires = int(time.time() * 1000) + self.permit_ttl_s * 1000
        try:
            self.journal.append(Grant(seq, key, color, epoch, token, expires))
        except DurableWriteError as exc:
            self.on_write_failure("journal", exc)
            return "unavailable"
        self._remember(seq)  # the grant log's tail skips it
        return "ok"

    async def tail_grants(self) -> None:
        """Journal the grants children made themselves (direct permits, ``child_access =
        "permit"``), read from the grant log the permit script appends to. Runs until
        cancelled. What this cannot cover, and the README says so: a grant Redis forgot
        before this read it (the moment between the grant and the read, ~1 ms).

        It reads the log from its start (what a child was granted before this daemon read
        anything is journaled too, once: what load_journal() found is skipped), and
        never loses its place: a read that fails is tried again from the same entry. Each
        read blocks for less than the client's socket timeout, which would otherwise end
        every quiet read in an error."""
        timeout = self.redis.connection_pool.connection_kwargs.get("socket_timeout") or 1.0
        block_ms = max(10, int(float(timeout) * 1000 / 2))
        last = "0-0"
        while True:
            try:
                found: Any = await self.redis.xread(
                    {self.keys.grant_log: last}, count=1000, block=block_ms
                )
            except (*_TRANSIENT, RedisError):
                # Redis away, or back: read again soon. What children are granted once it is
                # back must be read before it can go away again (the chaos run restarted it
                # twice 300 ms apart: a half-second pause here lost the grants in between).
                await asyncio.sleep(0.05)
                continue
            for _stream, entries in found or []:
                for entry_id, fields in entries:
                    last = _text(entry_id)
                    self._journal_logged(last, fields)

    def _remember(self, seq: int) -> None:
        if len(self._journaled_order) == self._journaled_order.maxlen:
            self._journaled.discard(self._journaled_order[0])
        self._journaled_order.append(seq)
        self._journaled.add(seq)

    def _journal_logged(self, entry_id: str, fields: dict[Any, Any]) -> None:
        f = {_text(k): _text(v) for k, v in fields.items()}
        try:
            seq, epoch, ttl = int(f["seq"]), int(f["epoch"]), int(f["ttl"])
            granted_ms = int(entry_id.split("-", 1)[0])  # Redis's clock, when it was granted
        except (KeyError, ValueError):
            return
        if seq in self._journaled:
            return  # journaled already: by permit() before the child heard ok, or earlier
        expires = granted_ms + ttl
        if expires <= int(time.time() * 1000):
            return  # its key is gone from Redis by now: nothing to put back
        self.seq = max(self.seq, seq)
        try:
            self.journal.append(
                Grant(seq, f.get("key", ""), f.get("color", ""), epoch, "", expires)
            )
        except DurableWriteError as exc:
            self.on_write_failure("journal", exc)
            return
        self._remember(seq)

    async def import_grants(self, redis_seq: int) -> int:
        """Journal the executed keys Redis holds that this host never journaled: grants made
        under another daemon (this one took the namespace over, or starts on a fresh
        state_dir) or directly by children. Without them, a Redis that later went back in
        time could not be set right from this host. One SCAN of ``{ns}:permit:*`` (the
        namespace holds no glob characters: the config refuses them). Returns how many."""
        now_ms = int(time.time() * 1000)
        imported = 0
        prefix = self.keys.permit("")
        try:
            batch: list[str] = []
            async for raw in self.redis.scan_iter(match=prefix + "*", count=1000):
                batch.append(_text(raw))
                if len(batch) >= 500:
                    imported += await self._import(batch, prefix, redis_seq, now_ms)
                    batch = []
            if batch:
                imported += await self._import(batch, prefix, redis_seq, now_ms)
        except _TRANSIENT as exc:
            raise RedisUnavailable(f"grants not imported: {exc}") from exc
        self.seq = max(self.seq, redis_seq)
        return imported

    async def _import(self, names: list[str], prefix: str, seq: int, now_ms: int) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(name)
                pipe.pttl(name)
            answers = await pipe.execute()
        imported = 0
        for i, name in enumerate(names):
            value, ttl = answers[2 * i], answers[2 * i + 1]
            if value is None or not isinstance(ttl, int) or ttl <= 0:
                continue
            color, _, rest = _text(value).partition(":")
            epoch_text, _, token = rest.partition(":")
            epoch = int(epoch_text) if epoch_text.isdigit() else 0
            grant = Grant(seq, name[len(prefix) :], color, epoch, token, now_ms + ttl)
            try:
                self.journal.append(grant)
            except DurableWriteError as exc:
                self.on_write_failure("journal", exc)
                raise
            imported += 1
        return imported

    async def restore_grants(self) -> int:
        """Put every journaled grant that has not expired back into Redis (``SET NX`` with
        its remaining time), then raise the grant counter to ours, but only if Redis did not
        change under us meanwhile (see scripts.FINISH_RESTORE). Returns how many.

        The marker alone cannot tell a Redis restarted from a dump taken mid-way (it holds
        the marker, not every key): the server's ``run_id``, read before and after, can. A
        change puts the keys back again, into the Redis that is there now; until a restore is
        seen through, ``restore_pending`` says so (the rollout restores again, whatever the
        counter in Redis says)."""
        now_ms = int(time.time() * 1000)
        grants = await asyncio.to_thread(lambda: list(self.journal.grants(now_ms)))
        self.restore_pending = True
        for _attempt in range(RESTORE_ATTEMPTS):
            token = uuid.uuid4().hex
            try:
                began_in = await self._run_id()
                await self.redis.set(self.keys.restoring, token)
                for start in range(0, len(grants), 1000):
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for g in grants[start : start + 1000]:
                            pipe.set(
                                self.keys.permit(g.key),
                                g.record,
                                nx=True,
                                px=max(1, g.expires_ms - now_ms),
                            )
                        await pipe.execute()
                done = await self._finish_restore(
                    keys=[self.keys.restoring, self.keys.grant_seq], args=[token, str(self.seq)]
                )
                same = await self._run_id() == began_in
            except _TRANSIENT as exc:
                raise RedisUnavailable(f"grants not restored: {exc}") from exc
            if done and same:
                self.restore_pending = False
                return len(grants)
            log.warning(
                "grants_restore_again",
                hint="Redis changed while the grants were put back (restarted, or a failover)",
            )
        raise RedisUnavailable("Redis changed while the grants were put back; again")

    async def _run_id(self) -> str:
        """The Redis server's run id: new at every start of the process."""
        info = await self.redis.info("server")
        return str(info.get("run_id", ""))

    # the lease --------------------------------------------------------------------------
    async def _lease_gone(self, holder: str) -> None:
        """A script found the lease not ours. Nobody's (Redis lost it: restarted, flushed),
        or a dead daemon's of this host (Redis restored from a dump taken before we took it
        over): take it again and go on. A live one's: :class:`LeaseLost`."""
        if self.lease_ttl_s is not None:
            found = await self.take_lease(self.lease_ttl_s)
            if isinstance(found, Holder) and found.is_dead_here():
                found = await self.take_lease(self.lease_ttl_s, replace=found.raw)
            if found is None:
                return
            holder = found.raw if isinstance(found, Holder) else holder
        self.holds_lease = False
        raise LeaseLost(_holder_text(holder))

    async def take_lease(
        self, ttl_s: float, replace: str = "", mode: LeaseMode = "renew"
    ) -> Holder | Claiming | None:
        """Take or renew the namespace's lease. Returns None when it is ours, :class:`Claiming`
        while a start waits out its claim on a missing lease, else who holds it. ``replace``:
        a holder's value we may take it from (one found dead); ``mode``: see scripts.LEASE."""
        raw = await self._call(
            self._lease,
            [self.keys.lease],
            [self.lease_value, str(int(ttl_s * 1000)), replace, mode],
            "lease not taken",
        )
        self.lease_ttl_s = ttl_s
        status, holder = _text(raw[0]), _text(raw[1])
        if status == "mine":
            self.holds_lease = True
            return None
        self.holds_lease = False
        if status == "claiming":
            return Claiming(int(holder) / 1000)
        return Holder.decode(holder)

    async def lease_holder_raw(self) -> str | None:
        raw = await self.redis.get(self.keys.lease)
        return None if raw is None else _text(raw)

    async def release_lease(self) -> None:
        if not self.holds_lease:
            return
        self.holds_lease = False
        with contextlib.suppress(*_TRANSIENT, RedisError):
            marker_ms = str(int((self.lease_ttl_s or 10.0) * 1000))
            await self._release(keys=[self.keys.lease], args=[self.lease_value, marker_ms])

    # reads ------------------------------------------------------------------------------
    async def read(self) -> Truth:
        """The active key, the epoch, its owner, the grant counter and the rollout record, in
        one round trip."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.get(self.keys.active)
                pipe.get(self.keys.epoch)
                pipe.get(self.keys.owner)
                pipe.get(self.keys.grant_seq)
                pipe.hgetall(self.keys.rollout)
                pipe.hgetall(self.keys.alloc)
                active, epoch, owner, seq, rollout, alloc = await pipe.execute()
        except _TRANSIENT as exc:
            raise RedisUnavailable(str(exc)) from exc
        return Truth(
            _text(active) if active is not None else None,
            _digits(epoch),
            _text(owner) if owner is not None else "",
            _digits(seq),
            {_text(k): _text(v) for k, v in rollout.items()},
            {_text(k): _text(v) for k, v in alloc.items()},
        )

    async def alloc(self) -> dict[str, str]:
        """The canary's allocation hash as it stands (its stakes move with every permit)."""
        try:
            raw = await self.redis.hgetall(self.keys.alloc)
        except _TRANSIENT as exc:
            raise RedisUnavailable(str(exc)) from exc
        return {_text(k): _text(v) for k, v in raw.items()}

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


def _holder_text(raw: str) -> str:
    return Holder.decode(raw).describe() if raw else "nobody"


def _digits(value: Any) -> int:
    text = _text(value) if value is not None else "0"
    return int(text) if text.isdigit() else 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
