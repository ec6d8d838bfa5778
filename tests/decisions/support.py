"""Logs written the way the daemon writes them, for the tests that read, tamper and verify."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from supervisor.children.process import Child
from supervisor.config import AgentSection, Color, DecisionLogSection
from supervisor.decisions import DecisionLog
from supervisor.metrics import Metrics


def children() -> dict[Color, Child]:
    """Real Child objects (never started): what the pipeline hands its subscribers."""

    def ignore(*args: Any) -> None:
        return None

    return {
        c: Child(
            c,
            AgentSection(command=["true"], version=f"{i + 1}.0.0"),
            {},
            on_message=ignore,
            on_protocol_error=ignore,
            on_state=ignore,
            on_exit=ignore,
            on_orphan_killed=ignore,
        )
        for i, c in enumerate(Color)
    }


def new_log(path: Path, alerts: list[dict[str, Any]] | None = None, **cfg: Any) -> DecisionLog:
    told: dict[Color, tuple[str, int] | None] = {Color.BLUE: ("active", 3), Color.GREEN: None}
    return DecisionLog(
        DecisionLogSection(path=path, **cfg),
        path,
        metrics=Metrics(),
        config_hash="c0ffee" * 2 + "0000",
        told=told,
        versions={Color.BLUE: "1.0.0", Color.GREEN: "2.0.0"},
        alert=(alerts if alerts is not None else []).append,
    )


def decision(n: int) -> dict[str, Any]:
    return {
        "type": "decision",
        "id": f"d-{n}",
        "kind": "dice",
        "inputs": {"round": n, "target": 49.5, "stake": 1.0},
        "output": {"bet": "roll_under", "target": 49.5, "stake": 1.0},
        "latency_ms": 1.5,
        **({"reasoning": "edge below target"} if n % 2 else {}),
    }


async def feed(log: DecisionLog, rounds: int, *, start: int = 1, flush_every: int = 0) -> None:
    """``rounds`` rounds of blue's: a decision, an execution and an outcome each; written
    every ``flush_every`` rounds (so that rotations come in the middle)."""
    kids = children()
    blue = kids[Color.BLUE]
    for n in range(start, start + rounds):
        log.on_decision(blue, decision(n))
        execution = {"type": "execution", "decision_id": f"d-{n}", "key": f"k-{n}", "amount": 1.0}
        log.on_event(blue, execution)
        log.on_event(blue, {"type": "outcome", "pnl": 0.98, "decision_id": f"d-{n}"})
        if flush_every and n % flush_every == 0:
            assert await log.flush(30.0)
        elif n % 50 == 0:
            await asyncio.sleep(0)


async def write_log(path: Path, rounds: int, flush_every: int = 20, **cfg: Any) -> DecisionLog:
    """A whole life: open, ``rounds`` rounds, every record written, closed."""
    log = new_log(path, **cfg)
    await log.open()
    writer = asyncio.create_task(log.run())
    await feed(log, rounds, flush_every=flush_every)
    assert await log.flush(30.0)
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await log.close()
    return log


def records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)
