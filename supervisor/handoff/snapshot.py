"""One snapshot: a color's state as the supervisor stores and restores it.

The state is kept as its canonical encoding (:func:`supervisor.protocol.canonical`): the bytes
the digest is taken over, stored as they are in Redis and in state_dir, and sent on as they
are (an ``orjson.Fragment``), so that a state is encoded once on its way through the daemon.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from supervisor import protocol
from supervisor.config import Color
from supervisor.handoff.errors import HandoffFailed


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A stored (or about to be stored) snapshot of ``color``'s state."""

    id: str
    color: Color  # whose state it is
    version: str  # that color's version when it was taken
    schema: Any  # the schema the state is in (the agent's word: usually "name/N")
    data: bytes  # the canonical encoding of the state
    digest: str  # protocol.digest(data)
    taken_at: float  # unix seconds, when the agent read its state (its clock: same host)
    stored_at: float = 0.0  # unix seconds, when it was acknowledged (0: not yet)
    handoff: str = ""  # the handoff it was taken for ("" for a periodic or on-demand one)

    @property
    def size(self) -> int:
        return len(self.data)

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.taken_at)

    def state(self) -> Any:
        return orjson.loads(self.data)

    def meta(self) -> dict[str, Any]:
        """Everything but the state: what status shows and what heads the stored copy."""
        return {
            "id": self.id,
            "color": self.color.value,
            "version": self.version,
            "schema": self.schema,
            "digest": self.digest,
            "bytes": self.size,
            "taken_at": self.taken_at,
            "stored_at": self.stored_at,
            "handoff": self.handoff,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], data: bytes) -> Snapshot:
        """The inverse of :meth:`meta`; raises ``ValueError`` when the data is not what the
        meta says (a torn or altered copy)."""
        try:
            snap = cls(
                id=str(meta["id"]),
                color=Color(meta["color"]),
                version=str(meta["version"]),
                schema=meta["schema"],
                data=data,
                digest=str(meta["digest"]),
                taken_at=float(meta["taken_at"]),
                stored_at=float(meta["stored_at"]),
                handoff=str(meta.get("handoff") or ""),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a snapshot's meta: {exc!r}") from None
        if protocol.digest(data) != snap.digest:
            raise ValueError(f"snapshot {snap.id}: its state does not match its digest")
        return snap


def from_reply(
    color: Color,
    version: str,
    reply: dict[str, Any],
    *,
    max_bytes: int,
    max_age_s: float,
    handoff: str = "",
) -> Snapshot:
    """The snapshot in a child's ``snapshot`` reply, checked: not refused, a state JSON can
    hold, at most ``max_bytes`` encoded, taken at most ``max_age_s`` ago (by ``taken_at``;
    a reply without one was taken now)."""
    if reply.get("error"):
        raise HandoffFailed(
            "snapshot", "refused", f"{color} could not take a snapshot: {reply['error']}"
        )
    now = time.time()
    taken_at = float(reply.get("taken_at") or now)
    try:
        data = protocol.canonical(reply["state"])
    except TypeError as exc:
        raise HandoffFailed("snapshot", "bad_state", f"{color}'s state is {exc}") from None
    if len(data) > max_bytes:
        raise HandoffFailed(
            "snapshot",
            "too_large",
            f"{color}'s state is {len(data)} bytes, over handoff.max_bytes ({max_bytes})",
        )
    age = now - taken_at
    if age > max_age_s:
        raise HandoffFailed(
            "snapshot",
            "stale",
            f"{color}'s snapshot was taken {age:.0f} s ago, over handoff.max_age_s "
            f"({max_age_s:g} s): too stale to restore safely",
        )
    return Snapshot(
        id=uuid.uuid4().hex[:16],
        color=color,
        version=version,
        schema=reply.get("schema"),
        data=data,
        digest=protocol.digest(data),
        taken_at=taken_at,
        handoff=handoff,
    )
