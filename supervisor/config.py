"""The TOML configuration: validated once at start, every error named by its field path.

Pydantic lives here, at the edge. Everything downstream gets frozen models and never checks
a value twice. Secrets (the Redis password) come from the environment, never from the file.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import tomllib
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from supervisor.errors import ConfigError
from supervisor.gates.settings import GatesSection

EX_CONFIG = 78


class Color(StrEnum):
    """A slot that runs one version of the agent."""

    BLUE = "blue"
    GREEN = "green"

    @property
    def other(self) -> Color:
        return Color.GREEN if self is Color.BLUE else Color.BLUE


class _Model(BaseModel):
    # TOML spells `inf` and `nan`; neither is a duration or a threshold anyone means.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Upper bounds on every number that reaches timers, backoff or arithmetic: past them a value is
# a typo, and let through it would surface at run time as an OverflowError (asyncio timers,
# Redis PX, JSON output) instead of as a field path at start.
MAX_COUNT = 1_000_000
DAY_S = 24 * 3600
Seconds = Annotated[float, Field(gt=0, le=30 * DAY_S)]
# Socket timeouts and polling intervals: past an hour the daemon would be blind, not patient.
ShortSeconds = Annotated[float, Field(gt=0, le=3600)]
# Dimensionless tuning (sigmas, CUSUM allowances): far above any value that could fire.
Factor = Annotated[float, Field(gt=0, le=1e6)]
# PnL per round, in the agent's own money unit.
Money = Annotated[float, Field(ge=-1e15, le=1e15)]
Uid = Annotated[int, Field(ge=0, le=2**32 - 2)]  # (uid_t)-1 means "no uid" to the kernel

# Redis glob metacharacters (SCAN MATCH, ACL key patterns); `{tag}` hash tags are fine.
_GLOB_CHARS = frozenset("*?[]\\")
# The seed's feature flags live at `flag:{name}` (docs/redis.md), outside any namespace.
FLAG_PREFIX = "flag:"
# The one key under `{ns}:` an active_key may be: the seed's `agent:active_version`.
SEED_ACTIVE_NAME = "active_version"
# What the daemon itself keeps in state_dir (arbiter/durable.py and the rest): no decision log
# may be written over one of them.
_STATE_FILES = frozenset(
    {
        "epoch",
        "epoch.told",
        "state.json",
        "permits.journal",
        "children.json",
        "lock",
        "redis.sock",
        "dump.rdb",
        "appendonlydir",
        "handoff.json",
        "handoff-events.jsonl",
        "snapshots",
        "flags.json",
        "ab.json",
    }
)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Query parameters a Redis client may take as the password (redis-py passes unknown ones on).
_PASSWORD_PARAMS = frozenset({"password", "requirepass", "auth", "pass", "passwd"})


def _key_safe(v: str) -> str:
    if any(c in _GLOB_CHARS or c.isspace() or not c.isprintable() for c in v):
        raise ValueError(
            "must not contain whitespace, control characters or the glob characters "
            "* ? [ ] \\ (they break SCAN and ACL key patterns)"
        )
    return v


def _absolute(v: Path) -> Path:
    if not v.is_absolute():
        raise ValueError("must be an absolute path")
    return v


class SupervisorSection(_Model):
    name: str = "agent"
    namespace: str = Field("agent", min_length=1, max_length=200)
    # Absolute: a relative one would follow whatever directory the daemon was started from.
    state_dir: Path = Path("/var/lib/agent-supervisor")
    control_socket: Path = Path("/run/agent-supervisor/control.sock")
    control_socket_mode: int = Field(0o600, ge=0, le=0o777)
    # Root and the daemon's own uid are always allowed; these are added to them.
    allowed_uids: list[Uid] = Field(default_factory=list)
    initial_active: Color = Color.BLUE
    shutdown_timeout_s: Seconds = 60.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # One daemon supervises a namespace: it holds a lease in Redis for this long, renewed
    # every third of it from the event loop. A daemon that finds the lease held by another
    # live one refuses to start ("refuse", exit 1) or waits for it without starting any child
    # ("wait"). Longer survives longer stalls of the holder; shorter hands over sooner.
    lease_ttl_s: float = Field(10.0, ge=1.0, le=3600.0, allow_inf_nan=False)
    on_lease_held: Literal["refuse", "wait"] = "refuse"
    # Each color in a cgroup of its own under the daemon's (systemd Delegate=yes), so that
    # stopping a color kills everything in it: "auto" when the daemon's cgroup is delegated.
    cgroups: Literal["auto", "off"] = "auto"

    @field_validator("namespace")
    @classmethod
    def _namespace_safe(cls, v: str) -> str:
        if v + ":" == FLAG_PREFIX or v.startswith(FLAG_PREFIX):
            raise ValueError(f"its keys would fall among the seed's {FLAG_PREFIX}{{name}} keys")
        return _key_safe(v)

    @field_validator("state_dir")
    @classmethod
    def _state_dir_absolute(cls, v: Path) -> Path:
        return _absolute(v)

    @field_validator("control_socket")
    @classmethod
    def _socket_fits(cls, v: Path) -> Path:
        _absolute(v)
        if len(os.fsencode(v)) > 107:
            raise ValueError("a Unix socket path must be at most 107 bytes")
        return v


class RedisSection(_Model):
    # None means the embedded default: a redis-server of our own on a socket in state_dir.
    url: str | None = None
    # Who may act; kept clear of the namespace's own keys (Config._cross_field_problems).
    active_key: str = Field("agent:active_version", min_length=1, max_length=200)
    # Name of the environment variable that holds the password (never the password itself).
    password_env: str = "AGENTSUP_REDIS_PASSWORD"
    socket_timeout_s: ShortSeconds = 1.0
    health_interval_s: ShortSeconds = 0.5
    # The truth is re-read on this timer too: keyspace notifications are only wake-up hints.
    reconcile_interval_s: ShortSeconds = 1.0
    # How long an executed idempotency key is remembered (a year at most: PX in milliseconds).
    permit_ttl_s: int = Field(7 * DAY_S, gt=0, le=366 * DAY_S)
    # How long a granted permit may be acted on: the SDK refuses to hand a permit to the venue
    # past this (or once a newer epoch was pushed). Bounds what an agent that stalls between
    # its permit and its venue call can still do after a flip.
    permit_valid_ms: int = Field(2000, ge=1, le=3_600_000)
    # Path of a redis-server (or valkey-server) binary for the embedded default; "" = search.
    embedded_binary: str = ""
    # What the children may do in Redis, each color as its own ACL user (docs/redis.md, Access):
    # "read" the active key and the flags; "permit" also call the permit script directly (and
    # write the permit records: a child could tamper with them); "none" no credentials at all;
    # "full" the daemon's own password (unsafe: a child could move the active key).
    child_access: Literal["none", "read", "permit", "full"] = "read"
    # Where the feature flags live: `{flags_prefix}{name}`, the seed's `flag:{name}` by
    # default; another prefix lets several deployments share one Redis (docs/flags.md).
    flags_prefix: str = Field(FLAG_PREFIX, min_length=1, max_length=100)
    # Redis Sentinel instead of url (docs/redis.md, Sentinel): every sentinel as "host:port"
    # and the name they monitor the master under. The daemon and its children follow that
    # master across a failover.
    sentinels: list[str] = Field(default_factory=list, max_length=64)
    service_name: str | None = Field(None, min_length=1, max_length=200)

    @field_validator("sentinels")
    @classmethod
    def _sentinel_addresses(cls, v: list[str]) -> list[str]:
        for item in v:
            host, sep, port = item.rpartition(":")
            if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{item!r} is not host:port, e.g. 10.0.0.5:26379")
        if len(set(v)) != len(v):
            raise ValueError("names one sentinel twice")
        return v

    @model_validator(mode="after")
    def _one_way_to_redis(self) -> RedisSection:
        if self.sentinels and self.service_name is None:
            raise ValueError("sentinels need service_name (the master's name in the sentinels)")
        if self.service_name is not None and not self.sentinels:
            raise ValueError("service_name needs sentinels (a list of host:port)")
        if self.sentinels and self.url is not None:
            raise ValueError("set url or sentinels, not both (the sentinels name the master)")
        if self.sentinels and self.embedded_binary:
            raise ValueError("embedded_binary is for the embedded Redis, not with sentinels")
        return self

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``sentinels`` as (host, port) pairs."""
        pairs = (item.rpartition(":") for item in self.sentinels)
        return [(host.strip("[]"), int(port)) for host, _, port in pairs]

    @field_validator("url")
    @classmethod
    def _url_without_secret(cls, v: str | None) -> str | None:
        """The URL is logged, shown by check-config and handed to the children: a password
        in it, in the user:password@ part or in the query string, would leak everywhere."""
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        in_query = any(
            name.strip().lower() in _PASSWORD_PARAMS
            for name, _ in parse_qsl(parts.query, keep_blank_values=True)
        )
        if parts.password or in_query:
            where = "user:password@" if parts.password else "its query string"
            raise ValueError(
                f"holds a password (in {where}); put it in the environment variable named by "
                "redis.password_env instead"
            )
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number in range)
        except ValueError:
            raise ValueError("has an invalid port") from None
        return v

    @field_validator("active_key")
    @classmethod
    def _active_key_safe(cls, v: str) -> str:
        if v.startswith(FLAG_PREFIX):
            raise ValueError(f"must not start with {FLAG_PREFIX!r} (the seed's feature flag keys)")
        return _key_safe(v)

    @field_validator("flags_prefix")
    @classmethod
    def _flags_prefix_safe(cls, v: str) -> str:
        return _key_safe(v)

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not ENV_NAME.fullmatch(v):
            raise ValueError("must be the name of an environment variable, e.g. REDIS_PASSWORD")
        return v

    @property
    def embedded(self) -> bool:
        return self.url is None and not self.sentinels


