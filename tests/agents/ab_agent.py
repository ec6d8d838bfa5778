"""An SDK agent for the A/B tests: plays crash rounds as fast as it may act, cashing out at its
``crash_target`` flag (pushed by the supervisor: each arm its own value).

While its role is ``active`` or ``canary`` it plays one round after another: a decision (kind
``crash``), a permit for ``AB_BASE × allocation × U(0.5, 1.5)`` (sized by its share, as the
seed's router does), and when granted an execution of that amount and an outcome: the crash
point is ``0.99 / U`` (seeded), the round wins ``amount × (target − 1)`` when the point reaches
the target, else loses the amount. Every permit's answer is appended to
``$AB_DIR/$AGENTSUP_COLOR.permits`` as ``EPOCH REASON AMOUNT`` (one line each, flushed); every
flags push is printed as ``flags COLOR crash_target=VALUE`` and every role push as ``role ROLE
EPOCH ALLOCATION``.

Environment: ``AB_DIR`` (required), ``AB_SEED`` (1), ``AB_BASE`` (10.0), ``AB_ROUND_S`` (0: no
pause between rounds).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from supervisor.agent import Agent, Role


async def main(log: TextIO) -> None:
    env = os.environ
    color = env["AGENTSUP_COLOR"]
    rng = random.Random(f"{env.get('AB_SEED', '1')}:{color}:{os.getpid()}")
    base = float(env.get("AB_BASE", "10"))
    pause = float(env.get("AB_ROUND_S", "0"))
    async with Agent.connect() as agent:
        changed = asyncio.Event()

        def on_role(role: Role, epoch: int | None, allocation: float) -> None:
            print(f"role {role.value} {epoch} {allocation}", flush=True)
            changed.set()

        @agent.on_flags
        def on_flags(values: Mapping[str, Any]) -> None:
            print(f"flags {color} crash_target={values.get('crash_target')}", flush=True)

        def playing() -> bool:
            return agent.role in (Role.ACTIVE, Role.CANARY)

        agent.on_role(on_role)
        n = 0
        while not agent.lost.is_set():
            if not playing():
                changed.clear()
                if playing():  # told between the look and the clear
                    continue
                lost = asyncio.ensure_future(agent.lost.wait())
                woken = asyncio.ensure_future(changed.wait())
                await asyncio.wait({lost, woken}, return_when=asyncio.FIRST_COMPLETED)
                lost.cancel()
                woken.cancel()
                continue
            n += 1
            target = float(agent.flags.get("crash_target", 2.0))
            amount = base * agent.allocation * rng.uniform(0.5, 1.5)
            async with agent.decide("crash", {"n": n, "target": target}) as d:
                d.output = {"stake": amount, "target": target}
            key = f"{color}-{os.getpid()}-{n}"
            permit = await agent.permit(key, amount=amount)
            log.write(f"{permit.epoch} {permit.reason.value} {amount!r}\n")
            if permit:
                agent.execution(d.id, key, amount)
                point = max(1.0, 0.99 / max(rng.random(), 1e-12))
                pnl = amount * (target - 1) if point >= target else -amount
                agent.outcome(pnl, decision_id=d.id)
            await asyncio.sleep(pause)


if __name__ == "__main__":
    path = os.path.join(os.environ["AB_DIR"], f"{os.environ['AGENTSUP_COLOR']}.permits")
    with open(path, "a", buffering=1) as answers:
        asyncio.run(main(answers))
    sys.exit(0)
