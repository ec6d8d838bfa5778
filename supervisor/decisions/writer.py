"""The daemon's side of the decision log: records made on the event loop, written by a thread.

**The hot path** (:meth:`DecisionLog.on_decision` and :meth:`DecisionLog.on_event`, the first
subscribers of ``decision``, ``execution``, ``outcome`` and ``error`` on the pipeline's bus)
builds the record, encodes it (orjson), hashes it into the chain (SHA-256) and appends the line
to a buffer in memory: about 3 µs, no system call, nothing that waits. A failure of its own
is counted and logged, never raised: the log must not blind the triggers after it on the bus.

**The writer** (:meth:`DecisionLog.run`, a loop of the deployment) takes whatever has
accumulated and writes it in one ``write`` from a thread of its own (a group commit), then
applies the fsync policy: ``interval`` fdatasyncs at most every ``fsync_interval_ms`` (a power
cut loses at most that much, a ``kill -9`` of the daemon only what was not written yet, at
most :data:`GATHER_S` of it), ``always`` fdatasyncs every batch before the next one is written
(records that come meanwhile form the next batch), ``never`` leaves it to the kernel. It
rotates the current file past ``rotate_bytes`` or ``rotate_age_s``, and gzips and prunes the
rotated ones in the background.

**Never lose a record silently.** When the disk fails (full, read-only, I/O errors) or falls
behind, records wait in memory up to ``max_buffer_bytes``; past that, new records are not
made but counted by kind, and once the disk takes the backlog a **gap record** says how many
of each kind were lost, and when. The alternative, backpressure (stop reading the children's
channels), was rejected: it would stall heartbeats and every trigger behind the log, so a
full disk would blind the guard and roll back a healthy candidate for silence; and the
permits, which move the money, already fail closed on a full disk (the permit journal).
The audit trail says exactly what it lacks instead. Either way it is alerted: the log line
``decision_log_write_failed`` and ``decision_log_gap``, the webhook, and the metrics
``agentsup_decision_log_write_failures_total{op}``, ``_failing``, ``_gaps_total`` and
``_dropped_records_total`` behind the ``DecisionLogWriteFailing`` and ``DecisionLogGap``
alerts. It recovers by itself: every second it tries the disk again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from supervisor import __version__
from supervisor.config import Color, Config, DecisionLogSection, effective
from supervisor.decisions import record
from supervisor.decisions.files import LogFile, LogFileError, Rotated, Tail
from supervisor.decisions.lookup import Lookups
from supervisor.decisions.maintenance import maintain
from supervisor.logs import BurstLog
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics

if TYPE_CHECKING:
    from supervisor.children.process import Child
    from supervisor.rollout import Change

log = get_logger("decision_log")

# How long the writer gathers records before a write (interval and never): the most a kill -9
# of the daemon can take with it. "always" does not wait: its batches are what came during
# the previous write and fdatasync.
GATHER_S: Final = 0.01
# A batch this large is written at once.
BATCH_BYTES: Final = 1 << 20
# A disk that failed is tried again this often.
RETRY_S: Final = 1.0
# The writer wakes at least this often while idle (rotation by age, a due fdatasync).
IDLE_S: Final = 1.0
# How long the last flush at shutdown may take before what is left is given up (and said).
CLOSE_TIMEOUT_S: Final = 10.0
# Kinds another feature may record (handoff, flag, deploy, ...): a word, not a daemon's own.
RECORD_KIND = re.compile(r"[a-z][a-z0-9_]{0,39}")

_dumps = orjson.dumps
_sha256 = hashlib.sha256
_now = time.time


class DecisionLog:
    """The decision log of one deployment (``[decision_log]``); a disabled one records
    nothing and costs nothing (it is never subscribed).

    ``told`` is the deployment's live mapping color → (role, epoch) last pushed; ``versions``
    each color's configured version; ``alert`` sends an alert (the webhook's body).
    """

    def __init__(
        self,
        cfg: DecisionLogSection,
        path: Path,
        *,
        metrics: Metrics,
        config_hash: str,
        told: Mapping[Color, tuple[str, int] | None],
        versions: Mapping[Color, str],
        alert: Callable[[dict[str, Any]], None],
        describe_start: Mapping[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.path = path
        self.enabled = cfg.enabled
        self.metrics = metrics
        self._config = config_hash
        self._told = told
        self._versions = dict(versions)
        self._alert = alert
        self._start_fields = dict(describe_start or {})
        self._run = os.urandom(6).hex()
        self._id_prefix = self._run + "-"  # an event's id: this run's, then its seq
        self._flags = dict.fromkeys(Color, record.flags_hash({}))
        self._always = cfg.fsync == "always"
        self._sync_s = cfg.fsync_interval_ms / 1000.0 if cfg.fsync == "interval" else None
        self._max = cfg.max_buffer_bytes
        self._wake_bytes = 0 if self._always else min(BATCH_BYTES, self._max // 2)
        # The chain as made on the loop: the last record's seq and hash.
        self.seq = 0
        self._prev = record.GENESIS
        # What waits for the disk, oldest first, and what is on it.
        # One buffer, not a list of lines: keeping a hundred thousand small bytes objects
        # alive makes each new one several times dearer to allocate.
        self._buf = bytearray()
        self._count = 0
        self._first_at: float | None = None  # the oldest waiting record's timestamp
        self.written_seq = 0
        self.written_hash = record.GENESIS
        self.synced_seq = 0
        # Records not made while the disk could not keep up, by kind, and since when.
        self._accepting = False  # True once open: the chain's head is known
        self._dropped: dict[str, int] = {}
        self._dropped_since: float | None = None
        self.dropped_total = 0
        self.gaps = 0
        self.failing: str | None = None  # the last failure while the disk fails
        self.last_execution: tuple[str, int] | None = None  # (key, seq) of the latest
        self._opened = False
        self._torn = b""
        self._file = LogFile(path, compress=cfg.compress == "gzip", keep=cfg.keep)
        self._io: ThreadPoolExecutor | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        # A write under way: its future and its batch (put back if it fails).
        self._inflight: tuple[asyncio.Future[None], _Batch] | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._last_sync = time.monotonic()
        self._own_failures = BurstLog()
        self._closed = False
        # The double-spend trigger's questions (supervisor/decisions/lookup.py).
        self.lookups = Lookups(self)

    @classmethod
    def for_config(
        cls,
        config: Config,
        metrics: Metrics,
        told: Mapping[Color, tuple[str, int] | None],
        alert: Callable[[dict[str, Any]], None],
    ) -> DecisionLog:
        """The log a deployment of ``config`` writes (``[decision_log]``)."""
        sup = config.supervisor
        return cls(
            config.decision_log,
            config.decision_log_path,
            metrics=metrics,
            config_hash=record.config_hash(effective(config)),
            told=told,
            versions={c: config.agents[c].version for c in Color},
            alert=alert,
            describe_start={
                "name": sup.name,
                "namespace": sup.namespace,
                "supervisor_version": __version__,
                "versions": {c.value: config.agents[c].version for c in Color},
            },
        )

    # the hooks other parts call --------------------------------------------------------------
    def set_flags(self, color: Color, values: Mapping[str, Any]) -> None:
        """The flags in force for ``color`` changed to ``values`` (its effective flags): the
        ``flags`` field of its records from now on. Until flags exist, the hash of none."""
        self._flags[color] = record.flags_hash(values)

    def record(
        self, kind: str, fields: Mapping[str, Any], *, color: Color | None = None
    ) -> int | None:
        """Record an event of another feature (``handoff``, ``flag``, ``deploy``...): one
        record of ``kind`` with ``fields`` (JSON values; none of the record's own names), for
        ``color`` when it concerns one. Returns its seq, or None when the log is off or the
        record had to be counted in a gap. Raises ``ValueError`` on a bad kind or field::

            deployment.decisions.record("flag", {"name": "crash_target", "value": 2.5})
        """
        if not RECORD_KIND.fullmatch(kind) or kind in record.KINDS:
            raise ValueError(f"{kind!r} is not a kind another feature may record")
        clash = record.RESERVED.intersection(fields)
        if clash:
            raise ValueError(f"fields {sorted(clash)} are the record's own")
        if not self.enabled:
            return None
        return self._make(kind, color, dict(fields))

    def change(self, change: Change) -> None:
        """A committed change of who acts (a flip) or of who is stable (a confirm)."""
        if not self.enabled:
            return
        kind = str(change.kind)
        fields: dict[str, Any] = {"reason": change.reason, "by": change.by}
        if kind == record.FLIP:
            fields = {"from": change.previous, "to": change.active, **fields}
            fields["trigger"] = change.trigger
            self._make(kind, change.active, fields, epoch=change.epoch, role="active")
        elif kind == record.CONFIRM:
            self._make(kind, change.active, {"stable": change.active, **fields}, epoch=change.epoch)
        else:  # a kind of change a later mode adds: recorded as it is called
            fields.update(active=change.active, previous=change.previous, trigger=change.trigger)
            self._make(kind, change.active, fields, epoch=change.epoch)

    # the hot path ------------------------------------------------------------------------
    def subscribers(self) -> dict[str, Callable[[Child, dict[str, Any]], None]]:
        """What the deployment subscribes, first, on the pipeline's bus: message type →
        subscriber (decisions have one of their own, the rest share :meth:`on_event`)."""
        return {
            t: self.on_decision if t == "decision" else self.on_event for t in record.LOGGED_TYPES
        }

    def on_decision(self, child: Child, msg: dict[str, Any]) -> None:
        """One ``decision`` record (the hot path: everything inline). Never raises."""
        if not self._accepting:
            self._drop("decision")
            return
        try:
            color = child.color
            told = self._told[color]
            if told is None:
                role = epoch = None
            else:
                role, epoch = told
            seq = self.seq + 1
            at = _now()
            rec = {
                "v": 1,
                "seq": seq,
                "id": self._id_prefix + str(seq),
                "timestamp": at,
                "kind": "decision",
                "color": color,
                "epoch": epoch,
                "role": role,
                "agent_version": child.cfg.version,
                "decision_type": msg["kind"],
                "decision_id": msg["id"],
                "inputs": msg["inputs"],
                "output": msg["output"],
                "reasoning": msg.get("reasoning") or "",
                "latency_ms": msg["latency_ms"],
                "flags": self._flags[color],
                "config": self._config,
                "prev": self._prev,
            }
            try:
                line = _dumps(rec)
            except orjson.JSONEncodeError:
                line = _dumps(record.unrecordable(rec))
            # _append, inline: a call is a tenth of this function's time.
            self._prev = _sha256(line).hexdigest()
            self.seq = seq
            buf = self._buf
            if not self._count:
                self._first_at = at
                self._wake.set()
            self._count += 1
            buf += line
            buf += b"\n"
            if len(buf) >= self._wake_bytes:
                self._wake.set()
                if len(buf) >= self._max:
                    self._stop_accepting()
        except Exception as exc:  # a bug of ours: counted, said, the bus goes on
            self._own_failure("decision", exc)

    def on_event(self, child: Child, msg: dict[str, Any]) -> None:
        """One record for a child's ``execution``, ``outcome`` or ``error``. Never raises."""
        mtype = msg["type"]
        if not self._accepting:
            self._drop(mtype)
            return
        try:
            seq = self._make(mtype, child.color, record.FIELDS_OF[mtype](msg))
            if mtype == "execution" and seq is not None:
                self.last_execution = (msg["key"], seq)
        except Exception as exc:  # a bug of ours: counted, said, the bus goes on
            self._own_failure(mtype, exc)

    def _make(
        self,
        kind: str,
        color: Color | None,
        fields: dict[str, Any],
        *,
        epoch: int | None = None,
        role: str | None = None,
    ) -> int | None:
        if not self._accepting:
            self._drop(kind)
            return None
        if color is not None and epoch is None:
            told = self._told[color]
            if told is not None:
                role, epoch = told
        seq = self.seq + 1
        at = _now()
        rec: dict[str, Any] = {
            "v": record.SCHEMA,
            "seq": seq,
            "id": self._id_prefix + str(seq),
            "timestamp": at,
            "kind": kind,
            "color": color,
            "epoch": epoch,
            "role": role,
            "agent_version": self._versions[color] if color is not None else None,
        }
        rec.update(fields)
        rec["flags"] = self._flags[color] if color is not None else None
        rec["config"] = self._config
        rec["prev"] = self._prev
        try:
            line = _dumps(rec)
        except (orjson.JSONEncodeError, TypeError):
            line = _dumps(record.unrecordable(rec))
        self._append(seq, line, at)
        return seq

    def _append(self, seq: int, line: bytes, at: float) -> None:
        self._prev = _sha256(line).hexdigest()
        self.seq = seq
        buf = self._buf
        if not self._count:
            self._first_at = at
            self._wake.set()
        self._count += 1
        buf += line
        buf += b"\n"
        if len(buf) >= self._wake_bytes:
            self._wake.set()
            if len(buf) >= self._max:
                self._stop_accepting()

    @property
    def _bytes(self) -> int:
        return len(self._buf)

    def _drop(self, kind: str) -> None:
        if not self.enabled:
            return
        if self._dropped_since is None:
            self._dropped_since = _now()
        self._dropped[kind] = self._dropped.get(kind, 0) + 1

    def _stop_accepting(self) -> None:
        self._accepting = False
        self._dropped_since = _now()
        log.error(
            "decision_log_behind",
            pending_bytes=self._bytes,
            max_buffer_bytes=self._max,
            failing=self.failing,
            hint="new records are counted, not kept, until the disk takes the backlog; a gap "
            "record will say how many",
        )

    def _own_failure(self, mtype: Any, exc: Exception) -> None:
        self._drop(str(mtype))
        suppressed = self._own_failures.should_log(time.monotonic())
        if suppressed is not None:
            log.error(
                "decision_log_record_failed",
                type=str(mtype),
                error=f"{type(exc).__name__}: {exc}"[:300],
                suppressed_since_last=suppressed,
                hint="a bug in the decision log: the event was counted in a gap, not recorded",
            )

    # life ----------------------------------------------------------------------------------
    async def open(self) -> None:
        """Find where the chain stands and write the ``start`` record. A disk that cannot be
        read or written now is tried again by :meth:`run`; meanwhile records are counted."""
        if not self.enabled or self._opened:
            return
        if self._io is None:
            self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decision-log")
        loop = asyncio.get_running_loop()
        try:
            tail: Tail = await loop.run_in_executor(self._io, self._file.open)
        except LogFileError as exc:
            self.failed(exc)
            return
        self._opened = True
        self.seq = self.written_seq = self.synced_seq = tail.seq
        self._prev = self.written_hash = tail.prev
        self._accepting = True
        fields: dict[str, Any] = {**self._start_fields, "pid": os.getpid(), "run": self._run}
        if tail.torn:
            fields["torn_tail_bytes"] = len(tail.torn)
            fields["torn_tail_sha256"] = hashlib.sha256(tail.torn).hexdigest()
            log.warning(
                "decision_log_torn_tail",
                path=str(self.path),
                bytes=len(tail.torn),
                after_seq=tail.seq,
                hint="the last write before this start was cut short (kill -9, a full disk); "
                "its bytes were removed and are named in the start record",
            )
        self._make(record.START, None, fields)
        self._gap_record()
        log.info("decision_log_opened", path=str(self.path), seq=tail.seq, head=tail.prev)
        if self.failing is not None:
            self._recovered()
        self._start_maintenance()

    async def run(self) -> None:
        """The writer: gather, write, fsync, rotate; forever (a loop of the deployment)."""
        if not self.enabled:
            return
        while True:
            if not self._opened:
                await asyncio.sleep(RETRY_S)
                await self.open()
                continue
            timeout = IDLE_S
            if self._sync_s is not None and self._file.dirty:
                timeout = max(0.0, self._last_sync + self._sync_s - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            if self._count and not self._always and self._bytes < self._wake_bytes:
                await asyncio.sleep(GATHER_S)  # let a batch gather
            self._wake.clear()
            ok = await self._write_pending()
            ok = ok and await self._sync_if_due()
            ok = ok and await self._rotate_if_due()
            if ok:
                if self.failing is not None:
                    self._recovered()
            else:
                await asyncio.sleep(RETRY_S)

    async def flush(self, within_s: float = 5.0) -> bool:
        """Wait until every record made so far is written (not necessarily synced); False
        when the disk did not take them within ``within_s``."""
        target = self.seq
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                while self.written_seq < target and self._opened:
                    self._progress.clear()
                    self._wake.set()
                    await self._progress.wait()
        return self.written_seq >= target

    async def close(self, reason: str = "stop") -> None:
        """The ``stop`` record, everything written and synced, the file closed. Bounded:
        a disk that hangs is given up on after :data:`CLOSE_TIMEOUT_S`, and said so."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._settle_inflight()
                if self._maintenance is not None:
                    with contextlib.suppress(Exception):
                        await self._maintenance
                if self._opened:
                    self._gap_record()
                    self._make(record.STOP, None, {"reason": reason})
                    self._accepting = False
                    for _ in range(3):
                        if await self._write_pending() and await self._sync(force=True):
                            break
        except TimeoutError:
            pass
        left = self._count + sum(self._dropped.values())
        if left:
            log.error(
                "decision_log_closed_with_records_lost",
                records=left,
                path=str(self.path),
                hint="the disk did not take the last records at shutdown",
            )
        log.info(
            "decision_log_head",
            path=str(self.path),
            seq=self.written_seq,
            head=self.written_hash,
            hint="an anchor for `agentsup decisions verify --head SEQ:HASH`",
        )
        io = self._io
        if io is not None:
            await asyncio.get_running_loop().run_in_executor(io, self._file.close)
            io.shutdown(wait=True)
            self._io = None

    # writing -----------------------------------------------------------------------------
    async def _write_pending(self) -> bool:
        if not self._count:
            return True
        batch = _Batch(self._buf, self._count, self.seq, self._prev, self._first_at or _now())
        self._buf, self._count, self._first_at = bytearray(), 0, None
        loop = asyncio.get_running_loop()
        assert self._io is not None
        fut = loop.run_in_executor(
            self._io, self._file.write, batch.data, batch.first_seq, batch.last_seq, batch.first_at
        )
        self._inflight = (fut, batch)
        try:
            await asyncio.shield(fut)
        except LogFileError as exc:
            self._inflight = None
            self._put_back(batch)
            self.failed(exc)
            return False
        self._inflight = None
        self._written(batch)
        return True

    def _written(self, batch: _Batch) -> None:
        self.written_seq, self.written_hash = batch.last_seq, batch.last_hash
        self.metrics.decision_log_records.inc(batch.count)
        self.metrics.decision_log_bytes.inc(len(batch.data))
        self.metrics.decision_log_pending.set(self._bytes)
        self._progress.set()
        if (
            not self._accepting
            and self._opened
            and not self._closed
            and self._bytes < self._max // 2
        ):
            self._accepting = True
            self._gap_record()

    def _put_back(self, batch: _Batch) -> None:
        # In front of what came meanwhile: the chain's order is the file's order.
        self._buf = batch.data + self._buf
        self._count += batch.count
        self._first_at = batch.first_at
        self.metrics.decision_log_pending.set(self._bytes)

    async def _settle_inflight(self) -> None:
        """A write cancelled mid-way (the daemon's stop cancels the writer) still runs in its
        thread: wait for it; its records go back in front if it failed."""
        if self._inflight is None:
            return
        fut, batch = self._inflight
        self._inflight = None
        try:
            await fut
        except LogFileError:
            self._put_back(batch)
            return
        self._written(batch)

    async def _sync_if_due(self) -> bool:
        if self._always or (
            self._sync_s is not None and time.monotonic() - self._last_sync >= self._sync_s
        ):
            return await self._sync()
        return True

    async def _sync(self, *, force: bool = False) -> bool:
        if not self._file.dirty or (not force and self.cfg.fsync == "never"):
            return True
        loop = asyncio.get_running_loop()
        assert self._io is not None
        synced = self.written_seq
        try:
            seconds = await loop.run_in_executor(self._io, self._file.sync)
        except LogFileError as exc:
            self.failed(exc)
            return False
        self._last_sync = time.monotonic()
        self.synced_seq = synced
        self.metrics.decision_log_fsync.observe(seconds)
        return True

    async def _rotate_if_due(self) -> bool:
        if not self._file.due(self.cfg.rotate_bytes, self.cfg.rotate_age_s, _now()):
            return True
        loop = asyncio.get_running_loop()
        assert self._io is not None
        try:
            rotated: Rotated = await loop.run_in_executor(self._io, self._file.rotate)
        except LogFileError as exc:
            self.failed(exc)
            return False
        self.synced_seq = self.written_seq
        log.info(
            "decision_log_rotated",
            file=rotated.path.name,
            first_seq=rotated.first,
            last_seq=rotated.last,
            head=self.written_hash,
        )
        self._start_maintenance()
        return True

    def _start_maintenance(self) -> None:
        """Gzip the rotated files and prune past ``keep``, in the background (one task at a
        time; what one misses the next one does)."""
        if self._maintenance is not None and not self._maintenance.done():
            return
        self._maintenance = asyncio.create_task(maintain(self), name="decision-log-maintenance")

    def retention(self, fields: dict[str, Any]) -> int | None:
        """The ``retention`` record, made before rotated files are removed (maintenance)."""
        return self._make(record.RETENTION, None, fields)

    @property
    def accepting(self) -> bool:
        """True while records are made (False: the disk is behind, they are counted)."""
        return self._accepting

    # failures ----------------------------------------------------------------------------
    def failed(self, exc: LogFileError, *, recovering: bool = True) -> None:
        self.metrics.decision_log_failures.labels(exc.op).inc()
        first = self.failing is None
        if recovering:
            self.failing = str(exc)
            self.metrics.decision_log_failing.set(1)
        if first or not recovering:
            log.error(
                "decision_log_write_failed",
                op=exc.op,
                error=str(exc),
                pending_bytes=self._bytes,
                hint="records wait in memory up to max_buffer_bytes, then are counted in a gap "
                "record; tried again every second",
            )
            self._alert(self._alert_body(f"the decision log cannot {exc.op}: {exc}", op=exc.op))

    def _recovered(self) -> None:
        log.info("decision_log_recovered", was=self.failing, pending_bytes=self._bytes)
        self.failing = None
        self.metrics.decision_log_failing.set(0)

    def _gap_record(self) -> None:
        """Write what was counted instead of recorded, as one ``gap`` record."""
        if not self._dropped:
            return
        counts, since = self._dropped, self._dropped_since
        self._dropped, self._dropped_since = {}, None
        total = sum(counts.values())
        self.dropped_total += total
        self.gaps += 1
        self.metrics.decision_log_dropped.inc(total)
        self.metrics.decision_log_gaps.inc()
        fields = {"count": total, "by_kind": counts, "since": since, "until": _now()}
        self._make(record.GAP, None, fields)
        log.error(
            "decision_log_gap",
            count=total,
            by_kind=counts,
            hint="these records were not written (the disk failed or fell behind); the gap "
            "record in the log says so",
        )
        self._alert(self._alert_body(f"the decision log lost {total} records (a gap)", count=total))

    def _alert_body(self, message: str, **extra: Any) -> dict[str, Any]:
        return {
            "trigger": "decision_log",
            "severity": "high",
            "action": "alert",
            "color": None,
            "message": message,
            "path": str(self.path),
            "at": _now(),
            **extra,
        }

    @property
    def opened(self) -> bool:
        """True once the chain's head is known (the files could be read at start)."""
        return self._opened

    # the double-spend trigger's last memory ---------------------------------------------------
    def mark(self, key: str) -> tuple[int | None, int] | None:
        """Called while the execution of ``key`` is being judged (the log recorded it first):
        (its own seq or None, the last seq made), what :class:`Query` needs; None when off."""
        if not self.enabled:
            return None
        last = self.last_execution
        return (last[1] if last is not None and last[0] == key else None), self.seq

    def describe(self) -> dict[str, Any]:
        """What ``status`` shows of the log."""
        return {
            "enabled": self.enabled,
            "path": str(self.path),
            "seq": self.seq,
            "written_seq": self.written_seq,
            "synced_seq": self.synced_seq,
            "head": self.written_hash,
            "pending_bytes": self._bytes,
            "failing": self.failing,
            "gaps": self.gaps,
            "dropped": self.dropped_total + sum(self._dropped.values()),
        }


@dataclass(frozen=True, slots=True)
class _Batch:
    """Records taken from the buffer for one write: the seq and hash of the last one."""

    data: bytearray
    count: int
    last_seq: int
    last_hash: str
    first_at: float  # the first record's timestamp

    @property
    def first_seq(self) -> int:
        return self.last_seq - self.count + 1
