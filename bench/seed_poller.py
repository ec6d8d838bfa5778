"""The seed's mechanism, for the baseline: N standbys, each polling the active key once a
second (``AgentController.is_active``) with its own phase, each reporting over a datagram
socket the moment it sees the key change."""

from __future__ import annotations

import random
import socket
import sys
import threading
import time

import redis


def poller(url: str, key: str, target: str, seed: int) -> None:
    r = redis.Redis.from_url(url)
    out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    time.sleep(random.Random(seed).random())  # standbys are not in step with one another
    last = r.get(key)
    while True:
        value = r.get(key)
        if value != last:
            out.sendto(f"seen {time.monotonic()!r}".encode(), target)
            last = value
        time.sleep(1.0)


if __name__ == "__main__":
    url, key, target, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    for i in range(n):
        threading.Thread(target=poller, args=(url, key, target, i), daemon=True).start()
    threading.Event().wait()
