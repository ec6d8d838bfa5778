"""An SDK agent for the shadow tests: a crash game with a cash-out target, mirrored decisions
and a would-be PnL.

While ``active`` it plays rounds: a ``crash`` decision on inputs ``{"n": N}`` with the output
``{"target": TARGET, "stake": 1.0}``, a permit, an execution and an outcome whose ``crash``
point is drawn from N alone (so that any color can score any round): ``pnl = stake × (target
− 1)`` when the crash comes at or after the target, else ``−stake``. ``on_mirror`` answers the
same decision on the given inputs, ``on_mirror_outcome`` scores it on the live outcome.

Environment: ``SHADOW_DIR`` (required: ``$COLOR.log`` gets ``role ROLE EPOCH ALLOCATION`` on
every push and ``permit REASON`` for the rogue permit), ``SHADOW_TARGET`` (2.0),
``SHADOW_NOISE`` (0: the probability that a decision's stake is multiplied by U(2, 4), live
and mirrored alike: a nondeterministic agent), ``SHADOW_STALL`` (set: mirrors are never
answered), ``SHADOW_EXECUTE`` (set: once told ``shadow``, ask a permit and report an
execution whatever the answer: a rogue shadow), ``SHADOW_NO_SCORE`` (set: no
on_mirror_outcome hook), ``SHADOW_NO_MIRROR`` (set: no on_mirror hook at all),
``SHADOW_COMPARE_IGNORE`` (fields, comma-separated: the agent declares that the
``crash`` comparator ignores them), ``SHADOW_ROUND_S`` (0.01: the pause between rounds),
``SHADOW_SCORE_BIAS`` (0: added to every would-be PnL it scores: a version that would lose).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from typing import Any, TextIO

from supervisor.agent import Agent, Role


def crash_point(n: int) -> float:
    """The round's crash multiplier, the same for every color: 0.99 / U, at least 1."""
    u = random.Random(n).random()
    return max(1.0, 0.99 / max(u, 1e-9))


def score(output: dict[str, Any], crash: float) -> float:
    stake, target = float(output["stake"]), float(output["target"])
    return stake * (target - 1.0) if crash >= target else -stake


async def main(log: TextIO) -> None:
    env = os.environ
    color = env["AGENTSUP_COLOR"]
    target = float(env.get("SHADOW_TARGET", "2.0"))
    noise = float(env.get("SHADOW_NOISE", "0"))
    pause = float(env.get("SHADOW_ROUND_S", "0.01"))
    bias = float(env.get("SHADOW_SCORE_BIAS", "0"))
    rng = random.Random()

    def decide(inputs: dict[str, Any]) -> dict[str, Any]:
        stake = 1.0
        if noise and rng.random() < noise:
            stake *= rng.uniform(2.0, 4.0)
        return {"target": target, "stake": stake}

    agent = Agent.connect()
    if env.get("SHADOW_COMPARE_IGNORE"):
        agent.compare("crash", ignore=env["SHADOW_COMPARE_IGNORE"].split(","))
    if not env.get("SHADOW_NO_MIRROR"):
        if env.get("SHADOW_STALL"):

            async def stalled(inputs: Any) -> Any:
                await asyncio.Event().wait()  # never answers

            agent.on_mirror(stalled)
        else:
            agent.on_mirror(decide)
        if not env.get("SHADOW_NO_SCORE"):
            agent.on_mirror_outcome(
                lambda inputs, output, outcome: score(output, float(outcome["crash"])) + bias
            )
    async with agent:
        rogue_done = False
        rogues: set[asyncio.Task[None]] = set()  # held, so that the task is not collected

        async def rogue() -> None:
            key = f"rogue-{color}-{os.getpid()}"
            permit = await agent.permit(key, amount=1.0)
            log.write(f"permit {permit.reason.value}\n")
            agent.execution("rogue-decision", key, 1.0)  # whatever the answer: a rogue

        def on_role(role: Role, epoch: int | None, allocation: float) -> None:
            nonlocal rogue_done
            log.write(f"role {role.value} {epoch} {allocation}\n")
            if role is Role.SHADOW and env.get("SHADOW_EXECUTE") and not rogue_done:
                rogue_done = True
                rogues.add(asyncio.get_running_loop().create_task(rogue()))

        agent.on_role(on_role)
        n = 0
        while await agent.wait_role(Role.ACTIVE):
            n += 1
            inputs = {"n": n}
            async with agent.decide("crash", inputs) as d:
                d.output = decide(inputs)
            key = f"{color}-{os.getpid()}-{n}"
            permit = await agent.permit(key)
            if permit:
                agent.execution(d.id, key, d.output["stake"])
                crash = crash_point(n)
                agent.outcome(score(d.output, crash), decision_id=d.id, crash=crash)
            await asyncio.sleep(pause)


if __name__ == "__main__":
    path = os.path.join(os.environ["SHADOW_DIR"], f"{os.environ['AGENTSUP_COLOR']}.log")
    with open(path, "a", buffering=1) as out:
        asyncio.run(main(out))
    sys.exit(0)
