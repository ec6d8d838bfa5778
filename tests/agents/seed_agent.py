"""An agent written the seed's way: no protocol, no SDK, a plain synchronous Redis client.

Like the article's ``AgentController.is_active`` it polls the active key once a second and
compares it with its own color; it never says hello and never reads its channel. It prints
``seed-agent <color> active=<bool>`` (flushed) each time its view changes, so a test can follow
a flip through the daemon's captured stdout. SIGTERM ends it at once (exit 0).

Run by the supervisor as ``python tests/agents/seed_agent.py``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

import redis


def _stop(signum: int, frame: FrameType | None) -> None:
    # Raising here interrupts the sleep or the Redis call in progress: exit promptly.
    sys.exit(0)


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    color = os.environ["AGENTSUP_COLOR"]
    active_key = os.environ.get("AGENTSUP_ACTIVE_KEY", "agent:active_version")
    r = redis.Redis.from_url(
        os.environ["AGENTSUP_REDIS_URL"],
        # Its color's own read-only user (redis.child_access = "read"), when it was given one.
        username=os.environ.get("AGENTSUP_REDIS_USERNAME") or None,
        password=os.environ.get("AGENTSUP_REDIS_PASSWORD") or None,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
    )
    seen: bool | None = None
    while True:
        try:
            active = r.get(active_key)
            is_active = active is not None and active.decode() == color
        except redis.RedisError:
            is_active = False  # the seed would crash; we stay up and do nothing instead
        if is_active != seen:
            seen = is_active
            print(f"seed-agent {color} active={is_active}", flush=True)
        time.sleep(1.0)


if __name__ == "__main__":
    main()
