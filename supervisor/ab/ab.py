"""The A/B test of one deployment: started, watched, saved, reported and ended.

- **Start** (``ab start --flag NAME --a VALUE --b VALUE [--split PCT] [--min-rounds N]``):
  everything is checked first (both colors RUNNING the same version, no canary, shadow or
  handoff, the flag in ``[flags]`` and both values fitting its schema); then each color gets
  its own value of the flag through the :class:`~supervisor.flags.FlagBook` (pushed to the
  children, and in the flags' history with the operator and the reason ``ab test``); then one
  flip into the A/B mode (:mod:`supervisor.rollout.ab`): blue, arm A, acts within
  ``1 - split``, green, arm B, within ``split``, both fenced by the permit script.
- **Data**: the pipeline's ``execution`` (the stake) and ``outcome`` (the PnL) of each color,
  as the canary's judge hears them, go to the arms' running sums (:mod:`supervisor.ab.arms`).
- **Saved**: the test's settings live in the rollout record (Redis and state.json, as the
  canary's do); the running sums are written to the hash ``{ns}:ab`` and to
  ``state_dir/ab.json`` every ``[ab] save_interval_s`` while they change, and at a clean stop.
  A daemon started again over a running test takes them back (the copy with more rounds, of
  the same test), so a restart, even a kill -9, loses at most the last interval's rounds.
- **Stop** (``ab stop [--winner a|b]``): with a winner, its value becomes the global flag;
  both per-color values are removed (history); then one flip back to blue-green, blue in
  charge. The last test's report stays readable until the next one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from supervisor.ab.arms import ARMS, ArmName, Arms
from supervisor.ab.report import bands, build
from supervisor.arbiter.durable import DurableWriteError, write_atomically
from supervisor.children.process import Child, ChildState
from supervisor.config import Color, Config
from supervisor.errors import RedisUnavailable, Refused
from supervisor.flags.codec import FlagValueError, encode, parse_cli
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics
from supervisor.rollout import ab as ab_mode
from supervisor.rollout.state import AbState, Change, Mode

if TYPE_CHECKING:
    from supervisor.flags import FlagBook
    from supervisor.rollout import Rollout

log = get_logger("ab")

REASON = "ab test"


class AbTest:
    """The A/B test of one deployment; :meth:`attach` subscribes it to the pipeline's bus,
    :meth:`run` saves its sums while it runs."""

    def __init__(
        self,
        config: Config,
        *,
        rollout: Rollout,
        children: Mapping[Color, Child],
        flags: FlagBook,
        redis: Redis,
        metrics: Metrics,
        busy: Callable[[], str | None],
    ) -> None:
        self.cfg = config.ab
        self.config = config
        self.rollout = rollout
        self.children = children
        self.flags = flags
        self.redis = redis
        self.metrics = metrics
        self._busy = busy  # what else runs that an A/B test may not start under (or None)
        self.key = f"{config.supervisor.namespace}:ab"
        self.path: Path = config.supervisor.state_dir / "ab.json"
        self.arms: Arms | None = None  # the sums of the test running (or of the last one)
        self.last: AbState | None = None  # the settings of the test the sums are of
        self.ended: dict[str, Any] | None = None  # how the last test ended
        self.saved_rounds: dict[ArmName, int] = dict.fromkeys(ARMS, 0)
        self.saved_at: float | None = None
        self._lock = asyncio.Lock()
        for arm in ARMS:
            metrics.ab_rounds.labels(arm)

    def attach(self, pipeline: Any) -> None:
        """Subscribe to the pipeline's bus (``supervisor.pipeline.Pipeline``)."""
        pipeline.subscribe("execution", self._on_execution)
        pipeline.subscribe("outcome", self._on_outcome)

    # what the arms do ---------------------------------------------------------------------
    def _running(self) -> Arms | None:
        """The sums of the test in force now (None when none runs)."""
        s = self.rollout.state
        t = s.ab
        if s.mode is not Mode.AB or t is None:
            return None
        if self.arms is None or self.arms.test_id != t.since:
            self.arms, self.last, self.ended = Arms(t.since), t, None  # restarted elsewhere
        return self.arms

    @staticmethod
    def _arm(color: Color) -> ArmName:
        return "a" if color is Color.BLUE else "b"

    def _on_execution(self, child: Child, msg: dict[str, Any]) -> None:
        arms = self._running()
        if arms is not None:
            arms.execution(self._arm(child.color), msg["decision_id"], msg["amount"])

    def _on_outcome(self, child: Child, msg: dict[str, Any]) -> None:
        arms = self._running()
        if arms is not None:
            arm = self._arm(child.color)
            if arms.outcome(arm, msg["pnl"], msg.get("decision_id")):
                self.metrics.ab_rounds.labels(arm).inc()

    # what the operator asks ---------------------------------------------------------------
    async def start(
        self,
        flag: str,
        a: str,
        b: str,
        split: float | None,
        min_rounds: int | None,
        by: str,
    ) -> dict[str, Any]:
        """Refused: ab_in_progress, canary_in_progress, shadow_in_progress,
        handoff_in_progress, candidate_in_charge, nobody_in_charge, versions_differ,
        not_running, direct_permits, unknown_flag, kill_switch, bad_value, bad_split."""
        async with self._lock:
            s = self.rollout.state
            if s.mode is Mode.AB:
                raise Refused("ab_in_progress", "an A/B test runs already: `agentsup ab stop`")
            if s.mode is Mode.CANARY:
                raise Refused("canary_in_progress", f"{s.candidate} is in a canary")
            busy = self._busy()
            if busy is not None:
                code = "shadow_in_progress" if busy.startswith("shadow") else "handoff_in_progress"
                raise Refused(code, f"busy: {busy}")
            if s.active is None:
                raise Refused("nobody_in_charge", "no color acts: `agentsup switch` one first")
            if s.candidate is not None:
                raise Refused(
                    "candidate_in_charge",
                    f"{s.candidate} is in charge on probation: confirm or roll back first",
                )
            versions = self.rollout.versions
            if versions[Color.BLUE] != versions[Color.GREEN]:
                raise Refused(
                    "versions_differ",
                    f"an A/B test compares two settings of one version: blue runs "
                    f"{versions[Color.BLUE]}, green {versions[Color.GREEN]}",
                )
            for color, child in self.children.items():
                if child.state is not ChildState.RUNNING:
                    raise Refused("not_running", f"{color} is {child.state.value}, not RUNNING")
            if self.config.redis.child_access == "permit":
                raise Refused(
                    "direct_permits",
                    'an A/B test needs permits through the channel (redis.child_access = "permit")',
                )
            spec = self.flags.spec(flag)  # unknown_flag
            if spec.kill_switch:
                raise Refused("kill_switch", f"{flag} is a kill switch: it has no per-color value")
            raws = []
            for arm, text in (("a", a), ("b", b)):
                try:
                    raws.append(encode(spec, parse_cli(spec, text)))
                except FlagValueError as exc:
                    why = f"--{arm} {text!r}: {flag} ({spec.type}): {exc}"
                    raise Refused("bad_value", why) from None
            split = self.cfg.split if split is None else split
            if not 0 < split < 100:
                raise Refused("bad_split", f"--split {split:g}: B's percent, in (0, 100)")
            rounds = self.cfg.min_rounds if min_rounds is None else min_rounds
            test = ab_mode.started(
                flag,
                raws[0],
                raws[1],
                split=split,
                min_rounds=max(2, rounds),
                allowance=self.cfg.allowance,
                start_amount=self.cfg.start_amount,
                now=time.time(),
            )
            try:
                await self.flags.set(flag, raws[0], Color.BLUE, by, REASON)
                await self.flags.set(flag, raws[1], Color.GREEN, by, REASON)
                change = await self.rollout.ab_start(test, by)
            except Exception:
                with contextlib.suppress(Refused):
                    await self._remove_values(flag, by, "ab test not started")
                raise
            self.arms, self.last, self.ended = Arms(test.since), test, None
            self.saved_rounds, self.saved_at = dict.fromkeys(ARMS, 0), None
            await self._save(force=True)
            log.info(
                "ab_started",
                flag=flag,
                a=test.a,
                b=test.b,
                split=test.split,
                min_rounds=test.min_rounds,
                epoch=change.epoch,
                by=by,
            )
            return await self.report()

    async def arm_exited(self, color: Color, returncode: int) -> None:
        """An arm's process ended on its own (the supervisor restarts it): the arms no longer
        run side by side, and the other one was held at its share meanwhile. The test ends,
        with no winner; its sums stay for ``ab report``."""
        if self.rollout.state.mode is not Mode.AB:
            return
        arm = "a" if color is Color.BLUE else "b"
        why = f"ab_stop: arm {arm} ({color.value}) exited with {returncode}"
        log.warning("ab_arm_exited", arm=arm, color=color.value, returncode=returncode)
        try:
            await self.stop(None, "supervisor", why=why)
        except (Refused, RedisUnavailable) as exc:
            log.error(
                "ab_not_stopped", error=str(exc), hint="`agentsup ab stop` once Redis answers"
            )

    async def stop(self, winner: ArmName | None, by: str, why: str | None = None) -> dict[str, Any]:
        """Refused: no_ab (and redis_unavailable from the flags). ``why``: the flip's reason
        (by default the winner, or none)."""
        async with self._lock:
            s = self.rollout.state
            t = s.ab
            if s.mode is not Mode.AB or t is None:
                raise Refused("no_ab", "no A/B test is running")
            report = await self.report()  # the verdict as it stood when stopped
            value = None
            if winner is not None:
                value = t.a if winner == "a" else t.b
                await self.flags.set(t.flag, value, None, by, f"{REASON}: winner {winner}")
            await self._remove_values(t.flag, by, f"{REASON} ended")
            reason = why or (
                f"ab_stop: winner {winner} ({t.flag}={value})" if winner else "ab_stop: no winner"
            )
            change = await self.rollout.ab_stop(reason, by)
            self.ended = {
                "at": time.time(),
                "by": by,
                "winner": winner,
                "value": value,
                "epoch": change.epoch,
                "verdict": report["verdict"],
                "reason": reason,
            }
            await self._save(force=True)
            log.info(
                "ab_stopped",
                flag=t.flag,
                winner=winner,
                value=value,
                verdict=report["verdict"],
                rounds={a: x["rounds"] for a, x in report["arms"].items()},
                epoch=change.epoch,
                by=by,
            )
            return await self.report()

    async def _remove_values(self, flag: str, by: str, reason: str) -> None:
        for color in Color:
            await self.flags.unset(flag, color, by, reason)

    async def report(self) -> dict[str, Any]:
        """The report of the test running, or of the last one (refused: no_ab, none yet)."""
        arms = self._running()
        t = self.rollout.state.ab if arms is not None else self.last
        arms = arms or self.arms
        if arms is None or t is None:
            raise Refused("no_ab", "no A/B test has run since the daemon started")
        r = build(
            arms,
            flag=t.flag,
            a=t.a,
            b=t.b,
            split=t.split,
            min_rounds=t.min_rounds,
            alpha=self.cfg.alpha,
            n_star=self.cfg.n_star,
        )
        fence: dict[str, Any] | None = None
        with contextlib.suppress(RedisUnavailable, OSError):
            alloc = await self.rollout.arbiter.alloc()
            if alloc.get("since") == f"{t.since:.3f}":
                stakes = {c.value: float(alloc.get(f"stake_{c.value}") or 0) for c in Color}
                total = sum(stakes.values())
                fence = {
                    "stakes": stakes,
                    "share": {c: (v / total if total else None) for c, v in stakes.items()},
                    "in_force": alloc.get("mode") == "ab",
                }
        r.update(
            {
                "running": self.rollout.state.mode is Mode.AB and self.rollout.state.ab == t,
                "since": t.since,
                "seconds": round(time.time() - t.since, 3),
                "version": self.rollout.versions[Color.BLUE],
                "epoch": self.rollout.state.epoch,
                "fence": fence,
                "saved": {"rounds": dict(self.saved_rounds), "at": self.saved_at},
                "ended": self.ended,
            }
        )
        return r

    def describe(self) -> dict[str, Any] | None:
        """The status entry: the test running (None when none runs)."""
        t = self.rollout.state.ab
        arms = self._running()
        if t is None or arms is None:
            return None
        return {
            "flag": t.flag,
            "a": t.a,
            "b": t.b,
            "split": t.split,
            "since": t.since,
            "rounds": {arm: arms.arms[arm].rounds for arm in ARMS},
        }

    def on_change(self, change: Change) -> None:
        """After every committed change: a flip that ended the test (a switch, an adopted
        SET, a rollback) keeps its sums for the report."""
        if self.rollout.state.mode is not Mode.AB and self.arms is not None and self.ended is None:
            self.ended = {"at": time.time(), "by": change.by, "winner": None, "value": None}
            self.ended.update({"epoch": change.epoch, "reason": change.reason})

    # saved and restored ---------------------------------------------------------------------
    async def restore(self) -> None:
        """At daemon start, once the rollout is read: the running test's sums, from Redis or
        state_dir (the one with more rounds)."""
        t = self.rollout.state.ab
        if self.rollout.state.mode is not Mode.AB or t is None:
            return
        found: list[tuple[str, Arms]] = []
        with contextlib.suppress(RedisError, OSError):
            got = Arms.load(await self.redis.hget(self.key, "data"), t.since)
            if got is not None:
                found.append(("redis", got))
        with contextlib.suppress(OSError):
            got = Arms.load(await asyncio.to_thread(self.path.read_bytes), t.since)
            if got is not None:
                found.append(("state_dir", got))
        if not found:
            log.warning("ab_sums_not_found", flag=t.flag, hint="the arms count from zero again")
            self.arms, self.last = Arms(t.since), t
            return
        source, arms = max(found, key=lambda f: f[1].rounds)
        self.arms, self.last = arms, t
        self.saved_rounds = {a: arms.arms[a].rounds for a in ARMS}
        log.info("ab_restored", flag=t.flag, source=source, rounds=self.saved_rounds)

    async def run(self) -> None:
        """Save the sums every ``save_interval_s`` while they change (a sampled point of the
        series with each)."""
        while True:
            await asyncio.sleep(self.cfg.save_interval_s)
            await self._save()

    async def close(self) -> None:
        """At a clean stop: the last sums saved."""
        with contextlib.suppress(Exception):
            await self._save()

    async def _save(self, *, force: bool = False) -> None:
        arms, t = self.arms, self.last
        if arms is None or t is None or not (arms.changed or force):
            return
        arms.changed = False
        if arms.rounds:
            arms.point(
                time.time() - t.since, bands(arms, alpha=self.cfg.alpha, n_star=self.cfg.n_star)
            )
        data = arms.dump()
        rounds = {a: arms.arms[a].rounds for a in ARMS}
        saved = False
        try:
            await self.redis.hset(self.key, mapping={"data": data, "at": repr(time.time())})
            saved = True
        except (RedisError, OSError):
            arms.changed = True  # tried again on the next tick
        try:
            await asyncio.to_thread(write_atomically, self.path, data)
            saved = True
        except DurableWriteError as exc:
            log.warning("ab_save_failed", file=str(self.path), error=str(exc))
            arms.changed = True
        if saved:
            self.saved_rounds, self.saved_at = rounds, time.time()
