"""The canary demo's agent: ``python -m supervisor.demo.canary_agent``, started by the supervisor.

While it may act (role ``active``, or ``canary``) it plays a round every
``AGENTSUP_DEMO_ROUND_S``: a dice decision, a permit for its stake, sized by its share of the
capital the way the seed's router sizes a bet (``1.0 × allocation × U(0.8, 1.2)``), and, when
granted, the execution and the outcome (a 1 % house edge: +0.98 or -1.0 per unit staked).

The planted bug (``AGENTSUP_DEMO_BUG=double_stakes``): once it holds at least
``AGENTSUP_DEMO_BUG_SHARE`` of the capital (20 % by default), after ``AGENTSUP_DEMO_BUG_AFTER``
rounds there it stakes twice what its share says: an off-by-one in the sizing, the kind of bug
a PnL check needs hundreds of rounds to see. It prints one line when the bug starts.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from supervisor.agent import Agent, Role
from supervisor.errors import NotSupervised


async def play(agent: Agent, env: dict[str, str]) -> None:
    rng = random.Random(f"{env.get('AGENTSUP_DEMO_SEED', '7')}:{agent.color}")
    pause = float(env.get("AGENTSUP_DEMO_ROUND_S", "0.005"))
    bug = env.get("AGENTSUP_DEMO_BUG") == "double_stakes"
    bug_share = float(env.get("AGENTSUP_DEMO_BUG_SHARE", "0.2"))
    bug_after = int(env.get("AGENTSUP_DEMO_BUG_AFTER", "15"))
    changed = asyncio.Event()
    agent.on_role(lambda role, epoch, allocation: changed.set())
    n = at_share = 0
    buggy = False
    while not agent.lost.is_set():
        if agent.role not in (Role.ACTIVE, Role.CANARY):
            changed.clear()
            lost = asyncio.ensure_future(agent.lost.wait())
            woken = asyncio.ensure_future(changed.wait())
            await asyncio.wait({lost, woken}, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            woken.cancel()
            continue
        n += 1
        if n % 20 == 1:  # the calm world the deploy gates look at (no dispute, no release due)
            agent.context(volatility=0.01, disputes_open=0, auto_releases=[])
        share = agent.allocation
        at_share = at_share + 1 if bug and share >= bug_share else 0
        factor = 1.0
        if bug and at_share > bug_after:
            factor = 2.0
            if not buggy:
                buggy = True
                print(f"round {n}: the stake sizing bug doubles every stake from here", flush=True)
        stake = round(1.0 * share * factor * rng.uniform(0.8, 1.2), 6)
        async with agent.decide("dice", {"target": 49.5, "share": share}) as d:
            d.output = {"bet": "under", "stake": stake}
        permit = await agent.permit(f"{agent.color}-{os.getpid()}-{n}", amount=stake)
        if permit and agent.still_valid(permit):
            agent.execution(d.id, permit.key, stake)
            won = rng.random() < 0.495
            agent.outcome(round(stake * (0.98 if won else -1.0), 6), decision_id=d.id)
        await asyncio.sleep(pause)


async def main() -> int:
    try:
        agent = Agent.connect()
    except NotSupervised as exc:
        print(f"canary_agent: {exc}", file=sys.stderr)
        return 1
    async with agent:
        await play(agent, dict(os.environ))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
