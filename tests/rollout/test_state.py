"""The rollout record read back from Redis or state.json (rollout/state.py): the probation
clock comes back as it was written, and a record without one (or with garbage in its place)
has none, never a NaN that would stop probation from ever ending and print as a time."""

from __future__ import annotations

import pytest

from supervisor.config import Color
from supervisor.rollout import Mode
from supervisor.rollout.state import CanaryState, RolloutState


def loaded(fields: dict[str, str]) -> RolloutState:
    state = RolloutState()
    state.load(fields)
    return state


def test_a_candidate_on_probation_reads_back_with_its_clock() -> None:
    written = RolloutState(Color.GREEN, 7, Color.BLUE, Color.GREEN, 1_700_000_000.25)
    back = loaded(written.fields())
    assert (back.stable, back.candidate, back.probation_since) == (
        Color.BLUE,
        Color.GREEN,
        1_700_000_000.25,
    )
    assert back.fields() == written.fields()


@pytest.mark.parametrize("value", [None, "", "nan", "soon"])
def test_a_record_without_a_readable_clock_has_none(value: str | None) -> None:
    fields = {"stable": "blue", "candidate": "green"}
    if value is not None:
        fields["probation_since"] = value
    back = loaded(fields)
    assert back.probation_since is None
    assert back.fields()["probation_since"] == ""  # written back as none, not as "nan"


def test_a_canary_that_cannot_be_read_is_no_canary() -> None:
    """A canary needs its steps and its candidate: without either the record is blue-green
    (the rollout then ends the canary, stable takes all), never a canary without them."""
    steps = CanaryState((5.0, 20.0, 100.0), 1, 20.0, 1.5, 0.01, 0.0)
    whole = {"stable": "blue", "candidate": "green", "mode": "canary", **steps.fields()}
    assert (loaded(whole).mode, loaded(whole).canary) == (Mode.CANARY, steps)
    for broken in (
        {k: v for k, v in whole.items() if k != "candidate"},
        {k: v for k, v in whole.items() if not k.startswith("canary_")},
    ):
        back = loaded(broken)
        assert (back.mode, back.canary) == (Mode.BLUE_GREEN, None)
