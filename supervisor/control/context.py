"""What a control command sees of the daemon: the deployment it commands, and the way to ask
the daemon to stop. Nothing else (the Redis client, the arbiter, the metrics registry, the
event loop's tasks) is a command's business."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

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


@dataclass(frozen=True, slots=True)
class Context:
    """Handed to every command's server half."""

    deployment: DeploymentView
    request_shutdown: Callable[[str], None]
    by: str  # who asks: ``uid:N``, recorded with any flip it causes
