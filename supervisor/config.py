"""The TOML configuration: validated once at start, every error named by its field path.

Pydantic lives here, at the edge. Everything downstream gets frozen models and never checks
a value twice. Secrets (the Redis password) come from the environment, never from the file.
"""

from __future__ import annotations

import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from supervisor.errors import ConfigError

EX_CONFIG = 78


class Color(StrEnum):
    """A slot that runs one version of the agent."""

    BLUE = "blue"
    GREEN = "green"

    @property
    def other(self) -> Color:
        return Color.GREEN if self is Color.BLUE else Color.BLUE


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveFloat = Annotated[float, Field(gt=0)]


class SupervisorSection(_Model):
    name: str = "agent"
    namespace: str = Field("agent", min_length=1)
    state_dir: Path = Path("/var/lib/agent-supervisor")
    control_socket: Path = Path("/run/agent-supervisor/control.sock")
    control_socket_mode: int = Field(0o600, ge=0, le=0o777)
    # Root and the daemon's own uid are always allowed; these are added to them.
    allowed_uids: list[int] = Field(default_factory=list)
    initial_active: Color = Color.BLUE
    shutdown_timeout_s: PositiveFloat = 60.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("control_socket")
    @classmethod
    def _socket_fits(cls, v: Path) -> Path:
        if len(os.fsencode(v)) > 107:
            raise ValueError("a Unix socket path must be at most 107 bytes")
        return v


class RedisSection(_Model):
    # None means the embedded default: a redis-server of our own on a socket in state_dir.
    url: str | None = None
    active_key: str = Field("agent:active_version", min_length=1)
    # Name of the environment variable that holds the password (never the password itself).
    password_env: str = "AGENTSUP_REDIS_PASSWORD"
    socket_timeout_s: PositiveFloat = 1.0
    health_interval_s: PositiveFloat = 0.5
    # The truth is re-read on this timer too: keyspace notifications are only wake-up hints.
    reconcile_interval_s: PositiveFloat = 1.0
    permit_ttl_s: int = Field(7 * 24 * 3600, gt=0)
    # Path of a redis-server (or valkey-server) binary for the embedded default; "" = search.
    embedded_binary: str = ""

    @field_validator("url")
    @classmethod
    def _url_without_secret(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        if parts.password:
            raise ValueError(
                "holds a password; put it in the environment variable named by "
                "redis.password_env instead"
            )
        return v

    @property
    def embedded(self) -> bool:
        return self.url is None


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
    max_restarts: int = Field(5, ge=0)
    period_s: PositiveFloat = 60.0
    backoff_initial_s: PositiveFloat = 0.5
    backoff_max_s: PositiveFloat = 30.0


class AgentSection(_Model):
    command: list[str] = Field(min_length=1)
    version: str = Field(min_length=1)
    cwd: Path | None = None
    env: dict[str, str] = Field(default_factory=dict)
    # An agent that never says hello counts as RUNNING once it has stayed up this long.
    start_seconds: PositiveFloat = 1.0
    stop_timeout_s: PositiveFloat = 10.0
    restart: RestartPolicy = RestartPolicy()
    # Per color override of [triggers.heartbeat] timeout_s.
    heartbeat_timeout_s: PositiveFloat | None = None

    @field_validator("command")
    @classmethod
    def _no_empty_words(cls, v: list[str]) -> list[str]:
        if any(not word for word in v):
            raise ValueError("no word of the command may be empty")
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
    window: int = Field(default=10, ge=2)
    sigma: PositiveFloat = 3.0
    # "seed" is the article's rule as written; "robust_cusum" the sequential detector chosen by
    # bench/guard_sim.py (why: the docstring of supervisor/guard/pnl.py).
    detector: Literal["seed", "robust_cusum"] = "robust_cusum"
    # robust_cusum: each round in baseline σ is clipped to ±cusum_clip (one outlier cannot roll
    # back), less an allowance of cusum_k per round, summed both ways; over cusum_h it fires.
    cusum_k: PositiveFloat = 0.5
    cusum_h: PositiveFloat = 13.0
    cusum_clip: PositiveFloat = 3.0
    # Fixed baseline used while the stable color has fewer than min_baseline rounds.
    baseline_mean: float | None = None
    baseline_std: PositiveFloat | None = None
    # Below ~300 stable rounds the estimated baseline is too noisy to keep false rollbacks
    # under 1 per 100,000 rounds (30 rounds give about 9, 100 about 1.4; bench/guard_sim.py).
    min_baseline: int = Field(default=300, ge=2)
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
    ratio: float = Field(2.0, gt=1.0)
    persist_s: PositiveFloat = 300.0
    # Medians over each color's last `window` decisions, judged once both sides hold at least
    # `min_samples` of them (a median of three slow decisions is not a slow version).
    window: int = Field(50, ge=3, le=10_000)
    min_samples: int = Field(20, ge=1)

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
    gap_s: PositiveFloat = 60.0
    # Watched escrows beyond this many are refused (and counted), so memory stays bounded.
    max_escrows: int = Field(10_000, ge=1, le=1_000_000)


class HeartbeatTrigger(Trigger):
    timeout_s: PositiveFloat = 5.0


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
    probation_s: float = Field(1800.0, ge=0)


class AlertsSection(_Model):
    # Every alert is POSTed here as one JSON object; None only logs it.
    webhook_url: str | None = None
    # Tries per alert (exponential backoff with jitter between them, at most backoff_max_s).
    attempts: int = Field(5, ge=1, le=20)
    timeout_s: PositiveFloat = 5.0
    backoff_initial_s: PositiveFloat = 0.5
    backoff_max_s: PositiveFloat = 30.0
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


class Config(_Model):
    supervisor: SupervisorSection = SupervisorSection()
    redis: RedisSection = RedisSection()
    metrics: MetricsSection = MetricsSection()
    agents: Agents
    triggers: Triggers = Triggers()
    rollout: RolloutSection = RolloutSection()
    alerts: AlertsSection = AlertsSection()

    @model_validator(mode="after")
    def _paths_fit(self) -> Config:
        if self.redis.embedded:
            sock = self.supervisor.state_dir / "redis.sock"
            if len(os.fsencode(sock)) > 107:
                raise ValueError(
                    f"supervisor.state_dir is too long for the embedded Redis socket ({sock})"
                )
        return self

    def redis_password(self) -> str | None:
        return os.environ.get(self.redis.password_env) or None

    @property
    def embedded_redis_socket(self) -> Path:
        return self.supervisor.state_dir / "redis.sock"

    def redis_url(self) -> str:
        """The URL the daemon and its children use (the embedded socket when no url is set)."""
        if self.redis.url is not None:
            return self.redis.url
        return f"unix://{self.embedded_redis_socket}"


def _path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse(data: dict[str, Any]) -> Config:
    """Validate a parsed TOML document; raises ConfigError naming every bad field."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{_path(err['loc'])}: {msg}")
        raise ConfigError(problems) from None


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
    return parse(data)


def effective(config: Config) -> dict[str, Any]:
    """The config with every default filled in, as plain data (for check-config)."""
    return config.model_dump(mode="json")
