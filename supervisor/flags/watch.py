"""Keyspace notifications on the flag keys: a wake-up hint for :class:`FlagBook`'s re-read.

As for the active key (supervisor/arbiter/watch.py), notifications are lost while
disconnected, so the book also re-reads every flag after a reconnect and on a timer; this
only makes an operator's ``redis-cli SET flag:game dice`` reach the children in about a
millisecond instead of at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from supervisor.logs import get as get_logger

log = get_logger("flags")


async def watch_flag_keys(
    redis: Redis,
    patterns: Sequence[str],
    on_hint: Callable[[], None],
    redis_up: asyncio.Event,
    prepare: Callable[[], Awaitable[object]],
) -> None:
    """Call ``on_hint()`` whenever a key matching one of ``patterns`` is written, deleted or
    expires. Runs until cancelled; across an outage it waits for ``redis_up``, calls
    ``prepare()`` (a restarted Redis forgot its notification settings), subscribes anew."""
    db = int(redis.connection_pool.connection_kwargs.get("db", 0) or 0)
    channels = [f"__keyspace@{db}__:{p}" for p in patterns]
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    me = asyncio.current_task()
    assert me is not None
    try:
        while True:
            try:
                if not pubsub.subscribed:
                    await prepare()
                    await pubsub.psubscribe(*channels)
                    on_hint()  # whatever changed before the subscription took
                if me.cancelling():
                    raise asyncio.CancelledError
                msg = await pubsub.get_message(timeout=None)
            except (RedisError, OSError) as exc:
                log.info("flags_watch_disconnected", error=str(exc))
                await _close(pubsub)
                pubsub = redis.pubsub(ignore_subscribe_messages=True)
                await asyncio.sleep(0.2)
                await redis_up.wait()
                on_hint()
                continue
            if msg is not None and msg.get("type") == "pmessage":
                on_hint()
    finally:
        await _close(pubsub)


async def _close(pubsub: PubSub) -> None:
    with contextlib.suppress(TimeoutError, RedisError, OSError):
        async with asyncio.timeout(1.0):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