class MetricsSection(_Model):
    # "host:port"; an empty string turns the endpoint off.
    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if v == "":
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9464")
        return v

    @property
    def address(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class RestartPolicy(_Model):
    # More than max_restarts within period_s and the color goes FATAL (the daemon stays up).
    max_restarts: int = Field(5, ge=0, le=MAX_COUNT)
    period_s: Seconds = 60.0
    backoff_initial_s: Seconds = 0.5
    backoff_max_s: Seconds = 30.0


class AgentSection(_Model):
    command: list[str] = Field(min_length=1)
    version: str = Field(min_length=1)
    cwd: Path | None = None
    env: dict[str, str] = Field(default_factory=dict)
    # An agent that never says hello counts as RUNNING once it has stayed up this long.
    start_seconds: Seconds = 1.0
    stop_timeout_s: Seconds = 10.0
    restart: RestartPolicy = RestartPolicy()
    # Per color override of [triggers.heartbeat] timeout_s.
    heartbeat_timeout_s: Seconds | None = None

    @field_validator("command")
    @classmethod
    def _no_empty_words(cls, v: list[str]) -> list[str]:
        if any(not word for word in v):
            raise ValueError("no word of the command may be empty")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not name or "=" in name:
                raise ValueError(f"{name!r} is not a name for an environment variable")
        return v


class Agents(_Model):
    blue: AgentSection
    green: AgentSection

    def __getitem__(self, color: Color) -> AgentSection:
        return self.blue if color is Color.BLUE else self.green


class Trigger(_Model):
    enabled: bool = True


class PnlSigmaTrigger(Trigger):
    # The seed's rule: the mean of the last `window` rounds more than `sigma` per-round σ away.
    # `window` is also the span of the healthy (pnl_ok) check for either detector.
    window: int = Field(default=10, ge=2, le=MAX_COUNT)
    sigma: Factor = 3.0
    # "seed" is the article's rule as written; "robust_cusum" the sequential detector chosen by
    # bench/guard_sim.py (why: the docstring of supervisor/guard/pnl.py).
    detector: Literal["seed", "robust_cusum"] = "robust_cusum"
    # robust_cusum: each round in baseline σ is clipped to ±cusum_clip (one outlier cannot roll
    # back), less an allowance of cusum_k per round, summed both ways; over cusum_h it fires.
    cusum_k: Factor = 0.5
    cusum_h: Factor = 13.0
    cusum_clip: Factor = 3.0
    # Fixed baseline used while the stable color has fewer than min_baseline rounds.
    baseline_mean: Money | None = None
    # Bounded below too: a deviation divided by a vanishing σ is infinite.
    baseline_std: Annotated[float, Field(ge=1e-9, le=1e15)] | None = None
    # Below ~300 stable rounds the estimated baseline is too noisy to keep false rollbacks
    # under 1 per 100,000 rounds (30 rounds give about 9, 100 about 1.4; bench/guard_sim.py).
    min_baseline: int = Field(default=300, ge=2, le=MAX_COUNT)
    # How many of the stable color's latest rounds the baseline remembers (8 bytes each).
    baseline_rounds: int = Field(default=2000, ge=2, le=1_000_000)

    @model_validator(mode="after")
    def _consistent(self) -> PnlSigmaTrigger:
        if (self.baseline_mean is None) != (self.baseline_std is None):
            raise ValueError("baseline_mean and baseline_std must be set together")
        if self.baseline_rounds < self.min_baseline:
            raise ValueError("baseline_rounds must be at least min_baseline")
        if self.cusum_clip <= self.cusum_k:
            raise ValueError("cusum_clip must be larger than cusum_k, or nothing ever fires")
        return self


class LatencyTrigger(Trigger):
    # The candidate's median decision latency over more than `ratio` × the stable median alerts
    # at once and rolls back when it lasts `persist_s`.
    ratio: float = Field(2.0, gt=1.0, le=1e6)
    persist_s: Seconds = 300.0
    # Medians over each color's last `window` decisions, judged once both sides hold at least
    # `min_samples` of them (a median of three slow decisions is not a slow version).
    window: int = Field(50, ge=3, le=10_000)
    min_samples: int = Field(20, ge=1, le=10_000)

    @model_validator(mode="after")
    def _samples_fit(self) -> LatencyTrigger:
        if self.min_samples > self.window:
            raise ValueError("min_samples must be at most window")
        return self


class DoubleSpendTrigger(Trigger):
    # Idempotency keys remembered in memory (150-190 bytes each with a 16-character key, so
    # 50,000 take 7.5-9.5 MB); older ones are forgotten, then looked up in the permits in Redis.
    memory_keys: int = Field(50_000, ge=1, le=5_000_000)


class EscrowGapTrigger(Trigger):
    # Default gap; an escrow's own `gap_s` (sent with its watch event) wins.
    gap_s: Seconds = 60.0
    # Watched escrows beyond this many are refused (and counted), so memory stays bounded.
    max_escrows: int = Field(10_000, ge=1, le=1_000_000)


class HeartbeatTrigger(Trigger):
    timeout_s: Seconds = 5.0


class Triggers(_Model):
    exception: Trigger = Trigger()
    auth: Trigger = Trigger()
    exit: Trigger = Trigger()
    double_spend: DoubleSpendTrigger = DoubleSpendTrigger()
    pnl_sigma: PnlSigmaTrigger = PnlSigmaTrigger()
    latency: LatencyTrigger = LatencyTrigger()
    escrow_gap: EscrowGapTrigger = EscrowGapTrigger()
    heartbeat: HeartbeatTrigger = HeartbeatTrigger()


class RolloutSection(_Model):
    # A candidate that passes this long in charge with no trigger becomes stable by itself;
    # 0 leaves promotion to the operator's `agentsup confirm`.
    probation_s: float = Field(1800.0, ge=0, le=30 * DAY_S)


# The canary judge's metrics (supervisor/rollout/judge.py), each compared between the candidate
# and the stable color over the same step: return per unit staked, share of rounds won, share of
# decisions that ended in an error, decision latency, stake size (per unit of allocation),
# and the mix of decision kinds.
CanaryMetric = Literal["return", "win_rate", "error_rate", "latency", "stake", "action_mix"]
CANARY_METRICS: tuple[CanaryMetric, ...] = (
    "return",
    "win_rate",
    "error_rate",
    "latency",
    "stake",
    "action_mix",
)


class CanaryJudgeSection(_Model):
    """``[canary.judge]``: how a step is judged (docs/canary.md; the numbers were chosen with
    bench/canary_sim.py)."""

    # At least one: a judge with nothing to compare would pass every step.
    metrics: list[CanaryMetric] = Field(default_factory=lambda: list(CANARY_METRICS), min_length=1)
    # At the end of a step, a metric is high or low when its two-sided test's p-value is under
    # alpha AND the effect (the probability that a candidate sample beats a stable one, less
    # one half) is at least min_effect: a difference both proven and large enough to matter.
    alpha: float = Field(0.0002, gt=0, lt=0.5)
    # Within the step the same test looks again every look_s, at this much stricter level (a
    # repeated test: its false aborts add up over the looks), so that a bad candidate is
    # aborted long before the step's end.
    alpha_running: float = Field(1e-6, gt=0, lt=0.5)
    min_effect: float = Field(0.1, ge=0, lt=0.5)
    # Latency fails only when the candidate's median is also at least this many times
    # stable's (as [triggers.latency] ratio): a decision 10 % slower is proven in seconds at
    # full speed, and matters to nobody.
    latency_ratio: float = Field(1.5, ge=1.0, le=1e6)
    # ... and slower by at least this much: under a millisecond, the difference is the
    # scheduler's (a color that sleeps between rounds wakes more slowly than a busy one).
    latency_min_ms: float = Field(1.0, ge=0, le=1e9)
    # Fewer samples than this of either color: the metric has no data (which never passes).
    min_samples: int = Field(30, ge=2, le=MAX_COUNT)
    look_s: ShortSeconds = 1.0
    # Stakes are compared per unit of allocation (an agent sizes them by its share, as the
    # seed's router does); "none" compares them as they are (an agent with flat stakes).
    stakes: Literal["per_allocation", "as_is"] = "per_allocation"
    # Samples kept per color and metric in a step (the latest); memory stays bounded.
    max_samples: int = Field(5000, ge=100, le=100_000)
    # The running looks need this many samples of each color (the step's end min_samples).
    min_running_samples: int = Field(10, ge=2, le=MAX_COUNT)


class CanarySection(_Model):
    """``[canary]``: capital to the candidate step by step, the split enforced at the permit
    (docs/canary.md)."""

    # Percent of the capital for the candidate at each step, increasing; the last is 100: the
    # candidate in charge alone, on probation, as after a switch.
    steps: list[float] = Field(default_factory=lambda: [5.0, 20.0, 50.0, 100.0])
    # A step is judged once the candidate has finished this many rounds in it and it has
    # lasted this long.
    min_rounds: int = Field(200, ge=1, le=MAX_COUNT)
    min_seconds: float = Field(60.0, ge=0, le=30 * DAY_S)
    # A step that passes moves on by itself; false: it waits for `agentsup canary promote`.
    auto_promote: bool = True
    # A step held (no data, or a difference not yet proven) this long alerts (once a step); it
    # never promotes.
    hold_alert_s: Seconds = 1800.0
    # The fence grants the candidate while its share of the step's stakes stays within its
    # allocation plus this (a fraction: 0.01 is one point of share), so that a healthy
    # candidate's share wandering around its allocation is seldom refused.
    allowance: float = Field(0.01, ge=0, le=0.5)
    # Money (the agent's own unit) the candidate may stake in a step beyond that: what lets it
    # start before stable has staked anything in the step. 0: it waits for stable's first.
    start_amount: float = Field(0.0, ge=0, le=1e12)
    judge: CanaryJudgeSection = CanaryJudgeSection()

    @field_validator("steps")
    @classmethod
    def _steps_climb_to_100(cls, v: list[float]) -> list[float]:
        return check_canary_steps(v)


def check_canary_steps(steps: list[float]) -> list[float]:
    """Steps of a canary: increasing percents in (0, 100], the last 100, at least one under.

    >>> check_canary_steps([5, 20, 100])
    [5, 20, 100]
    >>> check_canary_steps([20, 5, 100])
    Traceback (most recent call last):
    ...
    ValueError: steps must increase, each in (0, 100], and end at 100 (e.g. 5, 20, 50, 100)
    """
    if (
        len(steps) < 2
        or steps[-1] != 100
        or any(not 0 < p <= 100 for p in steps)
        or any(b <= a for a, b in itertools.pairwise(steps))
    ):
        raise ValueError(
            "steps must increase, each in (0, 100], and end at 100 (e.g. 5, 20, 50, 100)"
        )
    return steps


class HandoffSection(_Model):
    """``[handoff]``: moving the acting color's state into the other one (supervisor/handoff)."""

    # A snapshot older than this (by its taken_at) is refused: the seed's five minutes.
    max_age_s: Seconds = 300.0
    # The largest state (its canonical JSON) taken or restored; larger goes in chunks on the
    # channel, up to this. Both the daemon and the SDK (AGENTSUP_HANDOFF_MAX_BYTES) hold to it.
    max_bytes: int = Field(16 << 20, ge=1024, le=1 << 30)
    # How long each request to a child may take (quiesce, snapshot, restore): past it the
    # handoff is aborted and the old color resumed.
    timeout_s: ShortSeconds = 10.0
    # The acting color's state is snapshotted this often (0: only on demand, at a handoff
    # and at SIGTERM), so that a crashed color still leaves a recent state.
    snapshot_interval_s: float = Field(0.0, ge=0, le=DAY_S)
    # After a handoff, a rollback gives stable the candidate's state back: from the
    # candidate within this long, else from its latest snapshot and the events since.
    rollback_timeout_s: ShortSeconds = 10.0

    @model_validator(mode="after")
    def _interval_fits(self) -> HandoffSection:
        if 0 < self.snapshot_interval_s < 1.0:
            raise ValueError("snapshot_interval_s must be 0 (off) or at least 1 second")
        return self


class DecisionLogSection(_Model):
    """``[decision_log]``: every decision, execution, outcome, error and flip, one chained JSON
    line each (supervisor/decisions, docs/decisions.md)."""

    enabled: bool = True
    # Absolute; unset: decisions.jsonl in state_dir. Rotated files go beside it.
    path: Path | None = None
    # "interval": written at once, fdatasync'd every fsync_interval_ms (a power cut loses at
    # most that much); "always": every batch fdatasync'd before the next is written (group
    # commit); "never": the kernel's page cache decides.
    fsync: Literal["interval", "always", "never"] = "interval"
    fsync_interval_ms: int = Field(100, ge=1, le=60_000)
    # The current file is rotated past this size or this age (0: never by age), and the
    # rotated one compressed with gzip (compress = "none" keeps it plain).
    rotate_bytes: int = Field(128 << 20, ge=4096, le=1 << 40)
    rotate_age_s: float = Field(86_400.0, ge=0, le=366 * DAY_S)
    compress: Literal["gzip", "none"] = "gzip"
    # Rotated files kept (the oldest removed first, and recorded in the log); 0 keeps all.
    keep: int = Field(0, ge=0, le=MAX_COUNT)
    # Records waiting for the disk; past it (a disk too slow or full) new records are counted,
    # not kept, and written as one gap record once the disk takes writes again.
    max_buffer_bytes: int = Field(64 << 20, ge=64 << 10, le=1 << 32)

    @field_validator("path")
    @classmethod
    def _path_absolute(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        _absolute(v)
        if v.name in ("", ".", ".."):
            raise ValueError("must name a file")
        return v

    @model_validator(mode="after")
    def _age_fits(self) -> DecisionLogSection:
        if 0 < self.rotate_age_s < 1.0:
            raise ValueError("rotate_age_s must be 0 (off) or at least 1 second")
        return self


class AlertsSection(_Model):
    # Every alert is POSTed here as one JSON object; None only logs it.
    webhook_url: str | None = None
    # Tries per alert (exponential backoff with jitter between them, at most backoff_max_s).
    attempts: int = Field(5, ge=1, le=20)
    timeout_s: ShortSeconds = 5.0
    backoff_initial_s: Seconds = 0.5
    backoff_max_s: Seconds = 30.0
    # Alerts waiting for the webhook; when full the oldest is dropped (and counted).
    queue_size: int = Field(1000, ge=1, le=100_000)

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold user:password@ (put a token in the path or query)")
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number in range)
        except ValueError:
            raise ValueError("has an invalid port") from None
        return v


# A flag's name: a Redis key's last part and a JSON key, readable on a command line.
FLAG_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
FlagValue = bool | int | float | str


def _seed_reads(text: str) -> str | None:
    """What the seed's ``Flags.get`` makes of a stored string other than the string itself
    (a bool or a number), or None when it reads it back as text."""
    if text in ("True", "False"):
        return "a bool"
    try:
        float(text)
    except ValueError:
        return None
    return "a number"


class FlagSpec(_Model):
    """One ``[flags]`` entry: ``game = { type = "choice", choices = [...], default = "dice" }``.

    ``kill_switch`` (a bool flag) is global only: no per-color value overrides it, so turning
    it off turns the action off for every color at once.
    """

    type: Literal["bool", "int", "float", "string", "choice"]
    default: FlagValue
    min: float | None = None
    max: float | None = None
    choices: list[str] | None = None
    description: str = ""
    kill_switch: bool = False

    def problem(self, value: Any) -> str | None:
        """Why ``value`` (typed) does not fit this flag, or None when it does.

        >>> FlagSpec(type="int", default=50, min=1).problem(0)
        'must be at least 1'
        >>> FlagSpec(type="choice", choices=["dice"], default="dice").problem("crash") is None
        False
        """
        kind = self.type
        if kind == "bool":
            return None if type(value) is bool else "must be a bool (True or False)"
        if kind in ("int", "float"):
            if kind == "int" and type(value) is not int:
                return "must be an integer"
            if type(value) not in (int, float) or not math.isfinite(value):
                return "must be a finite number"
            if self.min is not None and value < self.min:
                return f"must be at least {self.min:g}"
            if self.max is not None and value > self.max:
                return f"must be at most {self.max:g}"
            return None
        if type(value) is not str:
            return "must be text"
        if kind == "choice":
            choices = self.choices or []
            return None if value in choices else f"must be one of {', '.join(choices)}"
        seen_as = _seed_reads(value)
        if seen_as is not None:
            return f"the seed's Flags.get would read {value[:60]!r} as {seen_as}, not as text"
        if "\n" in value or "\r" in value:
            return "must be one line"
        return None

    @model_validator(mode="after")
    def _default_fits(self) -> FlagSpec:
        if self.type == "choice":
            if not self.choices:
                raise ValueError("a choice flag needs choices = [...]")
            for choice in self.choices:
                if _seed_reads(choice) is not None or not choice:
                    raise ValueError(
                        f"choice {choice!r} would not read back as text in the seed's Flags"
                    )
        elif self.choices is not None:
            raise ValueError('choices are only for type = "choice"')
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError("min and max are only for int and float flags")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must be at most max")
        if self.kill_switch and self.type != "bool":
            raise ValueError("a kill_switch must be a bool flag")
        default = self.default
        if self.type == "float" and type(default) is int:
            default = float(default)  # TOML's 2 for a float flag is 2.0
            object.__setattr__(self, "default", default)
        why = self.problem(default)
        if why is not None:
            raise ValueError(f"default {default!r} does not fit: {why}")
        return self


# A field of a decision's output, as the shadow's comparator names it: dotted keys ("bet.side").
FieldPath = Annotated[str, Field(min_length=1, max_length=200)]


class ComparatorSpec(_Model):
    """How the shadow compares a decision kind's outputs, field by field (docs/shadow.md).
    Two numbers are the same when they differ by at most ``absolute`` or by at most
    ``relative`` of the larger one (Diffy's defaults: 20 % and 0.03)."""

    # Only these fields are compared (empty: every field of the output) ...
    fields: list[FieldPath] = Field(default_factory=list, max_length=1000)
    # ... except these (a timestamp, free text the model writes differently every time).
    ignore: list[FieldPath] = Field(default_factory=list, max_length=1000)
    relative: float = Field(0.2, ge=0, le=1e6)
    absolute: float = Field(0.03, ge=0, le=1e15)


class ShadowSection(_Model):
    """``[shadow]``: a standby color deciding on the live inputs, never acting
    (supervisor/shadow, docs/shadow.md)."""

    # The comparator of a kind not in ``kinds``; ``[shadow.kinds.NAME]`` for one kind.
    comparator: ComparatorSpec = ComparatorSpec()
    kinds: dict[Annotated[str, Field(max_length=200)], ComparatorSpec] = Field(
        default_factory=dict, max_length=1000
    )
    # The noise floor: this fraction of the live color's decisions is mirrored back to it.
    floor_fraction: float = Field(0.1, ge=0, le=1)
    # A field's divergence is reported when its rate passes the floor's by this many
    # standard errors (one-sided; 3: about 1 in 700 fields by chance at any one look).
    floor_z: float = Field(3.0, ge=0, le=100)
    # Mirrors waiting for the shadow; past it new ones are dropped (and counted).
    queue_size: int = Field(1000, ge=1, le=1_000_000)
    # Mirrors in flight at once to the shadow (and, apart, to the live color for the floor).
    concurrency: int = Field(8, ge=1, le=1000)
    # How long a mirror (or a scoring) may take: past it the shadow's answer is a timeout.
    timeout_s: ShortSeconds = 2.0


class AbSection(_Model):
    """``[ab]``: A/B tests of two values of one flag, both colors acting within their share
    (supervisor/ab, docs/ab.md)."""

    # Arm B's (green's) percent of the capital, unless `ab start --split` says otherwise.
    split: float = Field(50.0, gt=0, lt=100)
    # No verdict before each arm has this many rounds, unless `ab start --min-rounds`.
    min_rounds: int = Field(100, ge=2, le=MAX_COUNT)
    # The confidence sequence's level, and the rounds in all it is narrowest at.
    alpha: float = Field(0.05, gt=0, lt=0.5)
    n_star: int = Field(2000, ge=10, le=MAX_COUNT)
    # What the fence grants an arm beyond its share: a fraction of the test's stakes, and
    # money (the agent's own unit), as the canary's.
    allowance: float = Field(0.01, ge=0, le=0.5)
    start_amount: float = Field(0.0, ge=0, le=1e12)
    # How often the arms' running sums are written to Redis ({ns}:ab) and state_dir/ab.json.
    save_interval_s: ShortSeconds = 1.0


class Config(_Model):
    supervisor: SupervisorSection = SupervisorSection()
    redis: RedisSection = RedisSection()
    metrics: MetricsSection = MetricsSection()
    agents: Agents
    triggers: Triggers = Triggers()
    rollout: RolloutSection = RolloutSection()
    canary: CanarySection = CanarySection()
    handoff: HandoffSection = HandoffSection()
    decision_log: DecisionLogSection = DecisionLogSection()
    gates: GatesSection = GatesSection()
    alerts: AlertsSection = AlertsSection()
    shadow: ShadowSection = ShadowSection()
    ab: AbSection = AbSection()
    # The feature flags' schema (docs/flags.md): name → type, default, bounds, description.
    flags: dict[str, FlagSpec] = Field(default_factory=dict)

    @field_validator("flags")
    @classmethod
    def _flag_names(cls, v: dict[str, FlagSpec]) -> dict[str, FlagSpec]:
        for name in v:
            if not FLAG_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a flag name (letters, digits, _ . -; at most 100)"
                )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        problems = self._cross_field_problems()
        if problems:
            raise _CrossFieldProblems(problems)
        return self

    def _cross_field_problems(self) -> list[str]:
        """Rules that span sections, each named by the field to change."""
        problems = []
        if self.redis.embedded:
            sock = self.embedded_redis_socket
            if len(os.fsencode(sock)) > 107:
                problems.append(
                    f"supervisor.state_dir: too long for the embedded Redis socket ({sock})"
                )
        ns, key = self.supervisor.namespace, self.redis.active_key
        # `{ns}:active_version` is the seed's own name (namespace "agent", the default active
        # key "agent:active_version"); every other key under `{ns}:` is the daemon's, or will
        # be (epoch, permits, flips, lease...), and a flip would overwrite it or the reverse.
        if key.startswith(f"{ns}:") and key != f"{ns}:{SEED_ACTIVE_NAME}":
            problems.append(
                f"redis.active_key: {key!r} lies among the keys of supervisor.namespace "
                f"{ns!r} ({ns}:epoch, {ns}:permit:..., ...); use {ns}:{SEED_ACTIVE_NAME} or a "
                f"key outside {ns}:"
            )
        # Same command with another version (or env) is the usual upgrade of an env-driven
        # agent; all four the same is two copies of one slot, and a switch would change nothing.
        blue, green = self.agents.blue, self.agents.green
        # A cwd is checked now, not when the child first fails to start in it (and is
        # restarted, and goes FATAL, with the reason buried in the log); one in state_dir is
        # made by the daemon itself at start.
        state_dir = self.supervisor.state_dir
        for color, section in (("blue", blue), ("green", green)):
            cwd = section.cwd
            if cwd is None or cwd == state_dir or state_dir in cwd.parents:
                continue
            try:
                if not cwd.is_dir():
                    problems.append(
                        f"agents.{color}.cwd: {cwd} does not exist or is not a directory"
                    )
            except OSError as exc:
                problems.append(f"agents.{color}.cwd: {cwd} cannot be read: {exc.strerror}")
        if all(getattr(blue, f) == getattr(green, f) for f in ("command", "cwd", "env", "version")):
            problems.append(
                "agents.green: identical to agents.blue (command, cwd, env and version): "
                "two slots must differ"
            )
        prefix = self.redis.flags_prefix
        if f"{ns}:".startswith(prefix) or prefix.startswith(f"{ns}:"):
            problems.append(
                f"redis.flags_prefix: {prefix!r} and supervisor.namespace {ns!r} overlap: the "
                "flags would fall among the daemon's own keys"
            )
        if key.startswith(prefix):
            problems.append(f"redis.flags_prefix: the active key {key!r} starts with it")
        log_path = self.decision_log_path
        if log_path.parent == state_dir and log_path.name in _STATE_FILES:
            problems.append(f"decision_log.path: {log_path} is one of the daemon's own state files")
        return problems

    def redis_password(self) -> str | None:
        return os.environ.get(self.redis.password_env) or None

    @property
    def decision_log_path(self) -> Path:
        """``[decision_log] path``, or decisions.jsonl in state_dir when unset."""
        return self.decision_log.path or self.supervisor.state_dir / "decisions.jsonl"

    @property
    def embedded_redis_socket(self) -> Path:
        return self.supervisor.state_dir / "redis.sock"

    def redis_url(self) -> str:
        """The URL the daemon and its children use (the embedded socket when no url is set)."""
        if self.redis.url is not None:
            return self.redis.url
        if self.redis.sentinels:  # shown, never connected to: see daemon.redis_client
            return f"redis+sentinel://{','.join(self.redis.sentinels)}/{self.redis.service_name}"
        return f"unix://{self.embedded_redis_socket}"


