"""The critical triggers: an exception or an auth failure reported by the acting candidate,
the candidate exiting while it acts, and its heartbeats stopping. Each rolls back at once."""

from __future__ import annotations

from supervisor.config import Color, Triggers
from supervisor.guard.verdict import Action, Severity, Verdict


def on_error(triggers: Triggers, color: Color, kind: str, message: str) -> Verdict | None:
    """An ``error`` event: kinds ``exception`` and ``auth`` are critical, ``other`` is not."""
    if kind == "exception" and triggers.exception.enabled:
        return Verdict(
            "exception",
            Severity.CRITICAL,
            Action.ROLLBACK,
            color,
            f"unhandled exception: {message[:200]}",
        )
    if kind == "auth" and triggers.auth.enabled:
        return Verdict(
            "auth", Severity.CRITICAL, Action.ROLLBACK, color, f"auth failure: {message[:200]}"
        )
    return None


def on_exit(triggers: Triggers, color: Color, returncode: int) -> Verdict | None:
    """The candidate's process exited while it was in charge."""
    if not triggers.exit.enabled:
        return None
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    return Verdict(
        "exit",
        Severity.CRITICAL,
        Action.ROLLBACK,
        color,
        f"process exited while acting ({how})",
        value=float(returncode),
    )


def on_silence(color: Color, age_s: float, timeout_s: float) -> Verdict:
    """No heartbeat for longer than the timeout (the agent hangs or its loop is blocked)."""
    return Verdict(
        "heartbeat",
        Severity.CRITICAL,
        Action.ROLLBACK,
        color,
        f"no heartbeat for {age_s:.1f} s (timeout {timeout_s:g} s)",
        value=round(age_s, 3),
        threshold=timeout_s,
    )
