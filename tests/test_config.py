"""The configuration: validated at start, every error named by its field path, exit 78."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from supervisor import config
from supervisor.errors import ConfigError

MINIMAL = """
[supervisor]
name = "dice-bot"
namespace = "agent"
state_dir = "/var/lib/agent-supervisor"
control_socket = "/run/agent-supervisor/control.sock"
initial_active = "blue"

[redis]
url = "redis://127.0.0.1:6379/0"
active_key = "agent:active_version"

[metrics]
listen = "127.0.0.1:9464"

[agents.blue]
command = ["python3", "-m", "my_agent"]
version = "1.0.0"

[agents.green]
command = ["python3", "-m", "my_agent"]
version = "2.0.0"
"""


def agentsup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args], capture_output=True, text=True, timeout=30
    )


def test_design_minimal_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL)
    cfg = config.load(path)
    assert cfg.redis.active_key == "agent:active_version"
    assert cfg.agents.green.version == "2.0.0"
    assert cfg.triggers.pnl_sigma.window == 10  # the seed's numbers are the defaults
    assert cfg.triggers.heartbeat.timeout_s == 5


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (
            lambda t: t.replace(
                'command = ["python3", "-m", "my_agent"]\nversion = "1.0.0"', 'version = "1.0.0"'
            ),
            "agents.blue.command: Field required",
        ),
        (
            lambda t: t.replace('initial_active = "blue"', 'initial_active = "red"'),
            "supervisor.initial_active:",
        ),
        (
            lambda t: t.replace('listen = "127.0.0.1:9464"', 'listen = "nonsense"'),
            "metrics.listen: must be host:port",
        ),
        (
            lambda t: t.replace("redis://127.0.0.1", "redis://:hunter2@127.0.0.1"),
            "redis.url: holds a password",
        ),
        (lambda t: t + "\n[triggers.pnl_sigma]\nwindow = 1\n", "triggers.pnl_sigma.window:"),
        (
            lambda t: t + "\n[triggers.latency]\nratoi = 2.0\n",
            "triggers.latency.ratoi: unknown key",
        ),
        (lambda t: t.replace("[metrics]", "[metrics\n"), "not valid TOML"),
    ],
)
def test_bad_config_exits_78_naming_the_field(tmp_path: Path, edit, field: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.toml"
    path.write_text(edit(MINIMAL))
    with pytest.raises(ConfigError):
        config.load(path)
    for command in ("run", "check-config"):
        done = agentsup(command, "-c", str(path))
        assert done.returncode == 78, done.stderr
        assert field in done.stderr
        assert "Traceback" not in done.stderr


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL)
    done = agentsup("check-config", "-c", str(path))
    assert done.returncode == 0, done.stderr
    assert '"window": 10' in done.stdout  # a default filled in
    assert '"url": "redis://127.0.0.1:6379/0"' in done.stdout


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    done = agentsup("check-config", "-c", str(tmp_path / "nope.toml"))
    assert done.returncode == 78
    assert "cannot read" in done.stderr


def test_no_redis_section_means_embedded() -> None:
    cfg = config.parse(
        {
            "agents": {
                "blue": {"command": ["a"], "version": "1"},
                "green": {"command": ["a"], "version": "2"},
            }
        }
    )
    assert cfg.redis.embedded
    assert cfg.redis_url() == f"unix://{cfg.supervisor.state_dir / 'redis.sock'}"
