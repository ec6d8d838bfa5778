"""The OpenFeature provider over the pushed flags: values from memory, OpenFeature's reasons,
and never an exception (skipped without the ``openfeature`` extra)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("openfeature")

from openfeature import api
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from supervisor.agent.openfeature import SupervisorProvider


@dataclass
class Pushed:
    """What a ``flags`` push leaves in an Agent: its values and their sources."""

    flags: Mapping[str, Any] = field(default_factory=dict)
    flag_sources: Mapping[str, str] = field(default_factory=dict)


def test_reasons_follow_where_each_value_comes_from() -> None:
    pushed = Pushed(
        {"game": "dice", "crash_target": 3.5, "accept_escrows": True, "max_session_bets": 50},
        {
            "game": "global",
            "crash_target": "color",
            "accept_escrows": "default",
            "max_session_bets": "default",
        },
    )
    p = SupervisorProvider(pushed)
    game = p.resolve_string_details("game", "coinflip")
    assert (game.value, game.reason, game.variant) == ("dice", Reason.STATIC, "global")
    crash = p.resolve_float_details("crash_target", 2.0)
    assert (crash.value, crash.reason) == (3.5, Reason.TARGETING_MATCH)
    escrows = p.resolve_boolean_details("accept_escrows", False)
    assert (escrows.value, escrows.reason) == (True, Reason.DEFAULT)
    assert p.resolve_integer_details("max_session_bets", 1).value == 50
    # An int flag read as a float is still that number.
    assert p.resolve_float_details("max_session_bets", 1.0).value == 50.0


def test_errors_give_the_default_and_never_raise() -> None:
    p = SupervisorProvider(Pushed())
    before = p.resolve_string_details("game", "coinflip")
    assert (before.value, before.reason) == ("coinflip", Reason.ERROR)
    assert before.error_code == ErrorCode.PROVIDER_NOT_READY
    p = SupervisorProvider(Pushed({"game": "dice"}, {"game": "global"}))
    missing = p.resolve_boolean_details("nope", True)
    assert (missing.value, missing.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
    wrong = p.resolve_integer_details("game", 7)
    assert (wrong.value, wrong.error_code) == (7, ErrorCode.TYPE_MISMATCH)

    class Broken:
        @property
        def flags(self) -> Mapping[str, Any]:
            raise RuntimeError("boom")

        flag_sources: Mapping[str, str] = {}

    assert SupervisorProvider(Broken()).resolve_float_details("x", 1.5).reason == Reason.ERROR


def test_through_the_openfeature_client() -> None:
    api.set_provider(SupervisorProvider(Pushed({"game": "crash"}, {"game": "color"})))
    try:
        client = api.get_client()
        assert client.get_string_value("game", "coinflip") == "crash"
        details = client.get_string_details("game", "coinflip")
        assert details.reason == Reason.TARGETING_MATCH
        assert client.get_boolean_value("absent", False) is False
    finally:
        api.clear_providers()
