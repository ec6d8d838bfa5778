"""Stable and candidate: who is known good, who is on probation, and every change of who acts.

All changes go through :class:`Rollout`, under one lock, and each is one arbiter call that
also records the rollout fields in Redis, so a daemon killed with -9 and started again adopts
exactly what Redis holds. The rules:

- ``switch COLOR`` puts COLOR in charge; if it is not the stable color it becomes the
  candidate, on probation. An operator's switch also clears an earlier automatic rejection.
- ``confirm`` makes the acting candidate stable (an operator's word, or probation passed).
- ``rollback`` returns control to stable. After an *automatic* rollback the candidate's
  version is rejected: nothing automatic promotes it again until an operator switches to it.
- An operator's ``redis-cli SET`` of the active key is adopted like a switch (reason
  ``external``); a deleted key, or Redis come back empty, is restored (reason ``restored``);
  a value that is not a color leaves no one in charge (fail closed) until a switch.
- ``canary_start COLOR``: stable keeps the active key and acts with ``1 - allocation``, COLOR
  is the candidate and acts within ``allocation`` (:mod:`supervisor.rollout.canary`);
  ``canary_set``/``canary_promote`` move it to another step, ``canary_abort`` (or any
  automatic rollback) gives stable the whole capital back. Each is one flip that writes the
  split with the epoch. A switch, an adopted SET or a confirm-free full promotion ends it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from supervisor.arbiter.arbiter import AdoptStatus, Arbiter, FlipStatus, Observed
from supervisor.config import Color
from supervisor.errors import RedisUnavailable, Refused
from supervisor.logs import get as get_logger
from supervisor.rollout import ab, canary
from supervisor.rollout.state import AbState, CanaryState, Change, Mode, RolloutState, as_color
from supervisor.rollout.strategy import Assignment, Judged, Strategy, strategy_for

log = get_logger("rollout")


class Rollout:
    """The owner of who acts. ``on_change`` is called (synchronously, before the method
    returns) after every committed change: the daemon pushes roles from there."""

    def __init__(
        self, arbiter: Arbiter, versions: dict[Color, str], on_change: Callable[[Change], None]
    ) -> None:
        self.arbiter = arbiter
        self.versions = versions
        self._on_change = on_change
        self.state = RolloutState()
        self.lock = asyncio.Lock()
        # True while the executed keys are being put back into a Redis that forgot them:
        # the daemon grants no permit meanwhile.
        self.restoring = False
        # An automatic rollback that could not be committed (Redis down): applied first thing
        # when Redis answers again.
        self.pending: tuple[str, str, float] | None = None  # (reason, trigger, started)

    # reading: what the strategy of the current mode says -----------------------------------
    @property
    def strategy(self) -> Strategy:
        return strategy_for(self.state.mode)

    def assignment(self, color: Color) -> Assignment:
        """The role and allocation ``color`` is to be told."""
        return self.strategy.assignment(self.state, color)

    def role_of(self, color: Color) -> str:
        return self.assignment(color).role

    def judged(self, color: Color) -> Judged:
        """How the triggers judge ``color`` now: baseline, on trial, or neither."""
        return self.strategy.judged(self.state, color)

    def on_trial(self, color: Color) -> bool:
        """True when a verdict against ``color`` would roll it back."""
        return self.strategy.on_trial(self.state, color)

    def describe(self) -> dict[str, Any]:
        s = self.state
        c = s.canary
        return {
            "allocation": {color.value: self.assignment(color).allocation for color in Color},
            "canary_percent": c.percent if c is not None else None,
            "active": s.active.value if s.active else None,
            "epoch": s.epoch,
            "stable": s.stable.value,
            "candidate": s.candidate.value if s.candidate else None,
            "mode": s.mode.value,
            "probation_since": s.probation_since,
            "rejected": {c.value: v for c, v in s.rejected.items()},
            "pending_rollback": self.pending[0] if self.pending else None,
        }

    def may_promote_automatically(self, color: Color) -> bool:
        return self.strategy.may_promote(self.state, color, self.versions[color])

    # committing -------------------------------------------------------------------------
    async def _flip(
        self,
        to: Color | None,
        reason: str,
        by: str,
        nxt: RolloutState,
        *,
        expect: str | None = None,
        record_from: str | None = None,
        trigger: str | None = None,
        started: float | None = None,
        floor: int | None = None,
        reset_stakes: bool = False,
    ) -> Change:
        previous = self.state.active
        # The canary's split goes with every flip while one runs (at the new epoch: the fence
        # holds it only at its own epoch), and its end with the flip that ends it.
        alloc: dict[str, str] | None = None
        if nxt.mode is Mode.CANARY:
            alloc = canary.alloc_fields(nxt, reset=reset_stakes)
        elif nxt.mode is Mode.AB:
            alloc = ab.alloc_fields(nxt, reset=reset_stakes)
        elif self.state.mode in (Mode.CANARY, Mode.AB):
            alloc = canary.ended_fields(reason)
        flip = await self.arbiter.flip(
            to.value if to else None,
            reason,
            by,
            expect=expect,
            record_from=record_from,
            rollout=nxt.fields(),
            floor=floor,
            alloc=alloc,
        )
        if flip.status is FlipStatus.CONFLICT:
            # The key moved under us (an operator's SET in the same instant): re-read first.
            raise Refused("conflict", f"the active key changed to {flip.from_!r} meanwhile")
        nxt.active = as_color(flip.to)
        nxt.epoch = flip.epoch
        self.state = nxt
        change = Change("flip", nxt.active, previous, flip.epoch, reason, by, trigger, started)
        self._on_change(change)  # the roles go out first: the log line is not on the clock
        log.info(
            "flip",
            active=flip.to or None,
            previous=previous,
            epoch=flip.epoch,
            reason=reason,
            by=by,
            trigger=trigger,
            status=flip.status,
        )
        return change

    def _next(self) -> RolloutState:
        s = self.state
        return RolloutState(
            s.active,
            s.epoch,
            s.stable,
            s.candidate,
            s.probation_since,
            dict(s.rejected),
            s.mode,
            s.canary,
            s.ab,
        )

    @staticmethod
    def _end_canary(nxt: RolloutState, active: Color | None) -> None:
        """``nxt`` leaves canary mode with ``active`` in charge: a candidate in charge stays
        the candidate (on probation), one that is not goes back to standby."""
        if nxt.mode not in (Mode.CANARY, Mode.AB):
            return
        nxt.mode, nxt.canary, nxt.ab = Mode.BLUE_GREEN, None, None
        if nxt.candidate is not None and nxt.candidate is not active:
            nxt.candidate, nxt.probation_since = None, None

    async def start(self, initial: Color, by: str = "supervisor") -> Change:
        """At daemon start: adopt what Redis holds (or ``initial`` when it holds no color)
        and bump the epoch so that anything left over from before is fenced.

        Unless Redis is behind what this host knows (state.json, the permit journal): then
        Redis went back in time while we were away, and our own truth is put back instead,
        above the epoch reservation, after the executed keys."""
        async with self.lock:
            truth = await self.arbiter.read()
            known = self.arbiter.known
            if (
                truth.epoch < self.arbiter.seen
                or truth.seq < self.arbiter.seq
                or self.arbiter.restore_pending  # a restore not seen through: its counter lies
            ):
                # `seen` includes the last epoch any child was told (epoch.told), written
                # before every push: Redis is behind what our children heard.
                nxt = self._next()
                if known is not None:
                    nxt.load(known.rollout)
                    nxt.active = as_color(known.active)
                else:  # no state.json: Redis's record is all there is, above our epochs
                    nxt.load(truth.rollout)
                    nxt.active = as_color(truth.active) or nxt.stable
                self.state = nxt
                log.error(
                    "redis_regressed",
                    redis_epoch=truth.epoch,
                    known_epoch=self.arbiter.seen,
                    redis_seq=truth.seq,
                    known_seq=self.arbiter.seq,
                    hint="Redis went back in time; putting this host's truth back",
                )
                return await self._restore_truth(by)
            if truth.seq > self.arbiter.seq:
                # Grants this host never journaled (another daemon's, before it took over):
                # journal them now, or a later regression of Redis could not be set right.
                imported = await self.arbiter.import_grants(truth.seq)
                log.info("grants_imported", count=imported, seq=truth.seq)
            nxt = self._next()
            nxt.load(truth.rollout)
            held_by = as_color(truth.active)
            if nxt.mode is Mode.CANARY and (
                not canary.in_force(truth.alloc, truth.epoch, nxt.candidate)
                or held_by is not nxt.stable
            ):
                # Something else changed who acts while no daemon ran (an operator's SET, a
                # flip by an older version): the fence ended the canary then (it ignores a
                # split whose candidate holds the key); so do we.
                log.warning(
                    "canary_ended_while_away",
                    candidate=nxt.candidate,
                    hint="the split in Redis is not at the current epoch; stable takes all",
                )
                self._end_canary(nxt, as_color(truth.active))
            if nxt.mode is Mode.AB and (
                not ab.in_force(truth.alloc, truth.epoch, nxt.candidate)
                or held_by is not nxt.stable
            ):
                log.warning(
                    "ab_ended_while_away",
                    hint="the split in Redis is not at the current epoch; blue takes all",
                )
                self._end_canary(nxt, as_color(truth.active))
            if not truth.rollout.get("stable"):
                nxt.stable = as_color(truth.active) or initial
            observed = as_color(truth.active)
            if (
                observed is not None
                and observed is not nxt.stable
                and (nxt.candidate is not observed or nxt.probation_since is None)
            ):
                # Switched by hand while no daemon ran: that color is on probation (also a
                # canary's candidate, which had no probation clock while it was one).
                nxt.candidate, nxt.probation_since = observed, time.time()
            to = None if truth.active is not None else nxt.stable
            if truth.active is not None and observed is None:
                log.error(
                    "active_key_invalid",
                    value=truth.active,
                    hint="no color acts until `agentsup switch COLOR`",
                )
            return await self._flip(to, "start", by, nxt)

    async def _restore_truth(self, by: str) -> Change:
        """Redis forgot: put the executed keys back first, then who acts, at an epoch above
        the reservation (so above anything any child was ever told). Permits are refused
        meanwhile (``restoring``)."""
        self.restoring = True
        try:
            restored = await self.arbiter.restore_grants()
            s = self.state
            log.warning("grants_restored", count=restored, seq=self.arbiter.seq)
            return await self._flip(
                s.active or s.stable,
                "restored",
                by,
                self._next(),
                floor=self.arbiter.reservation.ceiling,
            )
        finally:
            self.restoring = False

    async def switch(self, color: Color, by: str, started: float | None = None) -> Change:
        async with self.lock:
            s = self.state
            if s.mode in (Mode.CANARY, Mode.AB):
                # An operator's switch ends a canary (or an A/B test): to stable (the candidate
                # stands by), or to the candidate (in charge alone, on probation, as after a
                # full promotion).
                nxt = self._next()
                self._end_canary(nxt, color)
                if color is not s.stable:
                    nxt.candidate, nxt.probation_since = color, time.time()
                    nxt.rejected.pop(color, None)
                return await self._flip(color, "switch", by, nxt, started=started)
            if s.active is color:
                raise Refused("already_active", f"{color} is already in charge (epoch {s.epoch})")
            nxt = self._next()
            if color is s.stable:
                nxt.candidate = None
                nxt.probation_since = None
            else:
                nxt.candidate = color
                nxt.probation_since = time.time()
                nxt.rejected.pop(color, None)
            return await self._flip(color, "switch", by, nxt, started=started)

    async def confirm(self, by: str) -> Change:
        async with self.lock:
            s = self.state
            if s.candidate is None or s.active is not s.candidate:
                raise Refused("no_candidate", "no candidate is in charge to confirm")
            nxt = self._next()
            nxt.stable, nxt.candidate, nxt.probation_since = s.candidate, None, None
            nxt.rejected.pop(s.candidate, None)
            await self.arbiter.save_rollout(nxt.fields())
            self.state = nxt
            change = Change("confirm", nxt.active, nxt.active, nxt.epoch, "confirm", by)
            log.info("confirmed", stable=nxt.stable, version=self.versions[nxt.stable], by=by)
            self._on_change(change)
            return change

    async def rollback(
        self,
        reason: str,
        by: str,
        *,
        trigger: str | None = None,
        automatic: bool = False,
        color: Color | None = None,
        started: float | None = None,
    ) -> Change | None:
        """Return control to stable. ``automatic`` rollbacks (a trigger fired) reject the
        candidate's version and are a no-op unless ``color`` is still the acting candidate."""
        async with self.lock:
            s = self.state
            if automatic:
                judged = color if color is not None else s.candidate
                if judged is None or not self.on_trial(judged):
                    return None
            if s.active is s.stable and s.candidate is None:
                raise Refused("nothing_to_roll_back", f"{s.stable} is stable and in charge")
            target, nxt = self._rolled_back(reject=automatic)
            try:
                return await self._flip(target, reason, by, nxt, trigger=trigger, started=started)
            except RedisUnavailable:
                if automatic:
                    self.pending = (reason, trigger or "", started or time.monotonic())
                    log.error(
                        "rollback_pending",
                        reason=reason,
                        hint="Redis is unreachable; applied as soon as it answers",
                    )
                raise

    def _rolled_back(self, *, reject: bool) -> tuple[Color, RolloutState]:
        """Where a rollback goes and the state after it; an automatic one (``reject``) also
        rejects the candidate's version, so nothing automatic promotes it again."""
        s = self.state
        nxt = self._next()
        if reject and s.candidate is not None:
            nxt.rejected[s.candidate] = self.versions[s.candidate]
        nxt.candidate, nxt.probation_since = None, None
        nxt.mode, nxt.canary = Mode.BLUE_GREEN, None  # a canary rolled back is aborted
        nxt.ab = None  # and an A/B test ended
        return self.strategy.rollback_target(s), nxt

    # the canary ------------------------------------------------------------------------
    async def canary_start(
        self,
        color: Color,
        steps: tuple[float, ...],
        by: str,
        *,
        allowance: float = 0.01,
        start_amount: float = 0.0,
    ) -> Change:
        """Give ``color`` the first step's share of the capital; stable keeps the rest and
        the active key. Refused: canary_in_progress, candidate_in_charge (confirm or roll it
        back first), already_active, nobody_in_charge."""
        async with self.lock:
            s = self.state
            if s.mode is Mode.CANARY:
                raise Refused("canary_in_progress", f"{s.candidate} is already in a canary")
            if s.mode is Mode.AB:
                raise Refused("ab_in_progress", "an A/B test runs: `agentsup ab stop` first")
            if s.active is None:
                raise Refused("nobody_in_charge", "no color acts: `agentsup switch` one first")
            if s.candidate is not None:
                raise Refused(
                    "candidate_in_charge",
                    f"{s.candidate} is in charge on probation: confirm or roll back first",
                )
            if s.active is color:
                raise Refused("already_active", f"{color} is in charge (epoch {s.epoch})")
            nxt = self._next()
            nxt.mode, nxt.candidate, nxt.probation_since = Mode.CANARY, color, None
            nxt.rejected.pop(color, None)  # an operator's word, as a switch is
            nxt.canary = canary.started(steps, allowance, start_amount, time.time())
            return await self._flip(
                None, f"canary_start: {steps[0]:g}%", by, nxt, reset_stakes=True
            )

    async def canary_set(self, percent: float, by: str, why: str = "set") -> Change:
        """Move the canary to ``percent`` of the capital now (its stakes count from zero, the
        epoch rises: a permit asked under the old split is refused); 100 promotes it.
        Refused: no_canary."""
        async with self.lock:
            return await self._canary_move(percent, by, why)

    async def canary_promote(
        self,
        by: str,
        *,
        full: bool = False,
        why: str = "promote",
        expect_since: float | None = None,
    ) -> Change:
        """The next step now (``full``: straight to 100 %, the candidate in charge alone on
        probation). ``expect_since``: the step the caller judged (a judge's promotion is
        refused, ``step_changed``, when the step moved meanwhile). Refused: no_canary."""
        async with self.lock:
            c = self._canary()
            if expect_since is not None and c.since != expect_since:
                raise Refused("step_changed", "the step moved since it was judged")
            nxt_percent = 100.0 if full or c.step + 1 >= len(c.steps) else c.steps[c.step + 1]
            return await self._canary_move(nxt_percent, by, why)

    async def _canary_move(self, percent: float, by: str, why: str) -> Change:
        """A new step at ``percent`` (under the lock)."""
        c = self._canary()
        if percent >= 100.0:
            return await self._promote_full(by, why)
        nxt = self._next()
        nxt.canary = dataclasses.replace(
            c, step=canary.step_index(c.steps, percent), percent=percent, since=time.time()
        )
        return await self._flip(
            None, f"canary_step: {percent:g}% ({why})", by, nxt, reset_stakes=True
        )

    async def canary_abort(
        self,
        reason: str,
        by: str,
        *,
        automatic: bool = False,
        trigger: str | None = None,
        started: float | None = None,
    ) -> Change | None:
        """Stable takes the whole capital back in one flip. ``automatic`` (the judge) rejects
        the candidate's version, as an automatic rollback does, and is a no-op when no canary
        runs any more. Refused: no_canary."""
        async with self.lock:
            s = self.state
            if s.mode is not Mode.CANARY:
                if automatic:
                    return None
                raise Refused("no_canary", "no canary is running")
            target, nxt = self._rolled_back(reject=automatic)
            return await self._flip(target, reason, by, nxt, trigger=trigger, started=started)

    def _canary(self) -> CanaryState:
        c = self.state.canary
        if self.state.mode is not Mode.CANARY or c is None:
            raise Refused("no_canary", "no canary is running")
        return c

    async def _promote_full(self, by: str, why: str) -> Change:
        """The last step: the candidate in charge alone, on probation (under the lock)."""
        s = self.state
        candidate = s.candidate
        assert candidate is not None
        nxt = self._next()
        nxt.mode, nxt.canary = Mode.BLUE_GREEN, None
        nxt.probation_since = time.time()
        return await self._flip(candidate, f"canary_promote: 100% ({why})", by, nxt)

    # the A/B test (supervisor/rollout/ab.py) ------------------------------------------------
    async def ab_start(self, test: AbState, by: str) -> Change:
        """Blue (arm A) keeps the active key with ``1 - allocation``, green (arm B) acts
        within ``allocation``; both run one version, so blue is made stable. One flip.
        Refused: canary_in_progress, ab_in_progress, nobody_in_charge, candidate_in_charge."""
        async with self.lock:
            s = self.state
            if s.mode is Mode.CANARY:
                raise Refused("canary_in_progress", f"{s.candidate} is in a canary")
            if s.mode is Mode.AB:
                raise Refused("ab_in_progress", "an A/B test runs already: `agentsup ab stop`")
            if s.active is None:
                raise Refused("nobody_in_charge", "no color acts: `agentsup switch` one first")
            if s.candidate is not None:
                raise Refused(
                    "candidate_in_charge",
                    f"{s.candidate} is in charge on probation: confirm or roll back first",
                )
            nxt = self._next()
            nxt.mode, nxt.ab, nxt.canary = Mode.AB, test, None
            nxt.stable, nxt.candidate, nxt.probation_since = Color.BLUE, Color.GREEN, None
            reason = f"ab_start: {test.flag} a={test.a} b={test.b} split {test.split:g}%"
            return await self._flip(Color.BLUE, reason[:200], by, nxt, reset_stakes=True)

    async def ab_stop(self, reason: str, by: str) -> Change:
        """End the A/B test: blue in charge alone, green stands by. One flip. Refused: no_ab."""
        async with self.lock:
            if self.state.mode is not Mode.AB:
                raise Refused("no_ab", "no A/B test is running")
            nxt = self._next()
            nxt.mode, nxt.ab = Mode.BLUE_GREEN, None
            nxt.stable, nxt.candidate, nxt.probation_since = Color.BLUE, None, None
            return await self._flip(Color.BLUE, reason[:200], by, nxt)

    async def bump(self, reason: str, by: str = "supervisor") -> Change:
        """Raise the epoch without changing who acts (the acting child restarted)."""
        async with self.lock:
            return await self._flip(
                None,
                reason,
                by,
                self._next(),
                expect=self.state.active.value if self.state.active else None,
            )

    async def reconcile(self) -> Change | None:
        """Re-read the truth and act on any difference: a pending rollback, an operator's
        SET, a deleted key, an epoch that moved. Called on a keyspace hint, after a
        reconnect and on a timer."""
        async with self.lock:
            if self.pending is not None:
                reason, trigger, started = self.pending
                target, nxt = self._rolled_back(reject=True)
                change = await self._flip(
                    target, reason, "guard", nxt, trigger=trigger or None, started=started
                )
                self.pending = None
                return change
            s = self.state
            observed = await self.arbiter.adopt(s.epoch, s.stable.value)
            if observed.status is AdoptStatus.SAME:
                return None
            if observed.status is AdoptStatus.ADOPTED:
                return self._adopted(observed)
            if observed.status is AdoptStatus.REGRESSED or (
                # Redis names another owner of the very epoch we hold: it is not our history.
                observed.epoch == s.epoch
                and observed.active == observed.owner
                and as_color(observed.active) is not s.active
            ):
                log.error(
                    "redis_regressed",
                    redis_epoch=observed.epoch,
                    known_epoch=s.epoch,
                    redis_seq=observed.seq,
                    known_seq=self.arbiter.seq,
                    hint="Redis went back in time; putting this host's truth back",
                )
                return await self._restore_truth("supervisor")
            return await self._changed(observed)

    def _adopted(self, observed: Observed) -> Change:
        """The script adopted an operator's SET: mirror what it wrote."""
        s = self.state
        color = as_color(observed.active)
        assert color is not None
        nxt = self._next()
        nxt.active, nxt.epoch = color, observed.epoch
        self._end_canary(nxt, color)  # the script bumped the epoch: the fence ended it already
        if color is s.stable:
            nxt.candidate, nxt.probation_since = None, None
        else:
            nxt.candidate, nxt.probation_since = color, time.time()
            nxt.rejected.pop(color, None)
        previous = s.active
        self.state = nxt
        change = Change("flip", color, previous, observed.epoch, "external", "redis")
        self._on_change(change)  # the roles go out first: the log line is not on the clock
        log.info(
            "flip",
            active=color,
            previous=previous,
            epoch=observed.epoch,
            reason="external",
            by="redis",
            status="adopted",
        )
        return change

    async def _changed(self, observed: Observed) -> Change | None:
        s = self.state
        known = s.active.value if s.active else None
        if observed.active is None:
            # Deleted, or Redis came back empty: put back what we know (the epoch still
            # rises past the on-disk mark).
            return await self._flip(s.active or s.stable, "restored", "supervisor", self._next())
        color = as_color(observed.active)
        if color is None:
            if s.active is None and observed.epoch == s.epoch:
                return None  # already adopted this invalid value
            log.error(
                "active_key_invalid",
                value=observed.active,
                hint="no color acts until `agentsup switch COLOR`",
            )
            nxt = self._next()
            self._end_canary(nxt, None)
            return await self._flip(
                None,
                "external",
                "redis",
                nxt,
                expect=observed.active,
                record_from=known or "",
            )
        if observed.owner != observed.active or color is not s.active:
            nxt = self._next()
            self._end_canary(nxt, color)
            if color is s.stable:
                nxt.candidate, nxt.probation_since = None, None
            else:
                nxt.candidate, nxt.probation_since = color, time.time()
                nxt.rejected.pop(color, None)
            return await self._flip(
                None, "external", "redis", nxt, expect=observed.active, record_from=known or ""
            )
        if observed.epoch > s.epoch:
            if s.mode in (Mode.CANARY, Mode.AB):
                # The split holds only at its own epoch: write it again above this one.
                return await self._flip(
                    None, "external_epoch", "redis", self._next(), expect=observed.active
                )
            # Someone else raised the epoch (an operator's INCRBY): adopt it, once it is
            # covered by the reservation on disk (else the children keep the old one, whose
            # permits are refused as stale: fail closed).
            await self.arbiter.reserve(observed.epoch)
            self.arbiter.seen = max(self.arbiter.seen, observed.epoch)
            previous = s.active
            self.state.epoch = observed.epoch
            change = Change("flip", s.active, previous, observed.epoch, "external_epoch", "redis")
            log.warning("epoch_adopted", epoch=observed.epoch)
            self._on_change(change)
            return change
        return None
