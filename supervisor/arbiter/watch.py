"""Keyspace notifications on the active key: a wake-up hint for the reconciler, nothing more.

Notifications are lost while disconnected, so the reconciler also re-reads the truth after
every reconnect and on a timer; this only makes an operator's ``SET`` take effect in about a
millisecond instead of at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from supervisor.arbiter.lane import Lane, subscribe
from supervisor.logs import get as get_logger

log = get_logger("watch")

# With Sentinel, how often a subscription checks it is still on the client's master.
FOLLOW_S = 1.0


async def watch_active_key(
    redis: Redis,
    active_key: str,
    on_hint: Callable[[], None],
    redis_up: asyncio.Event,
    prepare: Callable[[], Awaitable[object]],
) -> None:
    """Call ``on_hint()`` whenever the active key is written, deleted or expires. Runs until
    cancelled; across a Redis outage it waits for ``redis_up``, calls ``prepare()`` (a Redis
    restarted in between has forgotten its notification settings) and subscribes anew."""
    await watch_keyspace(redis, [active_key], on_hint, redis_up, prepare, what="watch")


async def watch_keyspace(
    redis: Redis,
    keys: Sequence[str],
    on_hint: Callable[[], None],
    redis_up: asyncio.Event,
    prepare: Callable[[], Awaitable[object]],
    *,
    what: str,
) -> None:
    """The keyspace notifications of ``keys`` (glob patterns allowed): ``on_hint()`` at each,
    and once after every (re)subscription (what changed before it took). ``what`` names the
    watcher in the log (``{what}_disconnected``)."""
    db = int(redis.connection_pool.connection_kwargs.get("db", 0) or 0)
    channels = [f"__keyspace@{db}__:{key}" for key in keys]
    pattern = any(c in key for key in keys for c in "*?[")
    lane = Lane.for_client(redis)
    if lane is not None:  # a plain Redis: the raw subscription, hint called from the read
        await _watch_raw(lane, channels, pattern, on_hint, redis_up, prepare, what)
        return
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    me = asyncio.current_task()
    assert me is not None
    try:
        while True:
            try:
                if not pubsub.subscribed:
                    await prepare()
                    if pattern:
                        await pubsub.psubscribe(*channels)
                    else:
                        await pubsub.subscribe(*channels)
                    on_hint()  # whatever changed before the subscription took
                # redis-py can swallow a cancellation that lands inside (re)subscribe; honour
                # it here rather than block in get_message forever.
                if me.cancelling():
                    raise asyncio.CancelledError
                msg = await pubsub.get_message(timeout=FOLLOW_S if _sentinel(redis) else None)
                if _left_behind(redis, pubsub):
                    # Sentinel moved the master while this connection stayed up (the old
                    # master, demoted, still answers): subscribe again, on the new one.
                    log.info(f"{what}_follows_master", master=_address(redis))
                    await _close(pubsub)
                    pubsub = redis.pubsub(ignore_subscribe_messages=True)
                    continue
            except (RedisError, OSError) as exc:
                log.info(f"{what}_disconnected", error=str(exc))
                # A fresh subscription: across a Redis restart the old one can stay broken
                # for good (it believes it is still subscribed and fails on every read).
                await _close(pubsub)
                pubsub = redis.pubsub(ignore_subscribe_messages=True)
                # The health loop may not have noticed yet: pause before asking again, then
                # wait until it has seen Redis answer.
                await asyncio.sleep(0.2)
                await redis_up.wait()
                on_hint()  # notifications were lost meanwhile: look at the truth once
                continue
            if msg is not None and msg.get("type") in ("message", "pmessage"):
                on_hint()
    finally:
        await _close(pubsub)


async def _watch_raw(
    lane: Lane,
    channels: list[str],
    pattern: bool,
    on_hint: Callable[[], None],
    redis_up: asyncio.Event,
    prepare: Callable[[], Awaitable[object]],
    what: str,
) -> None:
    while True:
        conn = None
        try:
            await prepare()
            conn = await subscribe(lane, channels, pattern, on_hint)
            on_hint()  # whatever changed before the subscription took
            await asyncio.shield(conn.lost)
            error = "connection closed"
        except (RedisError, OSError) as exc:
            error = str(exc)
        finally:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()  # also when cancelled
        log.info(f"{what}_disconnected", error=error)
        await asyncio.sleep(0.2)  # the health loop may not have noticed yet
        await redis_up.wait()
        on_hint()  # notifications were lost meanwhile: look at the truth once


def _sentinel(redis: Redis) -> bool:
    return hasattr(redis.connection_pool, "master_address")


def _address(redis: Redis) -> str:
    host, port = getattr(redis.connection_pool, "master_address", None) or ("", 0)
    return f"{host}:{port}"


def _left_behind(redis: Redis, pubsub: PubSub) -> bool:
    """Whether the client found another master than the one this subscription is on."""
    master: Any = getattr(redis.connection_pool, "master_address", None)
    conn: Any = pubsub.connection  # None until it subscribed
    if not master or conn is None:
        return False
    return bool((conn.host, conn.port) != tuple(master))


async def _close(pubsub: PubSub) -> None:
    # Cancelled in the middle of a (re)subscribe, redis-py's close can wait on a lock that is
    # never released; the pool's own close at shutdown ends the connection then.
    with contextlib.suppress(TimeoutError, RedisError, OSError):
        async with asyncio.timeout(1.0):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
