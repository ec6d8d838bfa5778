"""Why a handoff stopped: one exception with the step it stopped at and a stable reason."""

from __future__ import annotations

from supervisor.errors import SupervisorError


class HandoffFailed(SupervisorError):
    """A step of a handoff failed; before the flip, the old color is resumed and stays in
    charge. ``step`` is where (quiesce, snapshot, store, restore, verify, flip), ``reason`` a
    stable word for why (refused, timeout, unavailable, stale, too_large, digest_mismatch,
    restore_failed, ...), the message a sentence for the operator."""

    code = "handoff_aborted"

    def __init__(self, step: str, reason: str, message: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(message)
