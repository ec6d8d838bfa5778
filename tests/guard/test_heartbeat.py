"""The heartbeat trigger: the candidate on trial silent past its timeout fires it (stable is
not judged, nor a child that never sent a heartbeat); a disabled trigger never fires, however
long the silence (it is shown, not judged)."""

from __future__ import annotations

import time

from supervisor.config import Triggers
from tests.guard.test_registry import BLUE, GREEN, Deployment


def silent_for(d: Deployment, seconds: float) -> float:
    """Green's last heartbeat ``seconds`` ago (its timeout in the test deployment is 2 s)."""
    now = time.monotonic()
    d.children[GREEN].last_heartbeat = now - seconds
    return now


def test_a_silent_candidate_fires_the_heartbeat_trigger() -> None:
    d = Deployment(Triggers())
    d.pipeline.tick(silent_for(d, 1.0))
    assert d.verdicts == []
    d.pipeline.tick(silent_for(d, 30.0))
    [verdict] = d.verdicts
    assert verdict.reason.startswith("heartbeat")


def test_a_disabled_heartbeat_trigger_never_fires() -> None:
    d = Deployment(Triggers.model_validate({"heartbeat": {"enabled": False}}))
    d.pipeline.tick(silent_for(d, 30.0))
    assert d.verdicts == []
    assert d.pipeline.trigger_states({})["heartbeat"]["enabled"] is False


def test_only_the_candidate_on_trial_is_judged_and_only_past_its_timeout() -> None:
    d = Deployment(Triggers())
    now = 1000.0
    d.children[BLUE].last_heartbeat = now - 30.0  # stable, silent: not on trial
    d.pipeline.tick(now)  # green has sent no heartbeat yet: nothing to judge
    assert d.verdicts == []
    d.children[GREEN].last_heartbeat = now - 2.0  # exactly its timeout: not past it
    d.pipeline.tick(now)
    assert d.verdicts == []
    d.pipeline.tick(now + 0.5)
    [verdict] = d.verdicts
    assert verdict.color is GREEN
