"""Keyspace notifications on the active key: a wake-up hint for the reconciler, nothing more.

Notifications are lost while disconnected, so the reconciler also re-reads the truth after
every reconnect and on a timer; this only makes an operator's ``SET`` take effect in about a
millisecond instead of at the next tick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from supervisor.logs import get as get_logger

log = get_logger("watch")


async def watch_active_key(
    redis: Redis, active_key: str, on_hint: Callable[[], None], redis_up: asyncio.Event
) -> None:
    """Call ``on_hint()`` whenever the active key is written, deleted or expires. Runs until
    cancelled; across a Redis outage it waits for ``redis_up`` and resubscribes (redis-py
    resubscribes on reconnect)."""
    db = int(redis.connection_pool.connection_kwargs.get("db", 0) or 0)
    channel = f"__keyspace@{db}__:{active_key}"
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        while True:
            try:
                if not pubsub.subscribed:
                    await pubsub.subscribe(channel)
                msg = await pubsub.get_message(timeout=None)
            except (RedisError, OSError) as exc:
                log.info("watch_disconnected", error=str(exc))
                # The health loop may not have noticed yet: pause before asking again, then
                # wait until it has seen Redis answer.
                await asyncio.sleep(0.2)
                await redis_up.wait()
                continue
            if msg is not None and msg.get("type") == "message":
                on_hint()
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
