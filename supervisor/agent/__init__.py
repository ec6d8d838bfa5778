"""The agent SDK: what an agent imports to be supervised by ``agentsup``.

It speaks the channel for you (hello, heartbeats, the role, flags and requests the supervisor
pushes), asks Redis for a permit right before money moves, and reports decisions, executions,
outcomes and errors. A complete minimal agent::

    import asyncio
    from supervisor.agent import Agent

    async def main() -> None:
        async with Agent.connect() as agent:
            n = 0
            while await agent.wait_role("active"):      # False once the supervisor is gone
                n += 1
                async with agent.decide("dice", {"target": 49.5}) as d:
                    d.output = {"bet": "under", "stake": 1.0}
                permit = await agent.permit(f"{agent.color}-{n}")
                if not permit:                          # never move money without one
                    continue
                agent.execution(d.id, permit.key, 1.0)
                agent.outcome(+0.98, decision_id=d.id)
                await asyncio.sleep(0.05)

    asyncio.run(main())

The race a permit prevents
--------------------------
Blue is active at epoch 7 and decides to bet. Before it executes, the operator switches to
green: the supervisor sets the active key to ``green`` and the epoch to 8 in one Lua call and
only then pushes the new roles. Blue's role push may still be in flight, so blue cannot trust
what it *believes*; it asks Redis with ``(blue, 7, key)`` in one atomic script, which answers
``not_active``. A blue left over from before a daemon restart, holding epoch 7 while green is
at 8, gets ``stale_epoch``. A key that was already executed gets ``duplicate``. Redis
unreachable means ``unavailable``: the SDK fails closed. A lost reply is retried once with the
same token, and the script answers ``ok`` again for the same token, so a retry never turns a
granted permit into a refused one nor grants two.

The channel is also the agent's lease: when it closes (the daemon died, or closed it), the SDK
sets :attr:`Agent.lost`, drops the role to standby and the epoch to ``None``, and refuses every
later permit without asking anybody.
"""

from supervisor.agent.client import Agent
from supervisor.agent.migrations import Migrations, NoMigration
from supervisor.agent.types import Decision, Permit, PermitReason, Role, state_digest

# The hook signatures, importable from here as before the split (not part of ``*``).
from supervisor.agent.types import MirrorHook as MirrorHook
from supervisor.agent.types import PlainHook as PlainHook
from supervisor.agent.types import ReplayHook as ReplayHook
from supervisor.agent.types import RestoreHook as RestoreHook
from supervisor.agent.types import RoleCallback as RoleCallback
from supervisor.agent.types import SnapshotHook as SnapshotHook

__all__ = [
    "Agent",
    "Decision",
    "Migrations",
    "NoMigration",
    "Permit",
    "PermitReason",
    "Role",
    "state_digest",
]
