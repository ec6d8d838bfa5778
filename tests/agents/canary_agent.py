"""An SDK agent for the canary tests: plays rounds as fast as it can while it may act.

While its role is ``active`` or ``canary`` it plays one round after another: a decision (kind
``dice``), a permit for ``CANARY_BASE × allocation × U(0.5, 1.5) × CANARY_STAKE_FACTOR`` (the
way the seed's router sizes a bet), and when granted an execution of that amount and an
outcome of ``amount × N(CANARY_MU, 1)``. Every permit's answer is appended to
``$CANARY_DIR/$AGENTSUP_COLOR.permits`` as ``EPOCH REASON AMOUNT`` (one line each, flushed), so
that a test can add up, per epoch, what each color was granted. Every role push is printed as
``role ROLE EPOCH ALLOCATION``.

Environment: ``CANARY_DIR`` (required), ``CANARY_SEED`` (1), ``CANARY_MU`` (0.0),
``CANARY_BASE`` (10.0), ``CANARY_STAKE_FACTOR`` (1.0), ``CANARY_ROUND_S`` (0: no pause),
``CANARY_NO_OUTCOMES`` (unset: set, no outcome is reported: the judge has no rounds),
``CANARY_NO_AMOUNT`` (unset: set, permits are asked without an amount), ``CANARY_RAISE_AFTER``
(unset: after this many rounds in the ``canary`` role, every decision raises ``KeyError``),
``CANARY_DISPUTES_FILE`` (unset: set, every 0.1 s of rounds the agent reports ``context`` with
``disputes_open`` read from that file, for the deploy gates).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from typing import TextIO

from supervisor.agent import Agent, Role


def read_disputes(path: str) -> int:
    """The disputes open, as the test wrote them (a few bytes: read at once)."""
    with open(path) as f:
        return int(f.read().strip() or 0)


async def main(log: TextIO) -> None:
    env = os.environ
    color = env["AGENTSUP_COLOR"]
    rng = random.Random(f"{env.get('CANARY_SEED', '1')}:{color}")
    mu = float(env.get("CANARY_MU", "0"))
    base = float(env.get("CANARY_BASE", "10"))
    factor = float(env.get("CANARY_STAKE_FACTOR", "1"))
    pause = float(env.get("CANARY_ROUND_S", "0"))
    outcomes = not env.get("CANARY_NO_OUTCOMES")
    with_amount = not env.get("CANARY_NO_AMOUNT")
    raise_after = int(env["CANARY_RAISE_AFTER"]) if env.get("CANARY_RAISE_AFTER") else None
    disputes_file = env.get("CANARY_DISPUTES_FILE")
    reported = 0.0
    async with Agent.connect() as agent:
        changed = asyncio.Event()

        def on_role(role: Role, epoch: int | None, allocation: float) -> None:
            print(f"role {role.value} {epoch} {allocation}", flush=True)
            changed.set()

        agent.on_role(on_role)
        n = canary_rounds = 0
        while not agent.lost.is_set():
            if agent.role not in (Role.ACTIVE, Role.CANARY):
                changed.clear()
                if agent.role in (Role.ACTIVE, Role.CANARY):
                    continue
                lost = asyncio.ensure_future(agent.lost.wait())
                woken = asyncio.ensure_future(changed.wait())
                await asyncio.wait({lost, woken}, return_when=asyncio.FIRST_COMPLETED)
                lost.cancel()
                woken.cancel()
                continue
            n += 1
            if disputes_file and time.monotonic() - reported >= 0.1:
                reported = time.monotonic()
                disputes = read_disputes(disputes_file)
                agent.context(volatility=0.0, disputes_open=disputes, auto_releases=[])
            in_canary = agent.role is Role.CANARY
            canary_rounds += in_canary
            amount = base * agent.allocation * factor * rng.uniform(0.5, 1.5)
            try:
                async with agent.decide("dice", {"n": n}) as d:
                    if raise_after is not None and in_canary and canary_rounds > raise_after:
                        raise KeyError("dice")  # the planted bug
                    d.output = {"stake": amount}
            except KeyError:
                await asyncio.sleep(0.01)
                continue
            key = f"{color}-{os.getpid()}-{n}"
            permit = await agent.permit(key, amount=amount if with_amount else None)
            log.write(f"{permit.epoch} {permit.reason.value} {amount!r}\n")
            if permit:
                agent.execution(d.id, key, amount)
                if outcomes:
                    agent.outcome(amount * rng.gauss(mu, 1.0), decision_id=d.id)
            await asyncio.sleep(pause)


if __name__ == "__main__":
    path = os.path.join(os.environ["CANARY_DIR"], f"{os.environ['AGENTSUP_COLOR']}.permits")
    with open(path, "a", buffering=1) as answers:
        asyncio.run(main(answers))
    sys.exit(0)
