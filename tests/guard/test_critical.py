"""The exit trigger's reason says how the candidate's process ended: an exit code (0 too: a
candidate that exits cleanly while on trial has still stopped acting), or the signal that
killed it (a negative return code)."""

from __future__ import annotations

import pytest

from supervisor.config import Triggers
from tests.guard.test_registry import GREEN, Deployment


@pytest.mark.parametrize(
    ("returncode", "how"),
    [(0, "exit code 0"), (3, "exit code 3"), (-15, "killed by signal 15")],
)
def test_the_exit_reason_names_the_code_or_the_signal(returncode: int, how: str) -> None:
    d = Deployment(Triggers())
    d.pipeline.child_exited(d.children[GREEN], returncode)
    [verdict] = d.verdicts
    assert verdict.reason == f"exit: process exited while acting ({how})"
