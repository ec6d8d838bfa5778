"""The canary judge's statistics and verdicts, on numbers chosen by hand."""

from __future__ import annotations

import random

import pytest

from supervisor import config
from supervisor.config import CanaryJudgeSection, Color
from supervisor.errors import ConfigError
from supervisor.rollout.judge import Judge
from supervisor.rollout.stats import chi2_sf, chi_square, mann_whitney

CAND, STABLE = Color.GREEN, Color.BLUE


def test_mann_whitney_agrees_with_scipys_asymptotic_method() -> None:
    # scipy.stats.mannwhitneyu's documented example (method="asymptotic"): U = 17,
    # p = 0.11134688653314041 (two-sided, with the continuity correction).
    c = mann_whitney([19, 22, 16, 29, 24], [20, 11, 17, 12])
    assert c.effect * 20 + 10 == pytest.approx(17.0)
    assert c.p == pytest.approx(0.11134688653314041, rel=1e-12)
    # Ties: two binary samples are the two-proportion test.
    same = mann_whitney([0.0, 1.0] * 50, [1.0, 0.0] * 50)
    assert (same.effect, same.p) == (0.0, 1.0)
    assert mann_whitney([], [1.0]).p == 1.0


def test_chi_square_tails() -> None:
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(30.0, 1) == pytest.approx(4.3204630578274955e-08, rel=1e-9)
    assert chi2_sf(0.5, 10) == pytest.approx(0.9999933882894389, rel=1e-9)
    assert chi2_sf(0.0, 3) == 1.0
    mixed = chi_square({"dice": 60, "crash": 40}, {"dice": 600, "crash": 400})
    assert mixed.effect == pytest.approx(0.0)
    assert mixed.p > 0.9


def judge(**settings: object) -> Judge:
    return Judge(CanaryJudgeSection.model_validate(settings))


def play(
    j: Judge,
    color: Color,
    n: int,
    rng: random.Random,
    *,
    share: float,
    mean: float = 0.0,
    stake_factor: float = 1.0,
    latency: float = 50.0,
    kinds: tuple[str, ...] = ("dice", "crash"),
) -> None:
    for i in range(n):
        j.decision(color, kinds[i % len(kinds)], latency * rng.uniform(0.9, 1.1))
        amount = 10.0 * share * stake_factor * rng.uniform(0.5, 1.5)
        j.asked(color, amount, share)
        j.execution(color, f"{color}-{i}", amount, share)
        j.outcome(color, amount * rng.gauss(mean, 1.0), f"{color}-{i}")


def test_a_healthy_candidate_at_its_own_scale_passes() -> None:
    """Stakes sized by allocation (5 % against 95 %) are compared per unit of allocation, and
    returns per unit staked: a healthy candidate is alike on every metric."""
    rng = random.Random(3)
    j = judge()
    play(j, STABLE, 400, rng, share=0.95)
    play(j, CAND, 300, rng, share=0.05)
    verdict = j.judge(CAND)
    assert verdict.verdict == "pass", [r.as_dict() for r in verdict.rows]
    assert {r.metric for r in verdict.rows} == set(config.CANARY_METRICS)
    assert j.rounds(CAND) == 300


def test_no_data_never_passes_and_a_running_look_needs_less() -> None:
    rng = random.Random(4)
    j = judge()
    play(j, STABLE, 400, rng, share=0.95)
    play(j, CAND, 12, rng, share=0.05, stake_factor=3.0)
    step = j.judge(CAND)  # 12 samples of the candidate: under min_samples at the step's end
    assert step.verdict == "hold"
    assert {r.verdict for r in step.rows} == {"no_data"}
    running = j.judge(CAND, running=True)
    assert [r.metric for r in running.failed] == ["stake"]
    assert "latency" not in {r.metric for r in running.rows}  # judged at the step's end only
    j.new_step()
    assert j.judge(CAND).verdict == "hold"  # nothing at all: no data
    assert {r.verdict for r in j.judge(CAND).rows} == {"no_data"}


