"""``decisions replay``: what would the standby have decided on the logged inputs?

Temporal's replayer re-runs a workflow's history against new code to find where the code no
longer does what it did. Here the logged decisions' ``inputs`` are sent to the standby color
as ``mirror`` requests (``Child.request``: decide, do not execute), and each ``mirror_result``
``output`` is compared with the logged ``output``: "what would v2 have done on yesterday's
decisions?", asked before v2 is deployed, of the process that would run it.

Outputs are compared as canonical JSON (keys sorted): equal, or a difference, listed with its
seq, the inputs, what was decided and what the standby answers. A mirror that times out is
counted as failed, not as a difference; a standby that goes away ends the replay there.
At most :data:`CONCURRENCY` mirrors are in flight, so that a replay of a day never floods the
standby's channel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from supervisor.decisions.record import canonical

if TYPE_CHECKING:
    from supervisor.children.process import Child

CONCURRENCY: Final = 8
MIRROR_TIMEOUT_S: Final = 5.0
# Differences and failures listed in full; the rest are counted.
MAX_LISTED: Final = 20


@dataclass
class ReplayReport:
    color: str  # the color that replayed
    version: str  # its version
    decisions: int = 0  # replayed
    same: int = 0
    different: int = 0
    failed: int = 0
    seconds: float = 0.0
    differences: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # why the replay ended early, if it did

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def replay(
    decisions: Sequence[dict[str, Any]],
    child: Child,
    *,
    mirror_timeout_s: float = MIRROR_TIMEOUT_S,
    concurrency: int = CONCURRENCY,
) -> ReplayReport:
    """Send each decision record's inputs to ``child`` as a mirror; compare the outputs."""
    from supervisor.children.process import ChildUnavailable

    report = ReplayReport(child.color.value, child.cfg.version)
    started = time.perf_counter()
    pending = iter(decisions)
    gone = asyncio.Event()

    async def worker() -> None:
        # Workers share one iterator: at most `concurrency` mirrors in flight, no task each.
        for rec in pending:
            if gone.is_set():
                return
            await one(rec)

    async def one(rec: dict[str, Any]) -> None:
        try:
            mirror = {"type": "mirror", "inputs": rec.get("inputs")}
            reply = await child.request(mirror, mirror_timeout_s)
        except TimeoutError:
            _failure(report, rec, f"no mirror_result within {mirror_timeout_s:g} s")
            return
        except ChildUnavailable as exc:
            if not gone.is_set():
                gone.set()
                report.stopped = f"{child.color} went away: {exc}"
            return
        report.decisions += 1
        replayed = reply.get("output")
        if _same(replayed, rec.get("output")):
            report.same += 1
            return
        report.different += 1
        report.differences.append(
            {
                "seq": rec.get("seq"),
                "timestamp": rec.get("timestamp"),
                "color": rec.get("color"),
                "agent_version": rec.get("agent_version"),
                "decision_type": rec.get("decision_type"),
                "decision_id": rec.get("decision_id"),
                "inputs": rec.get("inputs"),
                "decided": rec.get("output"),
                "replayed": replayed,
            }
        )

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    report.differences.sort(key=lambda d: d["seq"] if isinstance(d["seq"], int) else 0)
    del report.differences[MAX_LISTED:]
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _same(replayed: Any, decided: Any) -> bool:
    """Equal as canonical JSON (so 1.0 and 1 differ, as they would to a venue's API); values
    nested deeper than the encoder goes are compared as Python values."""
    try:
        return canonical(replayed) == canonical(decided)
    except orjson.JSONEncodeError:
        return bool(replayed == decided)


def _failure(report: ReplayReport, rec: dict[str, Any], why: str) -> None:
    report.failed += 1
    if len(report.failures) < MAX_LISTED:
        report.failures.append(
            {"seq": rec.get("seq"), "decision_id": rec.get("decision_id"), "why": why}
        )
