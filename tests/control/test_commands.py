"""Each control command end to end across the socket, on both halves: the real CLI (``main``,
in a thread, as the operator runs it) → the real ControlServer → the command's server half,
against a stand-in deployment.

The stand-in is a ``DeploymentView`` over nothing: it records what a command asks and answers
what the test sets, so these tests say that the CLI and the commands carry the contract (the
arguments, the request, the result, what is printed, the exit codes), not that the daemon
behind them works: the daemon's own tests (test_blue_green.py, test_lifecycle.py...) do that.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from supervisor.cli import main
from supervisor.config import Color
from supervisor.control.commands import COMMANDS
from supervisor.control.context import Context
from supervisor.control.server import ControlServer
from supervisor.control.views import render_status, render_triggers
from supervisor.errors import Refused
from supervisor.metrics import Metrics
from tests.redis_server import short_tempdir

BY = f"uid:{os.getuid()}"

STATUS: dict[str, Any] = {
    "name": "fake",
    "active": "green",
    "epoch": 8,
    "mode": "blue-green",
    "redis": "up",
    "stable": "blue",
    "candidate": "green",
    "children": {
        color: {
            "state": "RUNNING",
            "pid": 100 + i,
            "version": f"{i + 1}.0.0",
            "role": "active" if color == "green" else "standby",
            "uptime_s": 12.5,
            "restarts": i,
            "protocol": True,
        }
        for i, color in enumerate(("blue", "green"))
    },
    "flips": [
        {"at": "1700000000", "epoch": "8", "from": "blue", "to": "green", "reason": "switch"}
    ],
}

TRIGGERS: dict[str, Any] = {
    "pnl_sigma": {
        "severity": "high",
        "enabled": True,
        "threshold": 3.0,
        "colors": {
            "blue": {"value": 0.5, "state": "ok", "last_fired": None},
            "green": {"value": 4.25, "state": "fired", "last_fired": 1700000000.0},
        },
    }
}


@dataclass(frozen=True)
class FakeChange:
    """What a command reads of a ``Change``."""

    active: Color | None
    previous: Color | None
    epoch: int


@dataclass
class FakeDeployment:
    """A DeploymentView over nothing: every call is recorded; ``refuse`` makes the next
    mutating call raise it, as the real deployment refuses."""

    name: str = "fake"
    children: dict[Color, Any] = field(default_factory=dict)
    versions: dict[Color, str] = field(
        default_factory=lambda: {Color.BLUE: "1.0.0", Color.GREEN: "2.0.0"}
    )
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    refuse: Refused | None = None

    def _maybe_refuse(self) -> None:
        if self.refuse is not None:
            raise self.refuse

    async def status(self, flips: int) -> dict[str, Any]:
        self.calls.append(("status", flips))
        return STATUS

    def triggers(self) -> dict[str, Any]:
        self.calls.append(("triggers",))
        return TRIGGERS

    async def switch(self, color: Color, by: str, started: float) -> FakeChange:
        self.calls.append(("switch", color, by))
        self._maybe_refuse()
        return FakeChange(color, color.other, 8)

    async def confirm(self, by: str) -> FakeChange:
        self.calls.append(("confirm", by))
        self._maybe_refuse()
        return FakeChange(Color.GREEN, Color.GREEN, 8)

    async def rollback(self, reason: str, by: str, started: float) -> FakeChange:
        self.calls.append(("rollback", reason, by))
        self._maybe_refuse()
        return FakeChange(Color.BLUE, Color.GREEN, 9)

    def restart(self, color: Color) -> None:
        self.calls.append(("restart", color))
        self._maybe_refuse()


@dataclass
class Served:
    socket: Path
    deployment: FakeDeployment
    metrics: Metrics
    shutdowns: list[str]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    directory = short_tempdir("as-ctl-")
    deployment, shutdowns, metrics = FakeDeployment(), [], Metrics()
    server = ControlServer(
        lambda by: Context(deployment, shutdowns.append, by),
        metrics,
        directory / "control.sock",
        0o600,
        [],
    )
    try:
        await server.start()
        yield Served(server.path, deployment, metrics, shutdowns)
    finally:
        await server.close()
        await server.drain()
        shutil.rmtree(directory, ignore_errors=True)


async def agentsup(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI as the operator runs it: (exit code, stdout, stderr). In a thread, since the
    client blocks and the server answers on this loop."""
    capsys.readouterr()
    rc = await asyncio.wait_for(asyncio.to_thread(main, list(argv)), 20)
    out, err = capsys.readouterr()
    return rc, out, err


def counted(s: Served, cmd: str, result: str) -> float:
    value = s.metrics.registry.get_sample_value(
        "agentsup_control_requests_total", {"command": cmd, "result": result}
    )
    return value or 0.0


