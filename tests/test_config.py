"""The configuration: validated at start, every error named by its field path, exit 78."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Callable
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


def _set(table: str, line: str) -> Callable[[str], str]:
    """An edit that adds ``line`` to the ``[table]`` of MINIMAL (a sub-table is appended)."""

    def edit(text: str) -> str:
        if f"[{table}]\n" in text:
            return text.replace(f"[{table}]\n", f"[{table}]\n{line}\n")
        return f"{text}\n[{table}]\n{line}\n"

    return edit


def _sub(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, new)

    return edit


URL = 'url = "redis://127.0.0.1:6379/0"'
KEY = 'active_key = "agent:active_version"'
NS = 'namespace = "agent"'
GLOB = "must not contain whitespace, control characters or the glob characters"
PASSWORD = "holds a password"


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
        # Numbers that would overflow timers, backoff or JSON at run time; TOML's inf and nan.
        (
            _set("agents.blue.restart", f"max_restarts = {10**29}"),
            "agents.blue.restart.max_restarts: Input should be less than or equal to 1000000",
        ),
        (_set("agents.blue.restart", "period_s = inf"), "agents.blue.restart.period_s: Input"),
        (_set("agents.blue.restart", "backoff_max_s = 1e300"), "agents.blue.restart.backoff_max_s"),
        (_set("agents.green", "stop_timeout_s = nan"), "agents.green.stop_timeout_s: Input"),
        (_set("agents.green", "start_seconds = -inf"), "agents.green.start_seconds: Input"),
        (_set("supervisor", "shutdown_timeout_s = 1e9"), "supervisor.shutdown_timeout_s: Input"),
        (_set("redis", "permit_ttl_s = 1_000_000_000_000"), "redis.permit_ttl_s: Input"),
        (_set("redis", "socket_timeout_s = 86400"), "redis.socket_timeout_s: Input"),
        (_set("rollout", "probation_s = 1e300"), "rollout.probation_s: Input"),
        (_set("alerts", "timeout_s = inf"), "alerts.timeout_s: Input"),
        (_set("triggers.pnl_sigma", "window = 1_000_000_000"), "triggers.pnl_sigma.window: Input"),
        (_set("triggers.pnl_sigma", "sigma = nan"), "triggers.pnl_sigma.sigma: Input"),
        (_set("triggers.heartbeat", "timeout_s = 1e100"), "triggers.heartbeat.timeout_s: Input"),
        # A password anywhere in the URL: user:password@, :password@, or the query string.
        (_sub("redis://127.0.0.1", "redis://ops:hunter2@127.0.0.1"), f"redis.url: {PASSWORD}"),
        (_sub(URL, 'url = "redis://127.0.0.1:6379/0?password=x"'), f"redis.url: {PASSWORD}"),
        (_sub(URL, 'url = "redis://127.0.0.1:6379/0?db=0&PassWord=x"'), f"redis.url: {PASSWORD}"),
        (_sub(URL, 'url = "redis://127.0.0.1:6379/0?requirepass=x"'), f"redis.url: {PASSWORD}"),
        (_sub(URL, 'url = "rediss://127.0.0.1:6379/0?AUTH=x"'), f"redis.url: {PASSWORD}"),
        (_sub(URL, 'url = "unix:///run/redis.sock?password="'), f"redis.url: {PASSWORD}"),
        (_sub(URL, 'url = "redis://127.0.0.1:99999/0"'), "redis.url: has an invalid port"),
        # Two identical slots are a mistake.
        (
            _sub('version = "2.0.0"', 'version = "1.0.0"'),
            "agents.green: identical to agents.blue (command, cwd, env and version)",
        ),
        # The active key must stay clear of the namespace's own keys and the seed's flags.
        (_sub(KEY, 'active_key = "agent:epoch"'), "redis.active_key: 'agent:epoch' lies among"),
        (_sub(KEY, 'active_key = "agent:permits:stats"'), "supervisor.namespace 'agent'"),
        (_sub(KEY, 'active_key = "agent:permit:order-1"'), "redis.active_key:"),
        (_sub(KEY, 'active_key = "agent:lease"'), "redis.active_key:"),
        (_sub(KEY, 'active_key = "flag:game"'), "redis.active_key: must not start with 'flag:'"),
        (
            lambda t: t.replace(NS, 'namespace = "{dice}"').replace(KEY, 'active_key = "{dice}:x"'),
            "redis.active_key: '{dice}:x' lies among",
        ),
        # Paths: a cwd that is not a directory, a relative state_dir or socket.
        (_set("agents.blue", 'cwd = "/nonexistent/agent"'), "agents.blue.cwd: /nonexistent/agent"),
        (_set("agents.green", f"cwd = {json.dumps(sys.executable)}"), "agents.green.cwd:"),
        (
            _sub('state_dir = "/var/lib/agent-supervisor"', 'state_dir = "var/agent"'),
            "supervisor.state_dir: must be an absolute path",
        ),
        (
            _sub('control_socket = "/run/agent-supervisor/control.sock"', 'control_socket = "c"'),
            "supervisor.control_socket: must be an absolute path",
        ),
        # uids: per element, 0 to 2**32 - 2 ((uid_t) -1 means "no uid").
        (_set("supervisor", "allowed_uids = [-1]"), "supervisor.allowed_uids.0: Input"),
        (_set("supervisor", "allowed_uids = [0, 4294967295]"), "supervisor.allowed_uids.1:"),
        # Key names that would break SCAN and ACL patterns.
        (_sub(NS, 'namespace = "agent *"'), f"supervisor.namespace: {GLOB}"),
        (_sub(NS, 'namespace = "a\\nb"'), f"supervisor.namespace: {GLOB}"),
        (_sub(NS, 'namespace = "a?"'), f"supervisor.namespace: {GLOB}"),
        (_sub(NS, 'namespace = "a[1]"'), f"supervisor.namespace: {GLOB}"),
        (_sub(NS, 'namespace = "flag"'), "supervisor.namespace: its keys would fall among"),
        (_sub(KEY, 'active_key = "active version"'), f"redis.active_key: {GLOB}"),
        (_sub(KEY, 'active_key = "active*"'), f"redis.active_key: {GLOB}"),
        # No string the TOML can hold escapes as a traceback: a NUL byte, a bad env name.
        (
            _sub(
                '["python3", "-m", "my_agent"]\nversion = "1.0.0"', '["py\\u0000"]\nversion = "1"'
            ),
            "agents.blue.command.0: must not contain a NUL byte",
        ),
        (_set("agents.blue", 'env = { "A=B" = "1" }'), "agents.blue.env: 'A=B' is not a name"),
        (_set("redis", 'password_env = "my password"'), "redis.password_env: must be the name"),
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


def test_a_huge_integer_exits_78_without_a_traceback(tmp_path: Path) -> None:
    """10**29 used to pass validation and overflow later (orjson, tenacity): exit 1."""
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL + f"\n[agents.blue.restart]\nmax_restarts = {10**29}\n")
    done = agentsup("check-config", "-c", str(path))
    assert done.returncode == 78, done.stderr
    assert "agentsup: invalid configuration: agents.blue.restart.max_restarts:" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    "edit",
    [
        # The design's own file: `agent:active_version` under namespace `agent` is the seed's.
        lambda t: t,
        _sub(URL, 'url = "redis://ops@127.0.0.1:6379/0?db=1&socket_timeout=2"'),
        _sub(URL, 'url = "unix:///run/redis/redis.sock?db=0"'),
        lambda t: t.replace(NS, 'namespace = "{dice}"').replace(
            KEY, 'active_key = "{dice}:active_version"'
        ),
        _sub(KEY, 'active_key = "agents:active"'),
        # The same command: a different version, or only a different env, is a real pair.
        lambda t: _set("agents.green", 'env = { "AGENT_MODE" = "v2" }')(
            t.replace('version = "2.0.0"', 'version = "1.0.0"')
        ),
        _set("agents.blue", 'cwd = "/"'),
        _set("supervisor", "allowed_uids = [0, 65534, 4294967294]"),
        _set("agents.blue.restart", "max_restarts = 1_000_000"),
        _set("rollout", "probation_s = 0"),
    ],
)
def test_good_config_is_valid(edit) -> None:  # type: ignore[no-untyped-def]
    config.parse(tomllib.loads(edit(MINIMAL)))


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