class _CrossFieldProblems(ValueError):
    """Raised by Config's own check; carries problems that already name their fields (pydantic
    would file them all under the top level)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part).replace("\0", "\\0") for part in loc) or "(top level)"


def _nul_bytes(value: Any, loc: tuple[int | str, ...] = ()) -> Iterator[str]:
    """Paths of the strings that hold a NUL byte (TOML allows ``\\u0000``): no path, argv word,
    environment variable or Redis client takes one, and each would fail at run time."""
    if isinstance(value, str):
        if "\0" in value:
            yield _path(loc)
    elif isinstance(value, dict):
        for name, item in value.items():
            if "\0" in name:
                yield f"{_path((*loc, name))} (the key)"
            yield from _nul_bytes(item, (*loc, name))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nul_bytes(item, (*loc, i))


def parse(data: dict[str, Any]) -> Config:
    """Validate a parsed TOML document; raises ConfigError naming every bad field.

    Nothing else escapes: check-config and run answer exit 78 with a field path for any value
    the TOML can hold, never a traceback.
    """
    nul = [f"{where}: must not contain a NUL byte" for where in _nul_bytes(data)]
    if nul:
        raise ConfigError(nul)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, _CrossFieldProblems):
                problems += cause.problems
                continue
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{_path(err['loc'])}: {msg}")
        raise ConfigError(problems) from None
    except Exception as exc:  # a validator we did not foresee; the operator still gets exit 78
        raise ConfigError([f"(top level): cannot validate: {type(exc).__name__}: {exc}"]) from None


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate the TOML file at ``path``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply to read"]) from None
    return parse(data)


def effective(config: Config) -> dict[str, Any]:
    """The config with every default filled in, as plain data (for check-config)."""
    return config.model_dump(mode="json")
