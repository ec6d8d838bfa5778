"""The simulated agent: ``python -m supervisor.demo.agent``, started by the supervisor.

While active it plays one round every ``AGENTSUP_DEMO_ROUND_S``: odd rounds are dice (roll
under 49.5 on 0..100, pays 1.98x: +0.98 or -1.0 on a stake of 1.0), even rounds crash (cash
out at the ``crash_target`` flag, 2.0x by default, which the crash point reaches with
probability 0.99 / target: +1.0 or -1.0). Both carry a 1 % house edge. Each round is a
decision, then a permit, then (only when granted) an execution and an outcome. It watches two
escrows from the start and checks them every ``AGENTSUP_DEMO_ESCROW_CHECK_S`` while active.
While standby it only answers mirror requests (the SDK sends its heartbeats). It prints one
short line per notable event; the daemon captures stdout into its log.

Environment (besides the supervisor's own ``AGENTSUP_*``):

- ``AGENTSUP_DEMO_SEED`` (7): seeds the dice; blue and green draw differently.
- ``AGENTSUP_DEMO_ROUND_S`` (0.05): the pause between rounds while active.
- ``AGENTSUP_DEMO_THINK_MS`` (2): the simulated decision time (the latency baseline).
- ``AGENTSUP_DEMO_KEYS`` (unique): ``unique`` keys are ``{color}-{version}-{pid}-{n}`` and
  never collide; ``order`` keys are ``order-{n}`` for both colors, so a key the other color
  already used is refused as duplicate and the round skipped.
- ``AGENTSUP_DEMO_ESCROW_CHECK_S`` (1.0): how often the escrows are checked while active.
- ``AGENTSUP_DEMO_ESCROW_DUE_S`` (600): escrow-1 is due this long after start, escrow-2 twice
  that; each is unwatched once released.
- ``AGENTSUP_DEMO_ESCROW_GAP_S`` (unset): the per-escrow ``gap_s`` sent with ``watch``.
- ``AGENTSUP_DEMO_DISPUTE`` (unset): ``FROM:UNTIL``, seconds after the agent started: the
  counterparty of escrow-1 disputes it for that while (the ``context`` the agent reports every
  second says ``disputes_open = 1``), so that a deploy is refused until it is settled.
- ``AGENTSUP_DEMO_BUG`` (none): the planted bug, below.
- ``AGENTSUP_DEMO_BUG_AFTER`` (5): the bug fires on active round ``BUG_AFTER + 1``.
- ``AGENTSUP_DEMO_VENUE_DIR`` (unset): the simulated venue's order book, shared by both colors
  (one file per client order id, created exclusively, and the account's balance); unset,
  each process keeps its own.
- ``AGENTSUP_DEMO_SCHEMA`` (1): the schema of its state, ``demo/1`` or ``demo/2``
  (:mod:`supervisor.demo.book`: the seed's checklist item by item); a ``2`` registers the
  migration from ``demo/1`` and back, as a v2 would.

Its state (snapshot, restore) is the seed's checklist: the balance (re-read from the venue on
restore, never trusted from the snapshot), open bets, session, escrows with due times and
arbitrators, positions with entry prices, strategy parameters, recent signals, rate-limit
tokens, the last action time, the recent decisions. Every fourth executed round opens a
position. The work between a permit and its outcome is in flight: a quiesce waits for it.

The simulated venue takes the permit's idempotency key as its client order id and refuses a
second order with the same id, whoever sends it, the way real exchanges do: the last line of
defence behind the permit. Right before placing an order the agent checks that its permit is
still good (``agent.still_valid``: before its deadline, no newer epoch pushed since).

The planted bugs (``n`` counts this process's rounds while active; "fires" means from round
``BUG_AFTER + 1`` on):

- ``exception``: the v2 payout table only knows the seed's ``coinflip``, so every round from
  then on raises ``KeyError`` inside its decision. The SDK reports an ``error`` of kind
  ``exception`` with the traceback; the round is abandoned (no permit, no execution) and the
  agent keeps running, the way an agent with a top-level "log and go on" loop does.
- ``auth``: reports one ``error`` of kind ``auth`` ("401 invalid API key") and stops acting
  (no more decisions, no escrow checks); it stays up, heartbeating and answering mirrors,
  and reports the auth error once more each time it is made active again.
- ``exit``: right after the permit of that round, the process dies with ``os._exit(3)``
  (mid-round, while acting: no execution or outcome is reported).
- ``silence``: the agent hangs: ``time.sleep(3600)`` blocks its event loop, so heartbeats stop
  (and SIGTERM is not honoured: the supervisor's SIGKILL ends it).
- ``drift``: every round loses with probability 0.9 (mean PnL about -0.8 per round instead of
  -0.02, a shift of about 0.8 per-round sigma).
- ``slow``: each decision takes ten times ``AGENTSUP_DEMO_THINK_MS``.
- ``double_spend``: uses the key ``order-{n}`` (the ``order`` scheme) and executes even when
  the permit is refused. When the key was fresh (granted) it "retries" the order: asks again
  (refused: duplicate), ignores that too and reports a second ``execution`` of the same key.
  So every buggy round reports an execution of a key already executed, by green alone, or
  across colors when the other color uses ``AGENTSUP_DEMO_KEYS=order``.
- ``escrow_gap``: stops checking its escrows (they stay watched).

Exit codes: 0 on SIGTERM/SIGINT or when the channel closes, 3 for the ``exit`` bug, 78 for a
bad ``AGENTSUP_DEMO_*`` value; 1 when started outside the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from supervisor.agent import Agent, Role
from supervisor.demo.book import SCHEMAS, Book, down, up
from supervisor.errors import NotSupervised

BUGS: Final = frozenset(
    {"none", "exception", "auth", "exit", "silence", "drift", "slow", "double_spend", "escrow_gap"}
)
STAKE: Final = 1.0
DICE_TARGET: Final = 49.5  # roll under, on 0..100
DICE_PAYS: Final = 1.98  # 1 % house edge: 0.495 * 1.98 = 0.9801
CRASH_EDGE: Final = 0.99  # P(crash point >= x) = 0.99 / x
# Every this many executed rounds the agent opens a (simulated) trading position.
POSITION_EVERY: Final = 4
EX_CONFIG: Final = 78


class BadSetting(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Settings:
    seed: int = 7
    round_s: float = 0.05
    think_ms: float = 2.0
    keys: str = "unique"
    escrow_check_s: float = 1.0
    escrow_due_s: float = 600.0
    escrow_gap_s: float | None = None
    bug: str = "none"
    bug_after: int = 5
    schema: str = "demo/1"
    dispute: tuple[float, float] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        def number(name: str, default: float, *, minimum: float = 0.0) -> float:
            text = env.get(f"AGENTSUP_DEMO_{name}", "")
            if not text:
                return default
            try:
                value = float(text)
            except ValueError:
                raise BadSetting(f"AGENTSUP_DEMO_{name}={text!r} is not a number") from None
            if value < minimum:
                raise BadSetting(f"AGENTSUP_DEMO_{name} must be at least {minimum}")
            return value

        bug = env.get("AGENTSUP_DEMO_BUG", "") or "none"
        if bug not in BUGS:
            raise BadSetting(f"AGENTSUP_DEMO_BUG={bug!r}: choose one of {sorted(BUGS)}")
        keys = env.get("AGENTSUP_DEMO_KEYS", "") or "unique"
        if keys not in ("unique", "order"):
            raise BadSetting(f"AGENTSUP_DEMO_KEYS={keys!r}: choose unique or order")
        gap = number("ESCROW_GAP_S", 0.0)
        schema = f"demo/{env.get('AGENTSUP_DEMO_SCHEMA', '') or '1'}"
        if schema not in SCHEMAS:
            raise BadSetting(f"AGENTSUP_DEMO_SCHEMA={schema[5:]!r}: choose 1 or 2")
        dispute = None
        if text := env.get("AGENTSUP_DEMO_DISPUTE", ""):
            try:
                start, end = (float(x) for x in text.split(":"))
            except ValueError:
                raise BadSetting(f"AGENTSUP_DEMO_DISPUTE={text!r}: FROM:UNTIL in seconds") from None
            dispute = (start, end)
        return cls(
            dispute=dispute,
            seed=int(number("SEED", 7)),
            round_s=number("ROUND_S", 0.05),
            think_ms=number("THINK_MS", 2.0),
            keys=keys,
            escrow_check_s=number("ESCROW_CHECK_S", 1.0, minimum=0.01),
            escrow_due_s=number("ESCROW_DUE_S", 600.0),
            escrow_gap_s=gap or None,
            bug=bug,
            bug_after=int(number("BUG_AFTER", 5)),
            schema=schema,
        )


def strategy(inputs: dict[str, Any]) -> dict[str, Any]:
    """What to bet on these inputs (pure, so a mirror answers exactly what acting would do)."""
    if inputs["game"] == "dice":
        return {"bet": "roll_under", "target": inputs["target"], "stake": inputs["stake"]}
    return {"bet": "cash_out", "at": inputs["target"], "stake": inputs["stake"]}


class Venue:
    """The simulated exchange: it refuses a second order with the same client order id.

    >>> venue = Venue(None)
    >>> venue.place("order-7"), venue.place("order-7")
    (True, False)
    """

    def __init__(self, directory: str | None) -> None:
        self.dir = directory
        self._seen: set[str] = set()
        self._balance = 100.0

    def balance(self) -> float | None:
        """The account's balance as the venue knows it (None: this venue keeps none)."""
        if self.dir is None:
            return None
        try:
            with open(os.path.join(self.dir, "balance")) as f:
                return float(f.read())
        except (OSError, ValueError):
            return 100.0

    def settle(self, pnl: float) -> None:
        if self.dir is None:
            return
        path = os.path.join(self.dir, "balance")
        with open(path + ".tmp", "w") as f:
            f.write(repr((self.balance() or 0.0) + pnl))
        os.replace(path + ".tmp", path)

    def place(self, client_order_id: str) -> bool:
        if self.dir is None:
            if client_order_id in self._seen:
                return False
            self._seen.add(client_order_id)
            return True
        name = hashlib.sha256(client_order_id.encode()).hexdigest()
        try:
            os.close(os.open(os.path.join(self.dir, name), os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        return True


class DemoAgent:
    """The rounds, the escrows and the planted bug of one color."""

    def __init__(self, agent: Agent, settings: Settings) -> None:
        self.agent = agent
        self.s = settings
        self.venue = Venue(os.environ.get("AGENTSUP_DEMO_VENUE_DIR") or None)
        self.rng = random.Random(f"{settings.seed}:{agent.color}")
        self.rounds = 0  # rounds started while active
        self.executed = 0
        self.pnl = 0.0
        self.denied = 0
        self.bug_lines = 0
        self.book = Book(agent.color, now=time.time(), escrow_due_s=settings.escrow_due_s)
        self.auth_reported_epoch: int | None = None
        self.last_role: tuple[Role, int | None] | None = None
        self.tag = f"[{agent.color} v{agent.version}]"

    def say(self, text: str) -> None:
        print(f"{self.tag} {text}", flush=True)

    def say_bug(self, text: str) -> None:
        # The first time and every 20th after: a bug that fires every round is one line a second.
        self.bug_lines += 1
        if self.bug_lines == 1 or self.bug_lines % 20 == 0:
            self.say(f"{text} [{self.bug_lines}x]" if self.bug_lines > 1 else text)

    def bug_on(self, bug: str) -> bool:
        return self.s.bug == bug and self.rounds > self.s.bug_after

    # ------------------------------------------------------------------ hooks

    def role_changed(self, role: Role, epoch: int | None, allocation: float) -> None:
        if (role, epoch) != self.last_role:
            self.last_role = (role, epoch)
            self.say(f"role {role} at epoch {epoch} (pnl {self.pnl:+.2f})")

    def snapshot(self) -> tuple[str, dict[str, Any]]:
        return self.s.schema, self.book.state(self.s.schema)

    def restore(self, schema: Any, state: Any) -> None:
        if schema != self.s.schema:
            raise ValueError(f"unknown snapshot schema {schema!r}")
        self.book.load(schema, state)
        # The seed: verify the balance with the venue, never trust a cached one.
        held = self.venue.balance()
        if held is not None and abs(held - self.book.balance) > 1e-6:
            self.say(
                f"balance from the venue {held:.2f} (the snapshot said {self.book.balance:.2f})"
            )
            self.book.balance = held
        self.say(f"restored {schema}: {self.book.summary()}")

    def replay(self, events: list[dict[str, Any]]) -> None:
        """What the other color did since the snapshot (the supervisor's journal)."""
        added = 0
        for event in events:
            if event.get("type") == "execution" and event["key"] not in self.book.executed:
                self.book.executed = [*self.book.executed, event["key"]][-50:]
                added += 1
        self.say(f"replayed {len(events)} events ({added} executions new to it)")

    # ------------------------------------------------------------------ rounds

    async def play(self) -> None:
        while await self.agent.wait_role(Role.ACTIVE):
            if self.s.bug == "auth" and self.rounds > self.s.bug_after:
                if self.auth_reported_epoch != self.agent.epoch:
                    self.auth_reported_epoch = self.agent.epoch
                    self.agent.error("auth", "401 invalid API key")
                    self.say("API answered 401 invalid API key: not acting any more")
                await self.agent.wait_role(Role.STANDBY)
                continue
            await self.one_round()
            await asyncio.sleep(self.s.round_s)

    def inputs(self, n: int) -> dict[str, Any]:
        if n % 2:
            return {"round": n, "game": "dice", "target": DICE_TARGET, "stake": STAKE}
        target = float(self.agent.flags.get("crash_target", 2.0))
        return {"round": n, "game": "crash", "target": target, "stake": STAKE}

    async def one_round(self) -> None:
        self.rounds += 1
        n = self.rounds
        inputs = self.inputs(n)
        if self.rounds == self.s.bug_after + 1 and self.s.bug != "none":
            self.say(f"round {n}: the planted bug {self.s.bug!r} fires")
        if self.bug_on("auth"):
            return  # play() reports it
        think = self.s.think_ms / 1000 * (10 if self.bug_on("slow") else 1)
        try:
            async with self.agent.decide(inputs["game"], inputs) as d:
                await asyncio.sleep(think * self.rng.uniform(0.5, 1.5))
                if self.bug_on("exception"):
                    payout_v2 = {"coinflip": 2.0}  # forgot dice and crash
                    d.reasoning = f"pays {payout_v2[inputs['game']]}x"
                d.output = strategy(inputs)
        except KeyError as exc:
            self.say_bug(f"round {n}: unhandled KeyError {exc} in the decision (reported)")
            return
        double_spend = self.bug_on("double_spend")
        if double_spend or self.s.keys == "order":
            key = f"order-{n}"
        else:
            key = f"{self.agent.color}-{self.agent.version}-{os.getpid()}-{n}"
        async with self.agent.in_flight():  # a quiesce waits for this round to finish
            await self.act(n, d.id, key, inputs, double_spend)

    async def act(
        self, n: int, decision_id: str, key: str, inputs: dict[str, Any], double_spend: bool
    ) -> None:
        self.book.open_bets = []  # the last round's crash bet is settled by now
        permit = await self.agent.permit(key)
        if self.bug_on("exit"):
            self.say(f"round {n}: crashing mid-round with exit code 3")
            os._exit(3)
        if self.bug_on("silence"):
            self.say(f"round {n}: hanging (event loop blocked, no more heartbeats)")
            time.sleep(3600)  # blocks the loop on purpose: that is the bug  # noqa: ASYNC251
        if not permit and not double_spend:
            self.denied += 1
            if self.denied == 1 or self.denied % 20 == 0:
                self.say(f"round {n}: permit refused ({permit.reason}); skipped")
            return
        if permit and not self.agent.still_valid(permit):
            self.say(f"round {n}: permit went stale before the order (a flip meanwhile)")
            return
        if not self.venue.place(key) and not double_spend:
            self.say(f"round {n}: the venue refused client order id {key!r} (a duplicate)")
            return
        self.agent.execution(decision_id, key, STAKE)
        if double_spend:
            if permit:  # a "retry" of an order that already went through
                again = await self.agent.permit(key)
                self.agent.execution(decision_id, key, STAKE)
                self.say_bug(f"round {n}: executed {key} twice (second permit: {again.reason})")
            else:
                self.say_bug(f"round {n}: executed {key} despite a refused {permit.reason}")
        pnl = self.settle(inputs)
        self.agent.outcome(pnl, decision_id=decision_id)
        self.executed += 1
        self.pnl += pnl
        now = time.time()
        self.venue.settle(pnl)
        self.book.balance += pnl
        self.book.decided(decision_id, key, now)
        if inputs["game"] == "crash":
            self.book.open_bets = [
                {"key": key, "game": "crash", "stake": STAKE, "target": inputs["target"]}
            ]
        if self.executed % POSITION_EVERY == 0:
            entry = round(60000 + self.rng.uniform(-500, 500), 2)
            self.book.open_position(f"BTC-{self.agent.color}-{n}", entry, 0.01, now=now)
        if self.executed % 20 == 0:
            self.say(f"{self.executed} rounds played, pnl {self.pnl:+.2f}")

    def settle(self, inputs: dict[str, Any]) -> float:
        stake = float(inputs["stake"])
        if inputs["game"] == "dice":
            win = self.rng.uniform(0.0, 100.0) < DICE_TARGET
            profit = stake * (DICE_PAYS - 1.0)
        else:
            target = float(inputs["target"])
            crash_point = CRASH_EDGE / (1.0 - self.rng.random())
            win = crash_point >= target
            profit = stake * (target - 1.0)
        if self.bug_on("drift"):
            win = self.rng.random() < 0.1
        return profit if win else -stake

    # ------------------------------------------------------------------ escrows

    async def report_context(self) -> None:
        """Every second, what the deploy gates look at: calm markets, and escrow-1's dispute
        while AGENTSUP_DEMO_DISPUTE says the counterparty holds it."""
        started = time.monotonic()
        was = 0
        while True:
            disputes = 0
            if self.s.dispute is not None:
                since = time.monotonic() - started
                disputes = int(self.s.dispute[0] <= since < self.s.dispute[1])
            if disputes != was:
                self.say("escrow-1 disputed by the counterparty" if disputes else "dispute settled")
                was = disputes
            self.agent.context(volatility=0.01, disputes_open=disputes, auto_releases=[])
            await asyncio.sleep(1.0 if self.s.dispute is None else 0.1)

    async def watch_escrows(self) -> None:
        for escrow in self.book.escrows:
            self.agent.escrow(
                escrow["id"], "watch", due_at=escrow["due_at"], gap_s=self.s.escrow_gap_s
            )
        while True:
            await asyncio.sleep(self.s.escrow_check_s)
            self.book.refill(self.s.escrow_check_s)
            # With a bad API key no escrow can be checked either.
            if not self.agent.is_active or self.bug_on("escrow_gap") or self.bug_on("auth"):
                continue
            now = time.time()
            for escrow in list(self.book.escrows):
                self.agent.escrow(escrow["id"], "check")
                if now >= escrow["due_at"]:
                    self.agent.escrow(escrow["id"], "unwatch")
                    self.book.escrows.remove(escrow)
                    self.say(f"{escrow['id']} released; no longer watched")


async def main(settings: Settings) -> int:
    agent = Agent.connect(schema=settings.schema)
    if settings.schema == "demo/2":  # a v2 knows how v1's state comes up, and goes back
        agent.migrations.register("demo/1", "demo/2", up=up, down=down)
    demo = DemoAgent(agent, settings)
    agent.on_role(demo.role_changed)
    agent.on_snapshot(demo.snapshot)
    agent.on_restore(demo.restore)
    agent.on_replay(demo.replay)
    agent.on_mirror(strategy)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with agent:
        demo.say(f"started (pid {os.getpid()}, seed {settings.seed}, bug {settings.bug})")
        async with asyncio.TaskGroup() as tg:
            work = [
                tg.create_task(demo.report_context(), name="demo-context"),
                tg.create_task(demo.play(), name="demo-rounds"),
                tg.create_task(demo.watch_escrows(), name="demo-escrows"),
            ]
            stopped = tg.create_task(stop.wait())
            lost = tg.create_task(agent.lost.wait())
            await asyncio.wait([stopped, lost], return_when=asyncio.FIRST_COMPLETED)
            for task in [*work, stopped, lost]:
                task.cancel()
        why = "channel to the supervisor closed" if agent.lost.is_set() else "asked to stop"
        demo.say(f"stopping: {why}; {demo.executed} rounds, pnl {demo.pnl:+.2f}")
    return 0


def run() -> None:
    try:
        settings = Settings.from_env(os.environ)
    except BadSetting as exc:
        print(f"demo agent: {exc}", file=sys.stderr)
        sys.exit(EX_CONFIG)
    try:
        code = asyncio.run(main(settings))
    except NotSupervised as exc:
        print(f"demo agent: {exc}", file=sys.stderr)
        code = 1
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    run()