def test_doubled_stakes_fail_at_once_and_the_reason_says_why() -> None:
    rng = random.Random(5)
    j = judge()
    play(j, STABLE, 500, rng, share=0.8)
    play(j, CAND, 15, rng, share=0.2, stake_factor=2.0)
    running = j.judge(CAND, running=True)
    assert running.verdict == "fail"
    assert running.reason().startswith("stake high (candidate ")


def test_a_lower_return_fails_a_higher_one_passes() -> None:
    rng = random.Random(6)
    worse, better = judge(), judge()
    for j, mean in ((worse, -1.0), (better, +1.0)):
        play(j, STABLE, 400, rng, share=0.9)
        play(j, CAND, 200, rng, share=0.1, mean=mean)
    rows = {r.metric: r for r in worse.judge(CAND).rows}
    assert (rows["return"].verdict, rows["return"].fails) == ("low", True)
    rows = {r.metric: r for r in better.judge(CAND).rows}
    assert (rows["return"].verdict, rows["return"].fails) == ("high", False)
    assert better.judge(CAND).verdict == "pass"


def test_latency_fails_only_past_the_ratio_and_the_floor() -> None:
    rng = random.Random(7)
    for candidate_ms, stable_ms, verdict in (
        (120.0, 50.0, "high"),  # 2.4x and 70 ms slower
        (60.0, 50.0, "pass"),  # proven, but 1.2x
        (0.8, 0.3, "pass"),  # 2.7x, but half a millisecond
    ):
        j = judge()
        play(j, STABLE, 300, rng, share=0.5, latency=stable_ms)
        play(j, CAND, 300, rng, share=0.5, latency=candidate_ms)
        rows = {r.metric: r for r in j.judge(CAND).rows}
        assert rows["latency"].verdict == verdict, (candidate_ms, stable_ms)


def test_a_different_mix_of_actions_fails() -> None:
    rng = random.Random(8)
    j = judge()
    play(j, STABLE, 300, rng, share=0.5, kinds=("dice", "crash"))
    play(j, CAND, 300, rng, share=0.5, kinds=("dice",))
    rows = {r.metric: r for r in j.judge(CAND).rows}
    assert rows["action_mix"].fails
    assert rows["action_mix"].effect == pytest.approx(0.5)


def test_a_large_difference_not_yet_proven_holds() -> None:
    j = judge(min_samples=5)
    for _ in range(5):  # all five of the candidate's stakes above all five of stable's
        j.decision(STABLE, "dice", 1.0)
        j.decision(CAND, "dice", 1.0)
        j.asked(STABLE, 1.0, 0.5)
        j.asked(CAND, 1.2, 0.5)
    rows = {r.metric: r.verdict for r in j.judge(CAND).rows}
    assert rows["stake"] == "inconclusive"
    assert j.judge(CAND).verdict == "hold"


def test_stakes_come_from_executions_where_the_daemon_sees_no_permit() -> None:
    j = Judge(CanaryJudgeSection(), stakes_from_permits=False)
    j.asked(CAND, 5.0, 0.5)
    j.execution(CAND, "d1", 2.0, 0.5)
    j.outcome(CAND, 1.0, "d1")
    copied = j.prepare(CAND).cand.series
    assert copied["stake"] == [4.0]  # per unit of allocation
    assert copied["return"] == [0.5]  # per unit staked


def test_canary_steps_are_checked_at_start() -> None:
    base = {
        "agents": {
            "blue": {"command": ["a"], "version": "1"},
            "green": {"command": ["a"], "version": "2"},
        }
    }
    assert config.parse(base).canary.steps == [5.0, 20.0, 50.0, 100.0]
    for steps in ([5, 20], [20, 5, 100], [0, 100], [100]):
        with pytest.raises(ConfigError) as err:
            config.parse({**base, "canary": {"steps": steps}})
        assert err.value.problems[0].startswith("canary.steps: steps must increase")
