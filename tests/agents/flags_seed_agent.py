"""An agent reading its flags the seed's way: the seed's ``Flags`` class and ``DEFAULTS``
(section 7), verbatim, one Redis GET per flag per decision cycle, no protocol, no SDK.

Every 50 ms it reads ``game``, ``crash_target``, ``accept_escrows`` and ``max_session_bets``
and prints ``seed-flags <color> <json>`` (flushed) whenever what it reads changes, so a test
can see through the daemon's captured stdout what an agent written the seed's way reads.

The seed's ``Flags()`` connects with ``redis.Redis(host="localhost")``; here ``redis`` is a
stand-in whose ``Redis`` connects to the supervisor's Redis (``AGENTSUP_REDIS_URL``, with the
color's own read-only user), so the class itself stays as the seed wrote it. A test imports
this module to call the seed's ``Flags.set`` itself (set ``URL`` first).

Run by the supervisor as ``python tests/agents/flags_seed_agent.py``.
"""

# ruff: noqa: E701 (the seed's one-line ifs, kept as written)
from __future__ import annotations

import json
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

import redis as redis_lib

URL: str | None = None  # a test sets it; the supervised agent takes AGENTSUP_REDIS_URL


class redis:
    @staticmethod
    def Redis(host: str) -> redis_lib.Redis:
        return redis_lib.Redis.from_url(
            URL or os.environ["AGENTSUP_REDIS_URL"],
            username=os.environ.get("AGENTSUP_REDIS_USERNAME") or None,
            password=os.environ.get("AGENTSUP_REDIS_PASSWORD") or None,
            socket_timeout=1.0,
        )


# --- the seed, section 7, verbatim ---------------------------------------------------------
# fmt: off
DEFAULTS = {
    "game":              "coinflip",
    "bet_sizing":        "kelly_floor",
    "crash_target":     2.0,
    "accept_escrows":   True,
    "max_session_bets": 50,
    "stop_loss_pct":    0.20,
}

class Flags:
    def __init__(self):
        self.r = redis.Redis(host="localhost")

    def get(self, key: str):
        val = self.r.get(f"flag:{key}")
        if val is None:
            return DEFAULTS.get(key)
        # Deserialize (bool, float, str)
        decoded = val.decode()
        if decoded in ("True", "False"): return decoded == "True"
        try: return float(decoded)
        except ValueError: return decoded

    def set(self, key: str, value):
        self.r.set(f"flag:{key}", str(value))
# fmt: on
# --- end of the seed -----------------------------------------------------------------------

WATCHED = ("game", "crash_target", "accept_escrows", "max_session_bets")


def _stop(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    color = os.environ["AGENTSUP_COLOR"]
    flags = Flags()
    seen: dict[str, Any] | None = None
    while True:
        try:
            now = {k: flags.get(k) for k in WATCHED}
        except redis_lib.RedisError:
            now = seen
        if now != seen:
            seen = now
            print(f"seed-flags {color} {json.dumps(now, sort_keys=True)}", flush=True)
        time.sleep(0.05)


if __name__ == "__main__":
    main()
