"""What a control command sees of the daemon: the deployment it commands, and the way to ask
the daemon to stop. Nothing else (the Redis client, the arbiter, the metrics registry, the
event loop's tasks) is a command's business."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from supervisor.config import Color

if TYPE_CHECKING:
    from supervisor.children.process import Child
    from supervisor.rollout import Change


class DeploymentView(Protocol):
    """One deployment (a blue/green pair), as commands use it."""

    @property
    def name(self) -> str: ...

    @property
    def children(self) -> Mapping[Color, Child]: ...

    @property
    def versions(self) -> Mapping[Color, str]: ...

    async def status(self, flips: int) -> dict[str, Any]:
        """The ``status`` object (DESIGN.md's fields and more)."""
        ...

    def triggers(self) -> dict[str, Any]:
        """Every trigger: threshold, and per color value, state and when it last fired."""
        ...

    async def switch(self, color: Color, by: str, started: float) -> Change:
        """Put ``color`` in charge (refused: already_active, not_running)."""
        ...

    async def confirm(self, by: str) -> Change:
        """Make the candidate in charge stable (refused: no_candidate)."""
        ...

    async def rollback(self, reason: str, by: str, started: float) -> Change:
        """Back to stable now (refused: nothing_to_roll_back)."""
        ...

    def restart(self, color: Color) -> None:
        """Start a FATAL color again (refused: not_fatal)."""
        ...

    async def handoff_to(self, color: Color, dry_run: bool, by: str) -> dict[str, Any]:
        """Hand the state of the color in charge to ``color``, then flip to it (unless
        ``dry_run``): the steps and their durations (refused: already_active, not_running,
        no_snapshot_capability, no_common_schema, handoff_in_progress; handoff_aborted when
        a step failed and the old color was resumed)."""
        ...

    async def canary_start(self, color: Color, steps: list[float] | None, by: str) -> Change:
        """Give ``color`` the first step's share of the capital (``steps``: else [canary]
        steps). Refused: canary_in_progress, candidate_in_charge, already_active,
        not_running, bad_steps, direct_permits, nobody_in_charge."""
        ...

    async def canary_set(self, percent: float, by: str) -> Change:
        """Move the canary to ``percent`` now (100: promoted). Refused: no_canary."""
        ...

    async def canary_promote(self, full: bool, by: str) -> Change:
        """The next step now; ``full``: the candidate in charge alone. Refused: no_canary."""
        ...

    async def canary_abort(self, reason: str, by: str, started: float) -> Change:
        """Stable takes the whole capital back. Refused: no_canary."""
        ...

    async def canary_status(self) -> dict[str, Any]:
        """The canary running (its step, split, stakes, the judge's table), how the last
        one ended."""
        ...

    async def snapshot(self, color: Color | None) -> dict[str, Any]:
        """Snapshot ``color`` (the one in charge when None) now: the stored snapshot's meta
        (refused: no_snapshot_capability, snapshot_failed, handoff_in_progress)."""
        ...

    def flags_list(self) -> list[dict[str, Any]]:
        """Every flag of ``[flags]``: schema, values set, each color's effective value."""
        ...

    def flags_get(self, name: str) -> dict[str, Any]:
        """One flag as in ``flags_list`` (refused: unknown_flag)."""
        ...

    async def flags_set(
        self, name: str, value: str, color: Color | None, reason: str, by: str
    ) -> dict[str, Any]:
        """Set ``name`` to ``value`` (as typed) for ``color`` or for all: old and new raw
        values (refused: unknown_flag, bad_value, kill_switch_global, redis_unavailable)."""
        ...

    async def flags_unset(
        self, name: str, color: Color | None, reason: str, by: str
    ) -> dict[str, Any]:
        """Remove ``name``'s value for ``color`` (or the global one)."""
        ...

    async def flags_history(self, name: str | None, count: int) -> list[dict[str, Any]]:
        """The latest changes from ``{ns}:flags:log``, newest first."""
        ...

    def gates_list(self, target: Color | None) -> list[dict[str, Any]]:
        """Every deploy gate for a deploy to ``target`` (the standby when None)."""
        ...

    async def deploy(
        self,
        color: Color,
        strategy: Literal["blue-green", "canary"],
        force: bool,
        reason: str | None,
        by: str,
    ) -> dict[str, Any]:
        """The gates, then the handoff and switch, or the canary's first step (refused:
        gates_closed, reason_required, deploy_in_progress, and the step's own)."""
        ...


@dataclass(frozen=True, slots=True)
class Context:
    """Handed to every command's server half."""

    deployment: DeploymentView
    request_shutdown: Callable[[str], None]
    by: str  # who asks: ``uid:N``, recorded with any flip it causes
