"""Prometheus metrics (contract: prefix ``agentsup_``, base units, counters end in ``_total``).

One :class:`Metrics` per daemon, on its own registry, so that a test or the demo can run a
daemon in-process without colliding with another. No label ever holds an id: ids go to the log.
Hot-path users bind their labelled children once (``metrics.decisions[color]``) instead of
calling ``.labels()`` per event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    start_http_server,
)

from supervisor import __version__
from supervisor.config import Color
from supervisor.protocol import ERROR_KINDS

COLORS = (Color.BLUE, Color.GREEN)
CHILD_STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")
PERMIT_REASONS = (
    "not_active",
    "stale_epoch",
    "duplicate",
    "unavailable",
    "over_allocation",
    "amount_required",
)
# Every reason a flip can have but a trigger's, exported at 0 from the start so that increase()
# sees the very first one; the triggers' (and their severities) come from the pipeline's
# registry (Metrics.declare_triggers).
FLIP_REASONS = (
    "start",
    "switch",
    "external",
    "restored",
    "restart",
    "epoch_regressed",
    "external_epoch",
    "manual",
    "canary_start",
    "canary_step",
    "canary_promote",
    "canary_abort",
    "ab_start",
    "ab_stop",
)
# The canary judge's metrics and verdicts (supervisor/rollout/judge.py), exported at 0.
CANARY_METRICS = ("return", "win_rate", "error_rate", "latency", "stake", "action_mix")
CANARY_VERDICTS = ("pass", "high", "low", "no_data", "inconclusive")
# Decision latency buckets, in seconds: agents decide in about a millisecond to a few seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A flip is one Lua call plus two socket writes: tens of microseconds to a few milliseconds.
FLIP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
# How late the event loop woke from a timer: about a millisecond when well, seconds when the
# whole process stood still (a VM freeze, SIGSTOP).
STALL_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# A handoff's phases (the labels of handoff_duration_seconds): each child request, the store,
# the flip, and ``window``, the whole time nobody may act (quiesce sent to new color told).
HANDOFF_PHASES = ("quiesce", "snapshot", "store", "restore", "flip", "window", "carry_back")
# How a handoff ended (handoffs_total{result}); carried_back/carry_back_* are the state going
# back to stable after a rollback.
HANDOFF_RESULTS = (
    "completed",
    "dry_run",
    "aborted",
    "refused",
    "finished_after_restart",
    "undone_after_restart",
    "carried_back",
    "carry_back_fallback",
    "carry_back_failed",
)
# From a few milliseconds (10 KB over a socketpair) to the tens of seconds a timeout allows.
HANDOFF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# What a write to the decision log can fail at (decision_log_write_failures_total{op}).
DECISION_LOG_OPS = ("open", "write", "sync", "rotate", "compress", "retention")
# An fdatasync of a batch: tens of microseconds on a fast SSD to seconds on a busy disk.
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5)


class Metrics:
    """Every metric the daemon exports, created on one registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "agentsup_"
        self.build_info = Gauge(
            p + "build_info", "Build of agent-supervisor", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
        self.active_epoch = Gauge(p + "active_epoch", "Current fencing epoch", registry=r)
        self.active = Gauge(
            p + "active", "1 for the color Redis says may act", ["color"], registry=r
        )
        self.child_role_active = Gauge(
            p + "child_role_active",
            "1 if the last role pushed to this color was active (two at once must never be)",
            ["color"],
            registry=r,
        )
        self.child_up = Gauge(
            p + "child_up", "1 while the color's process is RUNNING", ["color"], registry=r
        )
        self.child_state = Gauge(
            p + "child_state", "1 for the color's current state", ["color", "state"], registry=r
        )
        self.child_restarts = Counter(
            p + "child_restarts_total", "Restarts of a color's process", ["color"], registry=r
        )
        self.flips = Counter(
            p + "flips_total", "Changes of who may act, by reason", ["reason"], registry=r
        )
        self.rollbacks = Counter(
            p + "rollbacks_total", "Rollbacks to stable, by trigger", ["trigger"], registry=r
        )
        self.triggers_fired = Counter(
            p + "triggers_fired_total", "Triggers that fired", ["trigger", "severity"], registry=r
        )
        self.trigger_value = Gauge(
            p + "trigger_value",
            "A trigger's current value, in its own unit",
            ["trigger", "color"],
            registry=r,
        )
        self.trigger_threshold = Gauge(
            p + "trigger_threshold", "A trigger's threshold", ["trigger"], registry=r
        )
        self.decisions_c = Counter(
            p + "decisions_total", "Decisions reported", ["color"], registry=r
        )
        self.executions_c = Counter(
            p + "executions_total", "Executions (money moved) reported", ["color"], registry=r
        )
        self.permits_granted = Counter(p + "permits_granted_total", "Permits granted", registry=r)
        self.permits_denied = Counter(
            p + "permits_denied_total", "Permits refused, by reason", ["reason"], registry=r
        )
        self.decision_latency_h = Histogram(
            p + "decision_latency_seconds",
            "Decision latency reported by the agent",
            ["color"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.round_pnl_s = Summary(
            p + "round_pnl", "PnL of each finished round", ["color"], registry=r
        )
        self.shadow_divergences = Counter(
            p + "shadow_divergences_total",
            "Shadow decisions that differed from the live ones in a compared field, by "
            "decision kind (noise included: the report says which fields pass the floor)",
            ["kind"],
            registry=r,
        )
        self.shadow_mirrors = Counter(
            p + "shadow_mirrors_total",
            "Live decisions mirrored to the shadow, by result (answered, dropped: the queue "
            "was full, timeout, error: the shadow went away or answered garbage)",
            ["result"],
            registry=r,
        )
        self.shadow_executions = Counter(
            p + "shadow_executions_total",
            "Executions a shadow reported (critical: a shadow must never move money)",
            registry=r,
        )
        self.shadow_running = Gauge(
            p + "shadow_running", "1 while a color runs as the shadow", ["color"], registry=r
        )
        self.shadow_fields_diverging = Gauge(
            p + "shadow_fields_diverging",
            "Fields whose divergence rate passes the noise floor now, by decision kind",
            ["kind"],
            registry=r,
        )
        self.ab_rounds = Counter(
            p + "ab_rounds_total",
            "Rounds an A/B test's arm played (an outcome with its stake known), by arm (a: "
            "blue, b: green)",
            ["arm"],
            registry=r,
        )
        self.canary_allocation = Gauge(
            p + "canary_allocation", "Fraction of capital a color may use", ["color"], registry=r
        )
        self.canary_step = Gauge(
            p + "canary_step", "The canary's step, counted from 1 (0: no canary)", registry=r
        )
        self.canary_held = Gauge(
            p + "canary_held",
            "1 while a canary step has neither passed nor failed past min_seconds + hold_alert_s",
            registry=r,
        )
        self.canary_verdicts = Counter(
            p + "canary_verdicts_total",
            "The canary judge's verdicts, by metric (at each step's end, and a running "
            "look's failure)",
            ["metric", "verdict"],
            registry=r,
        )
        self.stake = Counter(
            p + "stake_total",
            "Money staked under permits granted through the daemon (their amount), by color",
            ["color"],
            registry=r,
        )
        self.flip_duration = Histogram(
            p + "flip_duration_seconds",
            "Verdict to flip committed and both children told",
            buckets=FLIP_BUCKETS,
            registry=r,
        )
        self.redis_up = Gauge(p + "redis_up", "1 while Redis answers", registry=r)
        self.protocol_errors = Counter(
            p + "protocol_errors_total", "Bad lines from a child", ["color", "kind"], registry=r
        )
        self.control_requests = Counter(
            p + "control_requests_total",
            "Control socket requests, by command and result",
            ["command", "result"],
            registry=r,
        )
        self.control_refused = Counter(
            p + "control_refused_total",
            "Control connections or requests refused",
            ["reason"],
            registry=r,
        )
        self.state_write_failures = Counter(
            p + "state_write_failures_total",
            "Writes to state_dir that failed "
            "(epoch reservation, state.json, permit journal, children.json)",
            ["file"],
            registry=r,
        )
        for what in ("epoch", "state", "journal", "children"):
            self.state_write_failures.labels(what)
        self.orphans_killed = Counter(
            p + "orphans_killed_total",
            "Processes a child set apart (setsid, double fork) killed once orphaned",
            registry=r,
        )
        self.lease_held = Gauge(
            p + "lease_held",
            "1 while this daemon holds its namespace's lease and lets its children act",
            registry=r,
        )
        self.probation_seconds = Gauge(
            p + "candidate_probation_seconds",
            "How long the candidate has been in charge (0: none)",
            registry=r,
        )
        self.probation_window = Gauge(
            p + "probation_window_seconds",
            "Probation a candidate must pass (0: operator confirms)",
            registry=r,
        )
        self.heartbeat_age = Gauge(
            p + "heartbeat_age_seconds",
            "Seconds since a color's last heartbeat (protocol agents)",
            ["color"],
            registry=r,
        )
        self.alerts_sent = Counter(
            p + "alerts_total", "Alerts raised, by trigger", ["trigger"], registry=r
        )
        self.webhook_failures = Counter(
            p + "webhook_failures_total",
            "Alerts the webhook did not accept after retries",
            registry=r,
        )
        self.loop_stall = Histogram(
            p + "loop_stall_seconds",
            "How much later than asked the event loop woke from the housekeeping timer",
            buckets=STALL_BUCKETS,
            registry=r,
        )
        self.loop_stalls = Counter(
            p + "loop_stalls_total",
            "Stalls of the daemon's own event loop long enough to move the children's clocks",
            registry=r,
        )
        self.handoff_duration = Histogram(
            p + "handoff_duration_seconds",
            "Time of each phase of a handoff; window: quiesce sent to the new color told active",
            ["phase"],
            buckets=HANDOFF_BUCKETS,
            registry=r,
        )
        self.handoffs = Counter(
            p + "handoffs_total", "Handoffs of state, by how they ended", ["result"], registry=r
        )
        self.snapshot_age = Gauge(
            p + "snapshot_age_seconds",
            "Age of the color's latest stored snapshot (since its taken_at); "
            "since the daemon started while it has none",
            ["color"],
            registry=r,
        )
        self.snapshot_bytes = Gauge(
            p + "snapshot_bytes",
            "Size of the color's latest stored snapshot (canonical JSON); 0: none",
            ["color"],
            registry=r,
        )
        self.snapshot_interval = Gauge(
            p + "snapshot_interval_seconds",
            "handoff.snapshot_interval_s: how often the acting color is snapshotted (0: off)",
            registry=r,
        )
        for phase in HANDOFF_PHASES:
            self.handoff_duration.labels(phase)
        for result in HANDOFF_RESULTS:
            self.handoffs.labels(result)

        # The decision log (supervisor/decisions): counted per batch, never per record.
        self.decision_log_records = Counter(
            p + "decision_log_records_total",
            "Records written to the decision log (gap records included)",
            registry=r,
        )
        self.decision_log_bytes = Counter(
            p + "decision_log_bytes_total", "Bytes written to the decision log", registry=r
        )
        self.decision_log_fsync = Histogram(
            p + "decision_log_fsync_seconds",
            "Time of each fdatasync of the decision log",
            buckets=FSYNC_BUCKETS,
            registry=r,
        )
        self.decision_log_gaps = Counter(
            p + "decision_log_gaps_total",
            "Gap records written: records the log could not keep, counted in one record",
            registry=r,
        )
        self.decision_log_dropped = Counter(
            p + "decision_log_dropped_records_total",
            "Records not written (counted in a gap record instead): the disk failed or fell "
            "behind by more than max_buffer_bytes",
            registry=r,
        )
        self.decision_log_failures = Counter(
            p + "decision_log_write_failures_total",
            "Failed operations on the decision log's files, by operation",
            ["op"],
            registry=r,
        )
        # Deploy gates (supervisor/gates): one gauge per gate, exported from the start.
        self.gate_open = Gauge(
            p + "gate_open",
            "1 while the deploy gate is open (a disabled gate counts as open)",
            ["gate"],
            registry=r,
        )
        self.deploys = Counter(
            p + "deploys_total",
            "agentsup deploy requests, by strategy and result (ok, refused by the gates, "
            "forced past closed gates, failed)",
            ["strategy", "result"],
            registry=r,
        )
        for strategy in ("blue-green", "canary"):
            for result in ("ok", "refused", "forced", "failed"):
                self.deploys.labels(strategy, result)
        # Feature flags (supervisor/flags): labelled by the schema's names, a bounded set.
        self.flag_changes = Counter(
            p + "flag_changes_total",
            "Flag values changed, by flag and by where (control: agentsup; redis: behind its back)",
            ["flag", "source"],
            registry=r,
        )
        self.flag_invalid_total = Counter(
            p + "flag_invalid_total",
            "Raw flag values found in Redis that do not fit the schema (the children kept the "
            "last good value)",
            ["flag"],
            registry=r,
        )
        self.flag_invalid = Gauge(
            p + "flag_value_invalid",
            "1 while a key of this flag holds a value that does not fit the schema",
            ["flag"],
            registry=r,
        )
        self.decision_log_failing = Gauge(
            p + "decision_log_failing",
            "1 while the decision log cannot write (records wait in memory, then are counted)",
            registry=r,
        )
        self.decision_log_pending = Gauge(
            p + "decision_log_pending_bytes",
            "Bytes of records waiting for the decision log's disk",
            registry=r,
        )
        for op in DECISION_LOG_OPS:
            self.decision_log_failures.labels(op)

        # Bound children for the hot path, and every label set touched once so that every
        # series exists from the first scrape (a missing series hides an alert).
        self.decisions = {c: self.decisions_c.labels(c.value) for c in COLORS}
        self.executions = {c: self.executions_c.labels(c.value) for c in COLORS}
        self.decision_latency = {c: self.decision_latency_h.labels(c.value) for c in COLORS}
        self.round_pnl = {c: self.round_pnl_s.labels(c.value) for c in COLORS}
        for c in COLORS:
            self.active.labels(c.value)
            self.child_role_active.labels(c.value)
            self.child_up.labels(c.value)
            self.child_restarts.labels(c.value)
            self.canary_allocation.labels(c.value)
            self.stake.labels(c.value)
            self.snapshot_age.labels(c.value)
            self.snapshot_bytes.labels(c.value)
            for kind in ERROR_KINDS:
                self.protocol_errors.labels(c.value, kind)
            for state in CHILD_STATES:
                self.child_state.labels(c.value, state)
        for reason in PERMIT_REASONS:
            self.permits_denied.labels(reason)
        self.rollbacks.labels("manual")
        self.rollbacks.labels("canary_judge")
        self.alerts_sent.labels("canary_judge")
        for metric in CANARY_METRICS:
            for verdict in CANARY_VERDICTS:
                self.canary_verdicts.labels(metric, verdict)
        for reason in FLIP_REASONS:
            self.flips.labels(reason)
        self.redis_up.set(0)
        self._server: WSGIServer | None = None

    def declare_triggers(self, severities: Mapping[str, str], rollbacks: Iterable[str]) -> None:
        """Export every trigger at 0 from the start: ``severities`` each trigger a verdict may
        name with its severity, ``rollbacks`` those that may roll back (a flip's reason)."""
        for trigger, severity in severities.items():
            self.triggers_fired.labels(trigger, severity)
            self.alerts_sent.labels(trigger)
        for trigger in rollbacks:
            self.rollbacks.labels(trigger)
            self.flips.labels(trigger)

    def set_child_state(self, color: Color, state: str) -> None:
        for s in CHILD_STATES:
            self.child_state.labels(color.value, s).set(1 if s == state else 0)
        self.child_up.labels(color.value).set(1 if state == "RUNNING" else 0)

    def set_active(self, active: Color | None, epoch: int) -> None:
        self.active_epoch.set(epoch)
        for c in COLORS:
            self.active.labels(c.value).set(1 if c is active else 0)
            # Blue-green: the color in charge may use all of the capital, the other none (a
            # canary sets its split right after: supervisor/rollout/stepper.py).
            self.canary_allocation.labels(c.value).set(1.0 if c is active else 0.0)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics endpoint in its own thread; returns the bound port."""
        self._server, _thread = start_http_server(port, host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
