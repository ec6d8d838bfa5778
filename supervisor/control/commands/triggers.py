"""``triggers``: every trigger, its threshold, and for both colors its current value, state and
when it last fired.

Request: ``{"cmd": "triggers"}``. Result: ``{trigger: {"severity", "enabled", "threshold",
"colors": {"blue": {"value", "state", "last_fired", ...}, "green": {...}}}}``; ``last_fired``
is unix time or null, ``state`` one of ok, alert, fired.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from supervisor.daemon import Daemon


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def run(daemon: Daemon, args: Args, *, by: str) -> dict[str, Any]:
    return daemon.pipeline.trigger_states(daemon.children, daemon.respond.fired)
