"""An OpenFeature provider over the flags the supervisor pushes: evaluation from memory, with
OpenFeature's evaluation details and reasons, and never an exception.

Install the extra (``pip install 'agent-supervisor[openfeature]'``), then::

    from openfeature import api
    from supervisor.agent.openfeature import SupervisorProvider

    async with Agent.connect() as agent:
        api.set_provider(SupervisorProvider(agent))
        client = api.get_client()
        game = client.get_string_value("game", "coinflip")
        details = client.get_float_details("crash_target", 2.0)  # .reason, .variant

Reasons: ``TARGETING_MATCH`` for a value set for this color only (a candidate's own, an A/B
arm), ``STATIC`` for the global value, ``DEFAULT`` for the schema's default, ``ERROR`` (with
the caller's default value) when no flags were pushed yet (``PROVIDER_NOT_READY``), the flag is
not in the schema (``FLAG_NOT_FOUND``) or its type is not the one asked for
(``TYPE_MISMATCH``). The ``variant`` is the source: ``color``, ``global`` or ``default``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
from openfeature.provider import AbstractProvider
from openfeature.provider.metadata import Metadata

T = TypeVar("T")

REASONS: Mapping[str, Reason] = {
    "color": Reason.TARGETING_MATCH,
    "global": Reason.STATIC,
    "default": Reason.DEFAULT,
}


class PushedFlags(Protocol):
    """What the provider reads: an :class:`~supervisor.agent.Agent` has both."""

    @property
    def flags(self) -> Mapping[str, Any]: ...

    @property
    def flag_sources(self) -> Mapping[str, str]: ...


class SupervisorProvider(AbstractProvider):
    """Resolves from the values last pushed to this color; no network call, never raises."""

    def __init__(self, agent: PushedFlags) -> None:
        super().__init__()
        self._agent = agent

    def get_metadata(self) -> Metadata:
        return Metadata(name="agent-supervisor")

    def _resolve(
        self, key: str, default: T, accept: Callable[[Any], T | None]
    ) -> FlagResolutionDetails[T]:
        try:
            values = self._agent.flags
            if not values:
                return _error(default, ErrorCode.PROVIDER_NOT_READY, "no flags pushed yet")
            if key not in values:
                return _error(default, ErrorCode.FLAG_NOT_FOUND, f"no flag {key!r}")
            value = accept(values[key])
            if value is None:
                found = type(values[key]).__name__
                return _error(default, ErrorCode.TYPE_MISMATCH, f"{key} is a {found}")
            source = self._agent.flag_sources.get(key, "global")
            return FlagResolutionDetails(
                value=value,
                reason=REASONS.get(source, Reason.STATIC),
                variant=source,
                flag_metadata={"source": source},
            )
        except Exception as exc:  # evaluation never throws (OpenFeature's rule)
            return _error(default, ErrorCode.GENERAL, f"{type(exc).__name__}: {exc}")

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, _bool)

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, _str)

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        return self._resolve(flag_key, default_value, _int)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        return self._resolve(flag_key, default_value, _float)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        return self._resolve(flag_key, default_value, _object)


def _error(default: T, code: ErrorCode, message: str) -> FlagResolutionDetails[T]:
    return FlagResolutionDetails(
        value=default, reason=Reason.ERROR, error_code=code, error_message=message
    )


def _bool(v: Any) -> bool | None:
    return v if type(v) is bool else None


def _str(v: Any) -> str | None:
    return v if type(v) is str else None


def _int(v: Any) -> int | None:
    return v if type(v) is int else None


def _float(v: Any) -> float | None:
    return float(v) if type(v) in (int, float) else None


def _object(v: Any) -> Sequence[FlagValueType] | Mapping[str, FlagValueType] | None:
    return v if isinstance(v, dict | list) else None