async def test_switch_sends_the_color_and_prints_the_flip(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = await agentsup(capsys, "switch", "green", "--socket", str(served.socket))
    assert (rc, err) == (0, "")
    assert out == "switched: green is in charge at epoch 8 (was blue)\n"
    assert served.deployment.calls == [("switch", Color.GREEN, BY)]


async def test_a_refusal_exits_1_with_its_code_and_message(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    served.deployment.refuse = Refused("not_running", "green is STOPPED, not RUNNING")
    rc, out, err = await agentsup(capsys, "switch", "green", "--socket", str(served.socket))
    assert (rc, out) == (1, "")
    assert err == "agentsup: refused (not_running): green is STOPPED, not RUNNING\n"
    assert counted(served, "switch", "refused") == 1


async def test_confirm_rollback_restart_shutdown_print_their_line(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ("--socket", str(served.socket))
    assert await agentsup(capsys, "confirm", *where) == (
        0,
        "confirmed: green (2.0.0) is stable\n",
        "",
    )
    assert await agentsup(capsys, "rollback", "--reason", "PnL looks off", *where) == (
        0,
        "rolled back: blue is in charge at epoch 9 (manual: PnL looks off)\n",
        "",
    )
    assert await agentsup(capsys, "rollback", *where) == (
        0,
        "rolled back: blue is in charge at epoch 9 (manual)\n",
        "",
    )
    assert await agentsup(capsys, "restart", "blue", *where) == (0, "restarting blue\n", "")
    assert await agentsup(capsys, "shutdown", *where) == (0, "the daemon is stopping\n", "")
    assert served.deployment.calls == [
        ("confirm", BY),
        ("rollback", "manual: PnL looks off", BY),
        ("rollback", "manual", BY),
        ("restart", Color.BLUE),
    ]
    assert served.shutdowns == [f"control ({BY})"]
    assert counted(served, "rollback", "ok") == 2


async def test_status_and_triggers_print_their_tables_or_json(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No --socket: $AGENTSUP_SOCKET finds the daemon.
    monkeypatch.setenv("AGENTSUP_SOCKET", str(served.socket))
    rc, out, _ = await agentsup(capsys, "status")
    assert rc == 0
    assert out == render_status(STATUS) + "\n"
    assert out.startswith("fake  active: green  epoch: 8  mode: blue-green  redis: up\n")
    assert "green  active   2.0.0    RUNNING  101" in out
    rc, out, _ = await agentsup(capsys, "status", "--json")
    assert (rc, orjson.loads(out)) == (0, STATUS)
    rc, out, _ = await agentsup(capsys, "triggers")
    assert (rc, out) == (0, render_triggers(TRIGGERS) + "\n")
    assert out.splitlines()[2].split() == ["green", "4.25", "fired", out.split()[-1]]
    rc, out, _ = await agentsup(capsys, "triggers", "--json")
    assert (rc, orjson.loads(out)) == (0, TRIGGERS)
    assert served.deployment.calls == [
        ("status", 10),
        ("status", 10),
        ("triggers",),
        ("triggers",),
    ]


async def test_status_caps_the_flips_it_asks_for(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.socket))
    for flips in (1000, -5, 3):
        writer.write(orjson.dumps({"cmd": "status", "args": {"flips": flips}}) + b"\n")
        assert orjson.loads(await reader.readline())["ok"] is True
    writer.close()
    await writer.wait_closed()
    assert served.deployment.calls == [("status", 100), ("status", 0), ("status", 3)]


async def test_usage_errors_exit_2_before_any_request(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["switch", "purple"], ["restart"], ["confirm", "extra"]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--socket", str(served.socket)])
        assert exc.value.code == 2
    assert served.deployment.calls == []


async def test_the_socket_from_a_config_and_a_bad_config_exits_78(
    served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        f'[supervisor]\nname = "fake"\ncontrol_socket = "{served.socket}"\n'
        f'state_dir = "{tmp_path}"\n'
        '[agents.blue]\ncommand = ["true"]\nversion = "1"\n'
        '[agents.green]\ncommand = ["true"]\nversion = "2"\n'
    )
    rc, out, _ = await agentsup(capsys, "restart", "green", "-c", str(good))
    assert (rc, out) == (0, "restarting green\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[supervisor]\nname = 3\n")
    rc, out, err = await agentsup(capsys, "status", "-c", str(bad))
    assert (rc, out) == (78, "")
    assert err.startswith("agentsup: invalid configuration: ")


async def test_an_unreachable_daemon_exits_69(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, out, err = await agentsup(capsys, "confirm", "--socket", str(tmp_path / "none.sock"))
    assert (rc, out) == (69, "")
    assert "no daemon answers" in err


def test_every_command_forbids_unknown_args_and_has_a_documented_message() -> None:
    for name, command in COMMANDS.items():
        assert command.name == name
        assert command.Args.model_config.get("extra") == "forbid", name
        module = __import__(command.run.__module__, fromlist=["_"])
        assert f'"cmd": "{name}"' in (module.__doc__ or ""), name
        # The CLI half builds a request its own server half accepts.
        parser = argparse.ArgumentParser()
        command.arguments(parser)
        positional = ["green"] if name in ("switch", "restart", "handoff", "deploy") else []
        ns = parser.parse_args(positional)
        command.Args.model_validate(command.request(ns))


def test_control_and_demo_do_not_import_the_cli_nor_commands_the_daemon() -> None:
    """The layering: nothing but ``python -m supervisor`` imports the CLI (it sits on top),
    and no control module reaches for the daemon (commands get a Context)."""
    package = Path(__file__).resolve().parents[2] / "supervisor"
    offenders = []
    for path in package.rglob("*.py"):
        rel = path.relative_to(package.parent).as_posix()
        tree = ast.parse(path.read_text(), rel)
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if "supervisor.cli" in names and rel != "supervisor/__main__.py":
                offenders.append(f"{rel}: imports supervisor.cli")
            if "supervisor.daemon" in names and rel.startswith("supervisor/control/"):
                offenders.append(f"{rel}: imports supervisor.daemon")
    assert offenders == []
