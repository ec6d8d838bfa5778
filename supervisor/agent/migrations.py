"""Schema migrations of an agent's state: each one up and down, applied on restore.

An agent names the schema its state is in (``Agent.connect(schema="demo/2")``) and registers,
for every older schema it can take, how to go up from it and back down::

    agent.migrations.register(
        "demo/1",
        "demo/2",
        up=lambda s: {**s, "positions": {p["market"]: p for p in s["positions"]}},
        down=lambda s: {**s, "positions": list(s["positions"].values())},
    )

before entering the agent (its hello announces what it reads). On a restore the SDK
walks the shortest chain of steps from the schema it received to its own. Down is there for
the way back: after a rollback the older version receives the newer one's state, and only
the newer version knows how to bring it down, so the supervisor asks it for its snapshot in a
schema the older one reads (``snapshot_request.accept``, from the older one's hello:
``reads``), and this SDK migrates down before sending. This is OTP's ``code_change`` up and
down, one step per schema.

>>> m = Migrations()
>>> m.register("s/1", "s/2", up=lambda s: {**s, "v": 2}, down=lambda s: {**s, "v": 1})
>>> m.register("s/2", "s/3", up=lambda s: {**s, "w": True}, down=lambda s: {
...     k: v for k, v in s.items() if k != "w"})
>>> m.migrate({"v": 1}, "s/1", "s/3")
{'v': 2, 'w': True}
>>> m.migrate({"v": 2, "w": True}, "s/3", "s/1")
{'v': 1}
>>> m.connected("s/2")
['s/1', 's/2', 's/3']
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

Step = Callable[[Any], Any]


class NoMigration(ValueError):
    """No chain of registered migrations leads from one schema to the other."""


class Migrations:
    """A graph of schemas: each registered migration is an edge both ways."""

    def __init__(self) -> None:
        self._steps: dict[str, dict[str, Step]] = {}

    def register(self, older: str, newer: str, *, up: Step, down: Step) -> None:
        """``up`` takes an ``older`` state to ``newer``; ``down`` the reverse."""
        if older == newer:
            raise ValueError("a migration goes between two different schemas")
        self._steps.setdefault(older, {})[newer] = up
        self._steps.setdefault(newer, {})[older] = down

    def path(self, start: str, goal: str) -> list[str]:
        """The schemas from ``start`` to ``goal``, both included (shortest chain)."""
        if start == goal:
            return [start]
        came: dict[str, str] = {start: start}
        todo = deque([start])
        while todo:
            schema = todo.popleft()
            for nxt in self._steps.get(schema, {}):
                if nxt in came:
                    continue
                came[nxt] = schema
                if nxt == goal:
                    chain = [goal]
                    while chain[-1] != start:
                        chain.append(came[chain[-1]])
                    return chain[::-1]
                todo.append(nxt)
        raise NoMigration(f"no migration from {start!r} to {goal!r}")

    def migrate(self, state: Any, start: str, goal: str) -> Any:
        """``state`` (in ``start``) taken step by step to ``goal``."""
        chain = self.path(start, goal)
        for here, there in itertools.pairwise(chain):
            state = self._steps[here][there](state)
        return state

    def connected(self, schema: str) -> list[str]:
        """Every schema a chain joins to ``schema`` (itself included), sorted: what an agent
        in ``schema`` can restore from, and write for an older agent."""
        seen = {schema}
        todo = deque([schema])
        while todo:
            for nxt in self._steps.get(todo.popleft(), {}):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return sorted(seen)

    def first_reachable(self, start: str, accept: list[str]) -> str | None:
        """The first schema of ``accept`` a chain reaches from ``start``, or None."""
        reachable = set(self.connected(start))
        return next((s for s in accept if s in reachable), None)
