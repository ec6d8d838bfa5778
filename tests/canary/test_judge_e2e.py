"""The judge in a real daemon: a healthy candidate goes through every step by itself, one that
doubles its stakes is aborted within a few rounds of its first step, its version rejected."""

from __future__ import annotations

from pathlib import Path

from tests.canary.test_canary import agents, answers, plays, start_canary  # noqa: F401
from tests.harness import running_daemon
from tests.redis_server import RedisServer

QUICK = {
    "steps": [5.0, 20.0, 100.0],
    "min_rounds": 40,
    "min_seconds": 0.5,
    "judge": {"look_s": 0.25},
}
# These agents report no context: the deploy gates it feeds would hold every step the judge
# passes (tests/gates/test_deploy.py shows that); here they are off.
NO_CONTEXT_GATES = {"disabled": ["escrow_dispute", "auto_release"]}


async def test_a_healthy_candidate_is_promoted_step_by_step(
    redis_server: RedisServer,
    plays: Path,  # noqa: F811
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        **agents(plays, both={"CANARY_ROUND_S": "0.003"}),
        sections={"canary": QUICK, "rollout": {"probation_s": 0}, "gates": NO_CONTEXT_GATES},
    ) as d:
        started = await start_canary(d)
        step = await d.wait_log("flip", reason="canary_step: 20% (judge: pass)", timeout=30)
        assert step["epoch"] == started["epoch"] + 1
        done = await d.wait_log("flip", reason="canary_promote: 100% (judge: pass)", timeout=30)
        assert done["active"] == "green"
        st = await d.status()
        assert (st["mode"], st["active"], st["candidate"], st["stable"]) == (
            "blue-green",
            "green",
            "green",
            "blue",
        )
        assert st["probation_since"] is not None  # in charge alone, on probation
        assert st["rejected"] == {}
        passed = d.find("canary_step_passed")
        assert [r["percent"] for r in passed] == [5.0, 20.0]
        # Both steps were judged on rounds of both colors.
        assert len({e for e, r, _ in answers(plays, "green") if r == "ok"}) >= 2


async def test_doubled_stakes_are_aborted_within_a_few_rounds(
    redis_server: RedisServer,
    plays: Path,  # noqa: F811
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        **agents(plays, {"CANARY_STAKE_FACTOR": "2"}, both={"CANARY_ROUND_S": "0.003"}),
        sections={"canary": {**QUICK, "min_rounds": 1000}},
    ) as d:
        started = await start_canary(d)
        aborted = await d.wait_log("canary_aborted", timeout=30)
        assert aborted["look"] == "running"
        assert aborted["reason"].startswith("stake high")
        flip = await d.wait_log("flip", trigger="canary_judge")
        assert flip["epoch"] == started["epoch"] + 1
        assert flip["reason"].startswith("canary_abort: stake high")
        st = await d.status()
        assert (st["mode"], st["active"], st["rejected"]) == (
            "blue-green",
            "blue",
            {"green": "2.0.0"},
        )
        rounds = sum(1 for e, r, _ in answers(plays, "green") if r == "ok")
        assert rounds < 1000  # by a running look, long before the step's end
