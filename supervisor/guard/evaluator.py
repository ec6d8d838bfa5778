"""What a trigger is to the pipeline: the :class:`Evaluator` protocol, and what it is given.

An evaluator is one row of the rollback table. The pipeline delivers it the messages it
listens to, ticks it on the housekeeping timer, tells it when who is judged changes, and shows
its :meth:`~Evaluator.state` in ``agentsup triggers`` and the metrics. It answers with a
:class:`~supervisor.guard.verdict.Verdict` or None; what a verdict leads to (a rollback, an
alert) is the responder's business, never the evaluator's.

An evaluator sees a narrow :class:`Context`, never the daemon: its own config section (in
``triggers``), how the rollout judges each color (``roles``), the children's heartbeat clocks
and per color timeouts (for the heartbeat trigger), and a way to ask for a Redis lookup
(for double_spend, whose memory forgets). Adding a trigger: see :mod:`supervisor.guard.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, Protocol, TypedDict

from supervisor.config import Color, Triggers
from supervisor.guard.verdict import Severity, Verdict

# The message type the pipeline delivers when a child's process ends (``returncode``): not a
# line of the channel, but the same bus.
EXIT: Final = "exit"
# How a rollout strategy sees a color (the same values as supervisor.rollout.Judged, which is
# above this package): its rounds are the baseline, it is on trial, or neither.
Judged = Literal["stable", "candidate", "other"]
# What ``agentsup triggers`` shows for a trigger and a color.
Status = Literal["ok", "alert", "fired"]
# Who is judged changed: ``active`` (who acts changed: a new candidate, or none) or ``stable``
# (a candidate was confirmed: the baseline is another color's now).
ResetKind = Literal["active", "stable"]


class TriggerState(TypedDict):
    """One trigger's state for one color: what ``agentsup triggers`` shows and the metrics
    export (``agentsup_trigger_value``). Evaluators add their own numbers in a TypedDict that
    extends this one. ``last_fired`` is on the monotonic clock of ``now`` (None: this evaluator
    does not know); the pipeline shows it as unix time."""

    value: float | None
    state: Status
    last_fired: float | None


@dataclass(frozen=True, slots=True)
class Reset:
    """A change of who is judged, with the color acting after it and when (monotonic)."""

    kind: ResetKind
    active: Color | None
    now: float


class Sender(Protocol):
    """Who sent a message: the evaluators need only its color (a
    :class:`~supervisor.children.process.Child` is one)."""

    @property
    def color(self) -> Color: ...


class Beating(Protocol):
    """A child's heartbeat clock (monotonic; None until it says hello), which the heartbeat
    trigger reads (the pipeline keeps it)."""

    @property
    def last_heartbeat(self) -> float | None: ...


class Acting(Protocol):
    @property
    def active(self) -> Color | None: ...

    @property
    def epoch(self) -> int: ...


class Roles(Protocol):
    """How the rollout judges the colors (a :class:`~supervisor.rollout.Rollout` is one): the
    evaluators ask it rather than work roles out from stable and candidate themselves."""

    @property
    def state(self) -> Acting: ...

    def judged(self, color: Color) -> Judged:
        """The baseline (``stable``), on trial (``candidate``), or neither (``other``)."""
        ...

    def on_trial(self, color: Color) -> bool:
        """True when a verdict against ``color`` rolls it back."""
        ...


@dataclass(frozen=True, slots=True)
class Context:
    """What an evaluator is built from (each takes the parts it needs)."""

    triggers: Triggers
    roles: Roles
    # Every child's heartbeat clock: a live view, read when judged.
    children: Mapping[Color, Beating]
    # Per color override of [triggers.heartbeat] timeout_s (None: the section's).
    heartbeat_timeouts: Mapping[Color, float | None]
    # Ask for the permit of (color, key, epoch) to be read from Redis and handed back to
    # DoubleSpend.from_permit_record (memory may have forgotten the key).
    lookup: Callable[[Color, str, int], None]


class Evaluator(Protocol):
    """One trigger. Subclass it to inherit the no-op ``tick``, ``reset`` and ``paused``.

    ``on_event`` runs on the hot path, once per message of a type in ``listens`` (``exit`` is
    the pipeline's own: a child's process ended, ``msg["returncode"]``): keep it to a few
    dict lookups and float operations, and allocate only the verdict. Verdicts come back
    through the return values, so an evaluator never calls anyone.
    """

    name: ClassVar[str]  # the trigger: its [triggers.NAME] section, verdicts, metrics labels
    severity: ClassVar[Severity]  # as in the rollback table
    listens: ClassVar[tuple[str, ...]]  # the message types delivered to on_event
    # Every (trigger, severity) its verdicts may carry, for the metrics' label sets: usually
    # just its own; pnl_sigma also says pnl_ok.
    emits: ClassVar[tuple[tuple[str, Severity], ...]] = ()

    enabled: bool  # its config section's ``enabled``: shown, and nothing fires without it
    threshold: float | None  # shown for the trigger as a whole (None: it has none)

    def on_event(self, child: Sender, msg: dict[str, Any]) -> Verdict | None:
        """One message of a type in ``listens``."""
        ...

    def tick(self, now: float) -> Verdict | None:
        """The housekeeping tick (monotonic ``now``): what is judged by time."""
        return None

    def reset(self, reset: Reset) -> None:
        """Who is judged changed (see :class:`Reset`)."""
        return None

    def paused(self, seconds: float, now: float) -> None:
        """The daemon itself stood still for ``seconds`` until ``now``: move every clock on by
        as much, so that its own pause is never held against a child."""
        return None

    def state(self, color: Color, now: float) -> TriggerState:
        """What ``agentsup triggers`` shows for ``color``, times on the clock of ``now``."""
        ...


def emitted(evaluator: Evaluator) -> tuple[tuple[str, Severity], ...]:
    """The (trigger, severity) pairs ``evaluator``'s verdicts may carry."""
    return evaluator.emits or ((evaluator.name, evaluator.severity),)
