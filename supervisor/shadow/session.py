"""One shadow run: who, since when, what it counted; and how a divergence is listed."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from supervisor.config import Color
from supervisor.guard.pnl import PnlSigma
from supervisor.shadow.compare import Comparators, Divergence
from supervisor.shadow.stats import Tally

# What the report lists of the inputs and outputs of a divergence: cut past this much JSON.
MAX_SHOWN_CHARS: Final = 2000
MAX_SHOWN_FIELDS: Final = 20


@dataclass(slots=True)
class Mirrored:
    """A live decision sent to the shadow, until its round's outcome is scored."""

    kind: str
    answered: bool = False
    outcome: dict[str, Any] | None = None  # the live outcome, waiting for the shadow's answer


@dataclass
class Session:
    """One shadow run: who, since when, what it counted."""

    color: Color  # the shadow
    live: Color  # the color in charge it shadows
    version: str
    live_version: str
    by: str
    started_at: float
    comparators: Comparators
    scoring: bool  # the shadow scores outcomes (its hello offers mirror_outcome)
    floor: bool  # the live color answers mirrors (the floor can be measured)
    problems: list[str] = field(default_factory=list)  # comparators the agents declared badly
    tally: Tally = field(default_factory=Tally)
    awaiting: OrderedDict[str, Mirrored] = field(default_factory=OrderedDict)
    stopped_at: float | None = None
    stop_reason: str | None = None
    # pnl_sigma run on the would-be PnL against the live rounds (None: no scoring), and the
    # round at which it would have rolled the shadow back, had it been in charge.
    detector: PnlSigma | None = None
    detector_fired: dict[str, Any] | None = None


def divergence(
    msg: dict[str, Any], output: Any, divergences: list[Divergence], kind: str, now: float
) -> dict[str, Any]:
    """A divergent mirror as the report lists it: the live decision (``msg``), the shadow's
    ``output``, the fields that differ."""
    return {
        "kind": kind,
        "decision_id": msg["id"][:200],
        "at": now,
        "fields": [
            {
                "field": d.field,
                "live": shown(d.live),
                "shadow": shown(d.shadow),
                "size": round(d.size, 6),
            }
            for d in divergences[:MAX_SHOWN_FIELDS]
        ],
        "inputs": shown(msg["inputs"]),
        "live_output": shown(msg["output"]),
        "shadow_output": shown(output),
    }


def shown(value: Any) -> Any:
    """``value`` as the report shows it: itself, or its JSON cut short when it is long."""
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)[:MAX_SHOWN_CHARS]
    if len(text) <= MAX_SHOWN_CHARS:
        return value
    return text[:MAX_SHOWN_CHARS] + "…"
