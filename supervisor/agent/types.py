"""The values of the agent SDK: roles, permits, decisions, the state digest, hook signatures.

Nothing here touches the channel or Redis; :mod:`supervisor.agent.channel` and
:mod:`supervisor.agent.client` build on it, and :mod:`supervisor.agent` re-exports the public
names.
"""

from __future__ import annotations

import time
import traceback as _traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from supervisor.protocol import state_digest as _state_digest

if TYPE_CHECKING:
    from supervisor.agent.client import Agent


class Role(StrEnum):
    """What the supervisor lets this color do."""

    ACTIVE = "active"  # may act: its permits are granted
    STANDBY = "standby"  # warm, must not act (also the role after the channel is lost)
    CANARY = "canary"  # acts within its allocation
    SHADOW = "shadow"  # decides on mirrored inputs, never acts


class PermitReason(StrEnum):
    """Why a permit was granted or refused (the contract's closed set)."""

    OK = "ok"  # granted
    NOT_ACTIVE = "not_active"  # this color may not act (now)
    STALE_EPOCH = "stale_epoch"  # a newer epoch exists: someone else was put in charge since
    DUPLICATE = "duplicate"  # this idempotency key was already executed
    UNAVAILABLE = "unavailable"  # nobody could say yes (Redis or the supervisor unreachable)
    OVER_ALLOCATION = "over_allocation"  # canary: this stake would pass this color's share
    AMOUNT_REQUIRED = "amount_required"  # canary: say the stake (agent.permit(key, amount=...))


_REASONS: Final = {r.value: r for r in PermitReason}
_ROLES: Final = {r.value: r for r in Role}


@dataclass(frozen=True, slots=True)
class Permit:
    """The answer to :meth:`Agent.permit`; true only when granted.

    >>> refused = Permit(granted=False, reason=PermitReason.DUPLICATE, epoch=8, key="order-7")
    >>> bool(refused), refused.reason.value, refused.deadline
    (False, 'duplicate', None)
    """

    granted: bool
    reason: PermitReason
    epoch: int | None  # the epoch the permit was asked with (None: never asked)
    key: str
    # time.monotonic() past which the permit must not be acted on (None: not granted)
    deadline: float | None = field(default=None, compare=False)

    def __bool__(self) -> bool:
        return self.granted

    @property
    def client_order_id(self) -> str:
        """The idempotency key, to hand to the venue as its client order id wherever it
        takes one: then the venue itself refuses a second execution of the same key.

        >>> Permit(True, PermitReason.OK, 8, "order-7").client_order_id
        'order-7'
        """
        return self.key


def state_digest(state: Any) -> str:
    """The digest of a snapshot's state: lowercase hex SHA-256 of its canonical JSON (keys
    sorted, no spaces, UTF-8; :func:`supervisor.protocol.canonical`). The SDK reports it in
    ``restored`` for the state it received, before any migration; an agent may use it to
    check what it loaded::

        assert state_digest(state) == expected
    """
    return _state_digest(state)


class Decision:
    """One decision being made; returned by :meth:`Agent.decide`.

    Set :attr:`output` (and :attr:`reasoning`) inside the block; the decision is reported with
    its latency when the block ends::

        async with agent.decide("crash", {"target": 2.0}) as d:
            d.output = {"cash_out": 2.0}
        print(d.id, d.latency_ms)
    """

    __slots__ = ("_agent", "_t0", "id", "inputs", "kind", "latency_ms", "output", "reasoning")

    def __init__(self, agent: Agent, id: str, kind: str, inputs: Any) -> None:
        self._agent = agent
        self._t0 = 0.0
        self.id = id
        self.kind = kind
        self.inputs = inputs
        self.output: Any = None
        self.reasoning: str | None = None
        self.latency_ms: float | None = None

    async def __aenter__(self) -> Decision:
        self._t0 = time.perf_counter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.latency_ms = (time.perf_counter() - self._t0) * 1000.0
        if exc is None:
            self._agent.decision(
                self.id, self.kind, self.inputs, self.output, self.latency_ms, self.reasoning
            )
        elif isinstance(exc, Exception):
            # Cancellation and exits are how the agent stops, not bugs: only Exceptions count.
            text = "".join(_traceback.format_exception(exc_type, exc, tb))
            self._agent.error("exception", f"{type(exc).__name__}: {exc}", traceback=text)
        # Never swallow: the agent's own code decides what an exception means to it.


RoleCallback = Callable[[Role, int | None, float], object]
# (schema, state), or (schema, state, taken_at) for a state read before the call (unix s).
_Snap = tuple[Any, Any] | tuple[Any, Any, float]
SnapshotHook = Callable[[], _Snap | Awaitable[_Snap]]
# Its return value is not used (it once had to be the digest: the SDK now reports the digest
# of the state it received itself); raising refuses the restore.
RestoreHook = Callable[[Any, Any], object]
# The events the supervisor journaled since the snapshot being restored (after a rollback
# whose candidate could not give its state): executions, outcomes, escrows, each with its
# ``seq`` and ``at``.
ReplayHook = Callable[[list[dict[str, Any]]], object]
MirrorHook = Callable[[Any], Any]
PlainHook = Callable[[], object]
