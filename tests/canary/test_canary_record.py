"""A canary record read back from Redis or state.json (rollout/state.py): what is out of
range is not a canary (the rollout then ends it: stable takes all), never a step to act on."""

from __future__ import annotations

import pytest

from supervisor.rollout.state import CanaryState

GOOD = CanaryState((5.0, 20.0, 100.0), 1, 20.0, 1.5, 0.01, 2.0)


def test_a_record_in_range_reads_back_the_same() -> None:
    assert CanaryState.load(GOOD.fields()) == GOOD
    first = CanaryState((5.0, 20.0, 100.0), 0, 5.0, 1.5, 0.01, 0.0)
    assert CanaryState.load(first.fields()) == first  # step 0 is a step
    last = CanaryState((5.0, 20.0, 100.0), 2, 99.5, 1.5, 0.01, 0.0)
    assert CanaryState.load(last.fields()) == last


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("canary_step", "-1"),
        ("canary_step", "3"),  # past the last of three steps
        ("canary_percent", "0"),  # nothing for the candidate is no canary
        ("canary_percent", "100"),  # all of it is a promotion, not a canary
        ("canary_percent", "150"),
        ("canary_step", "one"),
        ("canary_steps", ""),
    ],
)
def test_a_record_out_of_range_or_unreadable_is_no_canary(field: str, value: str) -> None:
    fields = {**GOOD.fields(), field: value}
    assert CanaryState.load(fields) is None


def test_a_record_without_its_fields_is_no_canary() -> None:
    assert CanaryState.load({}) is None
