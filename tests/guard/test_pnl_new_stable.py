"""The P&L trigger on the pipeline: the baseline is the stable color's rounds, and a confirm
(a new stable color) starts it again from nothing: the old stable's rounds no longer judge
anyone. A candidate taking over keeps the baseline."""

from __future__ import annotations

from supervisor.config import Triggers
from tests.guard.test_registry import BLUE, GREEN, Deployment


def baseline_rounds(d: Deployment) -> int:
    rounds: int = d.pipeline.trigger_states({})["pnl_sigma"]["colors"]["blue"]["baseline_rounds"]
    return rounds


def test_a_new_stable_color_starts_the_baseline_again() -> None:
    d = Deployment(Triggers())
    for pnl in (1.0, 2.0, 3.0):
        d.pipeline.handle(d.children[BLUE], {"type": "outcome", "pnl": pnl})
    assert baseline_rounds(d) == 3
    d.pipeline.new_active(GREEN)  # who acts changed: the baseline stays
    assert baseline_rounds(d) == 3
    d.pipeline.new_stable()  # green confirmed: blue's rounds are no baseline any more
    assert baseline_rounds(d) == 0
