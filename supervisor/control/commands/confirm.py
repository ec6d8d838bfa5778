"""``confirm``: make the candidate in charge the stable color (ends its probation).

Request: ``{"cmd": "confirm"}``. Result: ``stable``, ``version``, ``epoch``.
Refused: ``no_candidate``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from supervisor.daemon import Daemon


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def run(daemon: Daemon, args: Args, *, by: str) -> dict[str, Any]:
    change = await daemon.rollout.confirm(by)
    assert change.active is not None
    return {
        "stable": change.active.value,
        "version": daemon.rollout.versions[change.active],
        "epoch": change.epoch,
    }
