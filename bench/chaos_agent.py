"""The agent of the chaos run (bench/chaos.py): asks for permits all the time and writes down
every answer and every role push it hears, so that a checker can judge the fence afterwards.

It is an ordinary SDK agent (``supervisor.agent.Agent``, the default channel permits). Both
colors, and every process started again after a kill, draw their idempotency keys from one
shared sequence: ``k-N`` where N is the number of ``CHAOS_SLOT_MS`` slots of CLOCK_MONOTONIC
(one clock for every process on Linux) since ``CHAOS_T0_NS``. So in any slot both colors ask
for the same key, several times each, and now and then for a key of the recent or distant
past that someone may already have spent: exactly one ``ok`` per key may ever come back.

Evidence: one line per event, appended to ``$CHAOS_DIR/$AGENTSUP_COLOR.log`` with a single
``write()`` on an ``O_APPEND`` descriptor (this process, its daemon and its siblings get
killed with -9: a line is written whole or not at all, and no buffer is lost)::

    T_ASK_NS T_NS PROC DAEMON COLOR permit KEY REASON EPOCH
    T_NS     T_NS PROC DAEMON COLOR role   -   ROLE   EPOCH
    T_NS     T_NS PROC DAEMON COLOR start  -   -      -1

PROC names this process (``PID.START_NS``: pids are reused in a long run), DAEMON the daemon
that started it (``$CHAOS_DAEMON``, which the chaos run gives each daemon it starts and the
daemon passes on), and EPOCH is -1 when the SDK holds none.

SIGUSR1 makes it write a burst of garbage lines into its channel, among its well-formed
messages, to show that bad input from a child stops nothing; SIGTERM ends it cleanly.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from typing import Any

from supervisor.agent import Agent

# Lines a broken or hostile child could write: not JSON, not an object, no type, an unknown
# type, fields of the wrong type, absurd numbers, invalid UTF-8, and one over the 1 MiB limit.
# No well-formed permit request: a grant the agent would not see would be invisible evidence.
GARBAGE: tuple[bytes, ...] = (
    b"this is not json\n",
    b"[1, 2, 3]\n",
    b'{"no_type": true}\n',
    b'{"type": "launch_missiles"}\n',
    b'{"type": "permit", "request_id": 7}\n',
    b'{"type": "outcome", "pnl": 1.7976931348623157e308}\n',
    b'{"type": "outcome", "pnl": "NaN"}\n',
    b'{"type": "decision", "id": null, "kind": 5}\n',
    b'{"type": "heartbeat", "extra": ' + b"[" * 2000 + b"]" * 2000 + b"}\n",
    b"\xff\xfe\xfd\n",
    b"\n\n\n",
)
OVERSIZED = b'{"type": "context", "x": "' + b"x" * (1 << 20) + b'"}\n'


class Evidence:
    """This process's lines in the color's log (one ``write()`` each, O_APPEND)."""

    def __init__(self, directory: str, color: str) -> None:
        self.fd = os.open(
            os.path.join(directory, f"{color}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        daemon = os.environ.get("CHAOS_DAEMON") or f"ppid{os.getppid()}"
        self.prefix = f"{os.getpid()}.{time.monotonic_ns()} {daemon} {color}"

    def write(self, t_ask: int, t: int, event: str, key: str, reason: str, epoch: Any) -> None:
        told = -1 if epoch is None else int(epoch)
        os.write(self.fd, f"{t_ask} {t} {self.prefix} {event} {key} {reason} {told}\n".encode())


class Keys:
    """The shared key sequence: mostly the current slot's key, sometimes an older one."""

    def __init__(self, t0_ns: int, slot_ms: float, rng: random.Random) -> None:
        self.t0_ns = t0_ns
        self.slot_ns = int(slot_ms * 1e6)
        self.rng = rng

    def next(self) -> str:
        now = max(0, (time.monotonic_ns() - self.t0_ns) // self.slot_ns)
        draw = self.rng.random()
        if draw < 0.75 or now == 0:
            n = now
        elif draw < 0.95:
            n = max(0, now - self.rng.randint(1, 400))  # the last few seconds
        else:
            n = self.rng.randint(0, now)  # any time in the run
        return f"k-{n}"


async def main() -> None:
    color = os.environ["AGENTSUP_COLOR"]
    evidence = Evidence(os.environ["CHAOS_DIR"], color)
    interval_s = float(os.environ.get("CHAOS_INTERVAL_MS", "5")) / 1000
    keys = Keys(
        int(os.environ["CHAOS_T0_NS"]),
        float(os.environ.get("CHAOS_SLOT_MS", "25")),
        random.Random(os.getpid() ^ time.monotonic_ns()),
    )
    now = time.monotonic_ns()
    evidence.write(now, now, "start", "-", "-", None)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async with Agent.connect() as agent:

        def told(role: Any, epoch: int | None, allocation: float) -> None:
            t = time.monotonic_ns()
            evidence.write(t, t, "role", "-", str(role), epoch)

        def garbage() -> None:
            writer = agent._writer  # raw bytes: the SDK itself only writes well-formed lines
            if writer is None or writer.transport.is_closing():
                return
            for line in random.sample(GARBAGE, k=len(GARBAGE)):
                writer.write(line)
            if random.random() < 0.3:
                writer.write(OVERSIZED)
            t = time.monotonic_ns()
            evidence.write(t, t, "garbage", "-", "-", agent.epoch)

        agent.on_role(told)
        loop.add_signal_handler(signal.SIGUSR1, garbage)
        while not (stop.is_set() or agent.lost.is_set()):
            key = keys.next()
            t_ask = time.monotonic_ns()
            permit = await agent.permit(key)
            evidence.write(
                t_ask, time.monotonic_ns(), "permit", key, permit.reason.value, permit.epoch
            )
            await asyncio.sleep(interval_s * random.uniform(0.5, 1.5))


if __name__ == "__main__":
    asyncio.run(main())
