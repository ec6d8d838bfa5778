"""``rollback [--reason TEXT]``: return control to the stable color now.

Request: ``{"cmd": "rollback", "args": {"reason": "PnL looks off"}}``. Result: ``active``,
``epoch``, ``reason``. Refused: ``nothing_to_roll_back`` (stable is in charge already).
An operator's rollback does not reject the candidate's version; an automatic one does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from supervisor.daemon import Daemon


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, max_length=500)


async def run(daemon: Daemon, args: Args, *, by: str) -> dict[str, Any]:
    reason = f"manual: {args.reason}" if args.reason else "manual"
    change = await daemon.rollout.rollback(reason, by, trigger="manual", started=time.monotonic())
    assert change is not None
    return {
        "active": change.active.value if change.active else None,
        "epoch": change.epoch,
        "reason": reason,
    }
