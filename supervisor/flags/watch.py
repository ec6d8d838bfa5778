"""Keyspace notifications on the flag keys: a wake-up hint for :class:`FlagBook`'s re-read.

As for the active key (supervisor/arbiter/watch.py), notifications are lost while
disconnected, so the book also re-reads every flag after a reconnect and on a timer; this
only makes an operator's ``redis-cli SET flag:game dice`` reach the children in about a
millisecond instead of at the next tick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from redis.asyncio import Redis

from supervisor.arbiter.watch import watch_keyspace


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
    await watch_keyspace(redis, patterns, on_hint, redis_up, prepare, what="flags_watch")
