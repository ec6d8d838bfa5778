"""``redis.sentinels`` and ``redis.service_name``: what the config takes and refuses, and what
the children are handed (no process needed)."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor import config
from supervisor.agent.client import _env_sentinels
from supervisor.arbiter.scripts import Keys
from supervisor.config import Color
from supervisor.errors import ConfigError, NotSupervised
from supervisor.identity import ChildAccess


def parse(redis: dict[str, Any]) -> config.Config:
    return config.parse(
        {
            "supervisor": {
                "name": "x",
                "namespace": "t",
                "state_dir": "/var/lib/x",
                "control_socket": "/run/x.sock",
            },
            "redis": redis,
            "agents": {
                "blue": {"command": ["a"], "version": "1"},
                "green": {"command": ["a"], "version": "2"},
            },
        }
    )


SENTINELS = ["10.0.0.5:26379", "sentinel-b:26379", "[::1]:26380"]


def test_sentinels_name_the_master_instead_of_a_url() -> None:
    cfg = parse({"sentinels": SENTINELS, "service_name": "mymaster"})
    assert not cfg.redis.embedded
    assert cfg.redis.sentinel_addresses == [
        ("10.0.0.5", 26379),
        ("sentinel-b", 26379),
        ("::1", 26380),
    ]
    assert cfg.redis_url() == f"redis+sentinel://{','.join(SENTINELS)}/mymaster"


@pytest.mark.parametrize(
    ("redis", "problem"),
    [
        ({"sentinels": SENTINELS}, "redis: sentinels need service_name"),
        ({"service_name": "m"}, "redis: service_name needs sentinels"),
        (
            {"sentinels": SENTINELS, "service_name": "m", "url": "redis://10.0.0.5:6379/0"},
            "redis: set url or sentinels, not both",
        ),
        (
            {"sentinels": SENTINELS, "service_name": "m", "embedded_binary": "/usr/bin/x"},
            "redis: embedded_binary is for the embedded Redis",
        ),
        ({"sentinels": ["10.0.0.5"], "service_name": "m"}, "redis.sentinels: '10.0.0.5' is not"),
        ({"sentinels": ["h:0"], "service_name": "m"}, "redis.sentinels: 'h:0' is not host:port"),
        ({"sentinels": ["h:65536"], "service_name": "m"}, "redis.sentinels: 'h:65536' is not"),
        ({"sentinels": [":26379"], "service_name": "m"}, "redis.sentinels: ':26379' is not"),
        ({"sentinels": ["h:1", "h:1"], "service_name": "m"}, "redis.sentinels: names one"),
        ({"sentinels": SENTINELS, "service_name": ""}, "redis.service_name:"),
    ],
)
def test_a_bad_sentinel_setting_is_named(redis: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(redis)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_children_are_handed_the_sentinels_and_the_master() -> None:
    cfg = parse({"sentinels": SENTINELS, "service_name": "mymaster", "child_access": "none"})
    access = ChildAccess(cfg, Keys("t", "a"), embedded=False, daemon_password=None)
    env = access.env(Color.BLUE)
    assert env["AGENTSUP_REDIS_SENTINELS"] == ",".join(SENTINELS)
    assert env["AGENTSUP_REDIS_SERVICE"] == "mymaster"
    # The SDK reads back what the daemon wrote.
    assert _env_sentinels(env) == cfg.redis.sentinel_addresses


def test_the_sdk_refuses_a_malformed_sentinel_list() -> None:
    assert _env_sentinels({}) == []
    with pytest.raises(NotSupervised, match="not host:port"):
        _env_sentinels({"AGENTSUP_REDIS_SENTINELS": "10.0.0.5:26379,nope"})
