"""After the flip: the state going back to stable on a rollback, and a handoff that a
restart finds half done.

**A rollback after a handoff.** The candidate is fenced at once, as for any rollback (the
flip is the rollout's, in a millisecond). Stable, in charge again, is held: it is sent
``quiesce`` before its new role, so it takes no action until it holds the candidate's state:

1. from the candidate itself, within ``handoff.rollback_timeout_s``: quiesce, a snapshot in a
   schema stable reads (the newer agent migrates down), stored, restored into stable, the
   digests compared;
2. else (the candidate crashed, hangs, or cannot migrate down) from its latest snapshot that
   stable reads, or the handoff's own, plus every execution, outcome and escrow event the
   daemon journaled since (:mod:`supervisor.handoff.journal`), sent with the restore;
3. else stable acts on what it has, and the alert says so. Either way it is released
   (``resume``) at the end: the hold is bounded.

**At start**, over a record whose phase is before ``completed``: the new color in charge
means the flip had committed (*finished*), else it had not (*undone*); the color in charge
(a fresh process: the daemon's children die with it) is held until the stored snapshot is
restored into it. A record caught carrying the state back is finished from the journal.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from supervisor.arbiter.durable import DurableWriteError
from supervisor.config import Color
from supervisor.handoff import transfer
from supervisor.handoff.errors import HandoffFailed
from supervisor.handoff.record import HandoffRecord, Phase
from supervisor.handoff.snapshot import Snapshot, from_reply
from supervisor.logs import get as get_logger
from supervisor.rollout import Change

if TYPE_CHECKING:
    from supervisor.handoff.handoff import Handoffs

log = get_logger("handoff")


def on_change(h: Handoffs, change: Change) -> None:
    """Called for every committed change of who acts, before the roles are pushed."""
    if change.reason == "restored":  # Redis went back in time: the snapshots too, perhaps
        h.job(h.redis_back(), "snapshots-in-redis")
    rec = h.record
    if rec is None:
        return
    if change.kind == "confirm":
        if rec.phase is Phase.COMPLETED and change.active is rec.target:
            rec.phase = Phase.CONFIRMED
            h.journal.follow(None)
            h.carry_base = None
            h.job(h._write_quietly(rec), "handoff-record")
        return
    if (
        rec.phase is Phase.COMPLETED
        and change.active is rec.source
        and change.previous is rec.target
    ):
        rec.phase = Phase.CARRYING_BACK
        h.hold(rec.source, "carry_back")  # quiesced before its role says active
        h.job(carry_back(h, rec), "carry-back")


async def carry_back(h: Handoffs, rec: HandoffRecord) -> None:
    started = time.monotonic()
    await h._write_quietly(rec)
    stable = h.children[rec.source]
    why = ""
    try:
        try:
            snap = await _from_candidate(h, rec)
            how = "carried_back"
        except HandoffFailed as exc:
            why = f"the candidate did not give it ({exc.step}: {exc.reason}: {exc})"
            log.warning(
                "carry_back_from_candidate_failed",
                handoff=rec.id,
                step=exc.step,
                reason=exc.reason,
                message=str(exc),
                hint="falling back to its latest snapshot and the journal",
            )
            try:
                snap = await _from_journal(h, rec, fallback=True)
                how = "carry_back_fallback"
            except HandoffFailed as exc2:
                how = "carry_back_failed"
                why += f"; nor its latest snapshot with the journal ({exc2})"
    finally:
        h.release(rec.source)
        transfer.resume(h.children[rec.target])  # standby: ready for a later switch to it
    seconds = time.monotonic() - started
    h.metrics.handoff_duration.labels("carry_back").observe(seconds)
    h.metrics.handoffs.labels(how).inc()
    rec.phase = Phase.CARRIED_BACK
    rec.reason = f"{how}: {why}" if why else ""
    truncated = h.journal.truncated
    h.journal.follow(None)
    h.carry_base = None
    await h._write_quietly(rec)
    fields: dict[str, Any] = {
        "handoff": rec.id,
        "stable": rec.source,
        "how": how,
        "ms": round(seconds * 1000, 3),
    }
    if how == "carried_back":
        log.info("state_carried_back", digest=snap.digest, **fields)
        return
    if how == "carry_back_fallback":
        log.warning(
            "state_carried_back", digest=snap.digest, reason=why, truncated=truncated, **fields
        )
        h._alert(
            "warning",
            f"rolled back to {rec.source}: the state came from the "
            f"candidate's latest snapshot and the journal ({why})"
            + ("; the journal was truncated" if truncated else ""),
            rec.source,
        )
        return
    log.error(
        "state_not_carried_back",
        reason=why,
        **fields,
        hint=f"{stable.color} acts on the state it had before the handoff: audit "
        "the candidate's positions with the venue",
    )
    h._alert(
        "critical", f"rolled back to {rec.source} WITHOUT the candidate's state: {why}", rec.source
    )


async def _from_candidate(h: Handoffs, rec: HandoffRecord) -> Snapshot:
    """Step 1: a reverse handoff, all within ``rollback_timeout_s``."""
    cfg = h.cfg
    stable, cand = h.children[rec.source], h.children[rec.target]
    try:
        async with asyncio.timeout(cfg.rollback_timeout_s):
            await transfer.quiesce(cand, cfg.timeout_s)
            reply = await transfer.snapshot(
                cand,
                h.inbox,
                accept=transfer.reads(stable),
                within_s=cfg.timeout_s,
                max_bytes=cfg.max_bytes,
            )
            snap = from_reply(
                rec.target,
                cand.cfg.version,
                reply,
                max_bytes=cfg.max_bytes,
                max_age_s=cfg.max_age_s,
                handoff=rec.id,
            )
            try:
                snap = await h.store.save(snap, need_redis=False)
            except DurableWriteError as exc:
                raise HandoffFailed("store", "state_write_failed", str(exc)) from None
            await _restore(h, stable.color, snap, [])
    except TimeoutError:
        raise HandoffFailed(
            "carry_back",
            "timeout",
            f"no state from {rec.target} within handoff.rollback_timeout_s "
            f"({cfg.rollback_timeout_s:g} s)",
        ) from None
    return snap


def _base(h: Handoffs, rec: HandoffRecord) -> Snapshot | None:
    """What step 2 starts from: the candidate's latest snapshot stable reads, else the
    snapshot the handoff took of stable itself."""
    if h.carry_base is not None:
        return h.carry_base
    target = h.store.latest[rec.target]
    if rec.base and target is not None and target.id == rec.base:
        return target
    source = h.store.latest[rec.source]
    if source is not None and source.stored_at >= rec.started_at:
        return source
    return None


async def _from_journal(h: Handoffs, rec: HandoffRecord, *, fallback: bool) -> Snapshot:
    """Step 2: the base snapshot and the events journaled since, into stable."""
    base = _base(h, rec)
    if base is None:
        raise HandoffFailed("carry_back", "no_snapshot", "no snapshot to start from")
    events = h.journal.since(0)
    log.info(
        "carry_back_replay", handoff=rec.id, snapshot=base.id, events=len(events), fallback=fallback
    )
    await _restore(h, rec.source, base, events)
    return base


async def _restore(h: Handoffs, color: Color, snap: Snapshot, events: list[dict[str, Any]]) -> None:
    reported = await transfer.restore(
        h.children[color], snap, within_s=h.cfg.timeout_s, events=events
    )
    if reported != snap.digest:
        raise HandoffFailed(
            "verify",
            "digest_mismatch",
            f"{color} reports digest {reported[:16]}… for {snap.digest[:16]}… sent",
        )


# -- at start -------------------------------------------------------------------------------


def recover(h: Handoffs) -> None:
    """Once the rollout knows who acts, before the children start: finish or undo a handoff
    the previous daemon left half done, and hold the color in charge until its state is back
    in its (fresh) process."""
    rec = h.record
    if rec is None:
        return
    active = h.rollout.state.active
    if rec.phase is Phase.COMPLETED and active is rec.source:
        rec.phase = Phase.CARRYING_BACK  # rolled back while no daemon ran
    if rec.phase is Phase.CARRYING_BACK:
        h.journal.load(rec.target)
        log.warning(
            "carry_back_after_restart",
            handoff=rec.id,
            stable=rec.source,
            events=len(h.journal.events),
            hint="the daemon stopped while the state went back; finishing from the journal",
        )
        h.held[rec.source] = "carry_back"
        h.job(_carry_back_after_restart(h, rec), "carry-back")
        return
    undone = False
    if rec.phase.in_progress:
        phase = rec.phase
        if active is rec.target and not rec.dry_run:
            rec.phase = Phase.COMPLETED
            rec.reason = f"the daemon stopped while {phase}; the flip had committed: finished"
            result, event = "finished_after_restart", "handoff_finished_after_restart"
            hint = f"{rec.target} stays in charge; the handed state is restored into it"
        else:
            rec.phase = Phase.ABORTED
            rec.reason = f"the daemon stopped while {phase}, before the flip: undone at start"
            result, event = "undone_after_restart", "handoff_undone_after_restart"
            undone = True
            hint = f"{rec.source} stays in charge, its state restored if it had given it"
        log.warning(
            event,
            handoff=rec.id,
            phase=phase.value,
            source=rec.source,
            target=rec.target,
            active=active,
            hint=hint,
        )
        h.metrics.handoffs.labels(result).inc()
        h.job(h._write_quietly(rec), "handoff-record")
    if rec.phase is Phase.COMPLETED and active is rec.target:
        # The candidate's process is new: it gets the state it had, as a rollback would.
        h.journal.load(rec.target)
        base = _base(h, rec)
        if base is not None:
            _hold_until_restored(h, rec.target, base, h.journal.since(0))
    elif undone and active is rec.source:
        snap = h.store.latest[rec.source]
        if snap is not None and snap.id == rec.snapshot:
            # Quiesced since it gave this snapshot, it did nothing after: its exact state.
            _hold_until_restored(h, rec.source, snap, [])


def _hold_until_restored(
    h: Handoffs, color: Color, snap: Snapshot, events: list[dict[str, Any]]
) -> None:
    log.info("restoring_after_restart", color=color, snapshot=snap.id, events=len(events))
    h.held[color] = "restore after restart"  # quiesced at its hello, before its role
    h.job(_restore_after_restart(h, color, snap, events), "handoff-recover")


async def _await_hello(h: Handoffs, color: Color) -> None:
    child = h.children[color]
    wait_s = child.cfg.start_seconds + 3 * h.cfg.timeout_s + 30.0
    try:
        async with asyncio.timeout(wait_s):
            await h._hello[color].wait()
    except TimeoutError:
        raise HandoffFailed(
            "restore", "timeout", f"{color} did not say hello in {wait_s:g} s"
        ) from None


async def _restore_after_restart(
    h: Handoffs, color: Color, snap: Snapshot, events: list[dict[str, Any]]
) -> None:
    try:
        await _await_hello(h, color)
        await _restore(h, color, snap, events)
        log.info("state_restored_after_restart", color=color, snapshot=snap.id, digest=snap.digest)
    except HandoffFailed as exc:
        log.error(
            "state_not_restored_after_restart",
            color=color,
            snapshot=snap.id,
            reason=exc.reason,
            error=str(exc),
            hint=f"{color} acts on what it has",
        )
        h._alert(
            "critical",
            f"{color}'s stored state could not be restored after a restart: {exc}",
            color,
        )
    finally:
        h.release(color)


async def _carry_back_after_restart(h: Handoffs, rec: HandoffRecord) -> None:
    how, why = "carry_back_fallback", ""
    try:
        await _await_hello(h, rec.source)
        await _from_journal(h, rec, fallback=True)
    except HandoffFailed as exc:
        how, why = "carry_back_failed", str(exc)
        log.error(
            "state_not_carried_back",
            handoff=rec.id,
            reason=why,
            hint=f"{rec.source} acts on what it has: audit the candidate's positions",
        )
        h._alert("critical", f"{rec.source} acts WITHOUT the candidate's state: {why}", rec.source)
    finally:
        h.release(rec.source)
    h.metrics.handoffs.labels(how).inc()
    rec.phase = Phase.CARRIED_BACK
    rec.reason = how + (f": {why}" if why else " (after a restart)")
    h.journal.follow(None)
    await h._write_quietly(rec)
