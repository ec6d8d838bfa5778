"""The TOML configuration: validated once at start, every error named by its field path.

Pydantic lives here, at the edge. Everything downstream gets frozen models and never checks
a value twice. Secrets (the Redis password) come from the environment, never from the file.
"""

from __future__ import annotations

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

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not ENV_NAME.fullmatch(v):
            raise ValueError("must be the name of an environment variable, e.g. REDIS_PASSWORD")
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


class Config(_Model):
    supervisor: SupervisorSection = SupervisorSection()
    redis: RedisSection = RedisSection()
    metrics: MetricsSection = MetricsSection()
    agents: Agents
    triggers: Triggers = Triggers()
    rollout: RolloutSection = RolloutSection()
    alerts: AlertsSection = AlertsSection()

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
        return problems

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
