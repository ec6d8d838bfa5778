"""One base exception with precise subclasses; control errors carry a stable code."""

from __future__ import annotations


class SupervisorError(Exception):
    """Base of every error agent-supervisor raises on purpose."""

    code = "error"


class ConfigError(SupervisorError):
    """The configuration file is missing, unreadable or invalid (exit 78)."""

    code = "invalid_config"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class RedisUnavailable(SupervisorError):
    """Redis could not be reached; whatever needed it fails closed."""

    code = "redis_unavailable"


class EmbeddedRedisError(SupervisorError):
    """The embedded redis-server could not be found or started."""

    code = "embedded_redis"


class Refused(SupervisorError):
    """The daemon refused an operator's command; ``code`` says why in a stable word."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class ControlUnreachable(SupervisorError):
    """No daemon answers on the control socket (exit 69)."""

    code = "unreachable"


class NotSupervised(SupervisorError):
    """The agent was started without the supervisor's environment (``AGENTSUP_FD`` and the
    rest are missing or wrong), so the SDK has no channel and no right to act."""

    code = "not_supervised"


class LeaseLost(SupervisorError):
    """Another daemon holds this namespace's lease: this one may not decide who acts."""

    code = "lease_lost"


class NamespaceHeld(SupervisorError):
    """At start: another live daemon supervises this namespace (exit 1, naming it)."""

    code = "namespace_held"
