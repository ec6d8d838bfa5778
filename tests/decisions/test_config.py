"""``[decision_log]``: defaults, validation (each error named by its field path), and what
check-config prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor import config
from supervisor.errors import ConfigError

AGENTS = {
    "blue": {"command": ["true"], "version": "1"},
    "green": {"command": ["true"], "version": "2"},
}


def parse(section: dict[str, Any], state_dir: str = "/var/lib/agent-supervisor") -> config.Config:
    return config.parse(
        {"supervisor": {"state_dir": state_dir}, "agents": AGENTS, "decision_log": section}
    )


def problems(section: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(section)
    return caught.value.problems


def test_defaults() -> None:
    cfg = parse({})
    log = cfg.decision_log
    assert (log.enabled, log.fsync, log.fsync_interval_ms) == (True, "interval", 100)
    assert (log.rotate_bytes, log.rotate_age_s, log.keep) == (128 << 20, 86_400.0, 0)
    assert log.compress == "gzip"
    assert cfg.decision_log_path == Path("/var/lib/agent-supervisor/decisions.jsonl")
    assert parse({"path": "/srv/audit/d.jsonl"}).decision_log_path == Path("/srv/audit/d.jsonl")
    assert config.effective(cfg)["decision_log"]["fsync"] == "interval"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"path": "decisions.jsonl"}, "decision_log.path: Value error, must be an absolute path"),
        ({"fsync": "sometimes"}, "decision_log.fsync: Input should be 'interval', 'always' or"),
        ({"fsync_interval_ms": 0}, "decision_log.fsync_interval_ms: Input should be greater"),
        ({"rotate_bytes": 100}, "decision_log.rotate_bytes: Input should be greater than or"),
        ({"rotate_age_s": 0.5}, "decision_log: rotate_age_s must be 0 (off) or at least 1"),
        ({"keep": -1}, "decision_log.keep: Input should be greater than or equal to 0"),
        ({"max_buffer_bytes": 10}, "decision_log.max_buffer_bytes: Input should be greater"),
        ({"compress": "zip"}, "decision_log.compress: Input should be 'gzip' or 'none'"),
        ({"rotate": 1}, "decision_log.rotate: unknown key"),
        (
            {"path": "/var/lib/agent-supervisor/permits.journal"},
            "decision_log.path: /var/lib/agent-supervisor/permits.journal is one of the",
        ),
    ],
)
def test_bad_values_are_named(section: dict[str, Any], expected: str) -> None:
    found = problems(section)
    assert any(
        p.replace("Value error, ", "").startswith(expected.replace("Value error, ", ""))
        for p in found
    ), found
