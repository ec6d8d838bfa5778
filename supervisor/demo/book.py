"""What the demo agent knows, the seed's state-migration checklist item by item, and how its
two schemas turn into each other.

Casino: the balance (checked against the venue on restore, never trusted from the cache),
the open bets (a crash bet stays open until the next round), the session id. Escrows: the
ids watched, their due times, their arbitrators. Trading: open positions with their entry
prices, the strategy's parameters, the recent signals (so as not to signal twice).
Operational: the rate-limit tokens, the last action time, the recent decisions (for
idempotency).

``demo/1`` (v1.x) keeps positions and escrows as lists; ``demo/2`` (v2.x) keys both by id and
gives each position its ``opened_at``. v2 registers the migration both ways: up when it takes
over from v1, down when a rollback gives v1 its state back.

>>> b = Book("blue", now=1000.0)
>>> b.open_position("BTC-PERP", 64000.0, 0.1, now=1001.0)
>>> v2 = up(b.state("demo/1"))
>>> v2["positions"]["BTC-PERP"]["entry"], down(v2) == b.state("demo/1")
(64000.0, True)
"""

from __future__ import annotations

import copy
from typing import Any, Final

SCHEMAS: Final = ("demo/1", "demo/2")
RECENT: Final = 50  # decisions kept for idempotency, the seed's "last 50"
SIGNALS: Final = 10
RATE_TOKENS: Final = 20.0  # the venue's bucket: 20 requests, refilled 10 a second
RATE_REFILL_S: Final = 10.0


class Book:
    """One color's state, in memory; :meth:`state` and :meth:`load` in either schema."""

    def __init__(self, color: str, *, now: float, escrow_due_s: float = 600.0) -> None:
        self.balance = 100.0
        self.session = f"{color}-session-1"
        self.open_bets: list[dict[str, Any]] = []
        self.escrows: list[dict[str, Any]] = [
            {"id": "escrow-1", "due_at": now + escrow_due_s, "arbitrator": "arb-7"},
            {"id": "escrow-2", "due_at": now + 2 * escrow_due_s, "arbitrator": None},
        ]
        self.positions: list[dict[str, Any]] = []
        self.params: dict[str, Any] = {"stake": 1.0, "crash_target": 2.0}
        self.signals: list[dict[str, Any]] = []
        self.rate_tokens = RATE_TOKENS
        self.last_action = now
        self.decisions: list[str] = []
        self.executed: list[str] = []  # idempotency keys executed, latest RECENT

    # -- what the rounds do -------------------------------------------------------------------
    def open_position(self, market: str, entry: float, size: float, *, now: float) -> None:
        self.positions.append({"market": market, "entry": entry, "size": size, "opened_at": now})
        self.signals = [*self.signals, {"market": market, "side": "long", "at": now}][-SIGNALS:]

    def decided(self, decision_id: str, key: str, now: float) -> None:
        self.decisions = [*self.decisions, decision_id][-RECENT:]
        self.executed = [*self.executed, key][-RECENT:]
        self.last_action = now
        self.rate_tokens = max(0.0, self.rate_tokens - 1.0)

    def refill(self, seconds: float) -> None:
        self.rate_tokens = min(RATE_TOKENS, self.rate_tokens + seconds * RATE_REFILL_S)

    # -- the schemas --------------------------------------------------------------------------
    def state(self, schema: str) -> dict[str, Any]:
        """The state in ``demo/1``; ``up()`` of it for ``demo/2``."""
        v1 = copy.deepcopy(
            {
                "casino": {
                    "balance": round(self.balance, 6),
                    "open_bets": self.open_bets,
                    "session": self.session,
                },
                "escrows": self.escrows,
                "trading": {
                    "positions": [
                        {k: p[k] for k in ("market", "entry", "size")} for p in self.positions
                    ],
                    "params": self.params,
                    "signals": self.signals,
                },
                "ops": {
                    "rate_tokens": round(self.rate_tokens, 3),
                    "last_action": self.last_action,
                    "decisions": self.decisions,
                    "executed": self.executed,
                },
            }
        )
        if schema == "demo/1":
            return v1
        v2 = up(v1)
        for p in self.positions:  # what demo/1 cannot hold
            v2["positions"][p["market"]]["opened_at"] = p.get("opened_at")
        return v2

    def load(self, schema: str, state: dict[str, Any]) -> None:
        v1 = down(state) if schema == "demo/2" else state
        opened = (
            {m: p.get("opened_at") for m, p in state.get("positions", {}).items()}
            if (schema == "demo/2")
            else {}
        )
        casino, trading, ops = v1["casino"], v1["trading"], v1["ops"]
        self.balance = float(casino["balance"])
        self.open_bets = list(casino["open_bets"])
        self.session = str(casino["session"])
        self.escrows = list(v1["escrows"])
        self.positions = [{**p, "opened_at": opened.get(p["market"])} for p in trading["positions"]]
        self.params = dict(trading["params"])
        self.signals = list(trading["signals"])
        self.rate_tokens = float(ops["rate_tokens"])
        self.last_action = float(ops["last_action"])
        self.decisions = list(ops["decisions"])
        self.executed = list(ops["executed"])

    def summary(self) -> str:
        markets = ",".join(p["market"] for p in self.positions) or "-"
        return (
            f"balance {self.balance:.2f}, {len(self.open_bets)} open bet(s), "
            f"{len(self.escrows)} escrow(s), {len(self.positions)} position(s) [{markets}], "
            f"{len(self.decisions)} recent decisions, {self.rate_tokens:.0f} rate tokens"
        )


def up(v1: dict[str, Any]) -> dict[str, Any]:
    """demo/1 -> demo/2: positions and escrows keyed by id (positions gain ``opened_at``)."""
    out = copy.deepcopy(v1)
    trading = out.pop("trading")
    out["positions"] = {p["market"]: {**p, "opened_at": None} for p in trading["positions"]}
    out["strategy"] = {"params": trading["params"], "signals": trading["signals"]}
    out["escrows"] = {e["id"]: {k: v for k, v in e.items() if k != "id"} for e in v1["escrows"]}
    return out


def down(v2: dict[str, Any]) -> dict[str, Any]:
    """demo/2 -> demo/1: the lists again (``opened_at`` is not in demo/1)."""
    out = copy.deepcopy(v2)
    positions = out.pop("positions")
    strategy = out.pop("strategy")
    out["trading"] = {
        "positions": [
            {"market": m, "entry": p["entry"], "size": p["size"]} for m, p in positions.items()
        ],
        "params": strategy["params"],
        "signals": strategy["signals"],
    }
    out["escrows"] = [{"id": i, **e} for i, e in v2["escrows"].items()]
    return out
