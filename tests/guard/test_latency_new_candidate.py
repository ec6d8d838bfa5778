"""The latency trigger forgets a candidate's decisions when a new candidate takes over (a new
version of the same color too): it is judged on its own decisions only, from ``min_samples``
of them; and an episode clears only below its clearing ratio, not at it."""

from __future__ import annotations

from supervisor.config import Color
from supervisor.guard.latency import CLEAR_BELOW
from tests.guard.test_latency import feed, guard

BLUE, GREEN = Color.BLUE, Color.GREEN


def test_a_new_candidate_is_judged_on_its_own_decisions_only() -> None:
    g = guard()
    assert feed(g, BLUE, "stable", 10.0, 50, 0.0) == []
    assert len(feed(g, GREEN, "candidate", 48.0, 30, 100.0)) == 1  # slow: an alert
    g.reset_candidate()  # rolled back, then green again with a new version
    assert feed(g, GREEN, "candidate", 10.0, 19, 200.0) == []  # under min_samples: not judged
    assert g.ratio is None
    assert feed(g, GREEN, "candidate", 10.0, 1, 219.0) == []
    assert g.ratio == 1.0


def test_an_episode_clears_only_below_its_clearing_ratio() -> None:
    g = guard()  # ratio 2: an episode clears below 2 × CLEAR_BELOW (1.8)
    assert feed(g, BLUE, "stable", 10.0, 50, 0.0) == []
    assert len(feed(g, GREEN, "candidate", 48.0, 20, 100.0)) == 1
    feed(g, GREEN, "candidate", 18.0, 50, 120.0)  # exactly 1.8 × stable: not below it
    assert (g.ratio, g.state(GREEN, now=170.0)["state"]) == (2.0 * CLEAR_BELOW, "alert")
    feed(g, GREEN, "candidate", 17.0, 50, 170.0)
    assert g.state(GREEN, now=220.0)["state"] != "alert"
