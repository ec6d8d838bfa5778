"""The floor for ``operator SET -> both children told``: the least any process can do to learn
of a SET from another process. A plain subscriber, notified of the key's keyspace event, reads
the key once and takes CLOCK_MONOTONIC; no supervisor, no Lua, no second hop to a child.

    python bench/floor_subscriber.py URL KEY INBOX

It reports ``floor-ready`` once subscribed, then ``floor VALUE T_NS`` for each SET, as
datagrams to INBOX (the benchmark's Unix socket). It runs until the benchmark ends it.
"""

from __future__ import annotations

import socket
import sys
import time

import redis


def main() -> int:
    url, key, inbox = sys.argv[1], sys.argv[2], sys.argv[3]
    client = redis.Redis.from_url(url, decode_responses=True)
    # The daemon turns these on for itself; the floor must not depend on it.
    current = set(str(client.config_get("notify-keyspace-events")["notify-keyspace-events"]))
    if not set("K$g") <= current:
        client.config_set("notify-keyspace-events", "".join(sorted(current | set("K$g"))))
    db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(f"__keyspace@{db}__:{key}")
    deadline = time.monotonic() + 10
    while (msg := pubsub.get_message(timeout=1.0)) is None or msg["type"] != "subscribe":
        if time.monotonic() > deadline:
            raise SystemExit("no subscription confirmed within 10 s")
    client.ping()  # the pool's second connection, used by the GET, is already open
    out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    out.sendto(b"floor-ready", inbox)
    for msg in pubsub.listen():
        if msg["type"] != "message":
            continue
        value = client.get(key)
        now = time.monotonic_ns()  # taken first: the report is not part of the latency
        out.sendto(f"floor {value!s} {now}".encode(), inbox)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
