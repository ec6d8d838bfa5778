"""One module per control command; each module's docstring documents its message.

A command module has an ``Args`` pydantic model (validated before anything runs) and
``async def run(daemon, args, *, by) -> result``; ``by`` names the operator (``uid:N``) for
the flip record. Refusals raise :class:`supervisor.errors.Refused` with a stable code.
"""

from __future__ import annotations

from types import ModuleType

from supervisor.control.commands import (
    confirm,
    restart,
    rollback,
    shutdown,
    status,
    switch,
    triggers,
)

COMMANDS: dict[str, ModuleType] = {
    "status": status,
    "switch": switch,
    "confirm": confirm,
    "rollback": rollback,
    "restart": restart,
    "shutdown": shutdown,
    "triggers": triggers,
}
