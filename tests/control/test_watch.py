"""``agentsup status --watch``: the live view in a real terminal (tmux), the plain fallback
when stdout is a pipe, and the screen itself rendered from a status object."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from supervisor.control.watch import DecisionRate, View, render
from tests.harness import PY, DaemonProcess, agent, running_daemon
from tests.redis_server import RedisServer, short_tempdir

RAW = [PY, "tests/agents/raw_agent.py"]
ROOT = Path(__file__).resolve().parents[2]
TMUX = shutil.which("tmux")
# Generous: the view polls every 0.5 s, and the machine is shared.
SCREEN_WAIT_S = 15.0


class Tmux:
    """One session on a private tmux server (its own socket, ``-S``), so that nothing touches
    the user's tmux, and nothing is left behind: tmux keeps a dead server's socket file."""

    def __init__(self) -> None:
        self.dir = short_tempdir("as-tmux-")
        self.server = str(self.dir / "tmux.sock")
        self.session = "watch"

    async def run(self, *args: str) -> str:
        assert TMUX is not None
        proc = await asyncio.create_subprocess_exec(
            TMUX,
            "-S",
            self.server,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, f"tmux {' '.join(args)}: {err.decode()}"
        return out.decode()

    async def start(self, command: list[str], exit_status: Path) -> None:
        """Run ``command`` in a 160x50 terminal; its exit status goes to ``exit_status``.

        A shell around it keeps the pane open afterwards (so the terminal's modes can be read
        once the view is gone) and writes the status: tmux 3.3a's own #{pane_dead_status}
        is sometimes left empty when the pane's output closes before the process is reaped.
        ``trap : INT`` keeps the shell itself alive through Ctrl-C, and, being a handler and
        not an ignore, is reset for the command, which gets SIGINT as usual.
        """
        script = f'trap : INT; "$@"; echo $? > {shlex.quote(str(exit_status))}; exec sleep 600'
        await self.run(
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            self.session,
            "-x",
            "160",
            "-y",
            "50",
            "-c",
            str(ROOT),
            "sh",
            "-c",
            script,
            "sh",
            *command,
        )

    async def pane(self) -> str:
        return await self.run("capture-pane", "-p", "-t", self.session)

    async def wait_for(self, what: str, check: Callable[[str], bool]) -> str:
        """Poll the screen (there is no event for "the terminal shows X") until ``check``."""
        pane = ""
        try:
            async with asyncio.timeout(SCREEN_WAIT_S):
                while True:
                    pane = await self.pane()
                    if check(pane):
                        return pane
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(
                f"the view never showed {what} within {SCREEN_WAIT_S} s:\n{pane}"
            ) from None

    async def modes(self) -> str:
        """``alternate_on cursor_flag``: ``1 0`` in a full-screen view, ``0 1`` at a prompt."""
        return (
            await self.run(
                "display-message", "-p", "-t", self.session, "#{alternate_on} #{cursor_flag}"
            )
        ).strip()

    async def kill(self) -> None:
        with contextlib.suppress(Exception):
            await self.run("kill-server")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def tmux_session() -> AsyncIterator[Tmux]:
    t = Tmux()
    try:
        yield t
    finally:
        await t.kill()


def watch_command(socket: Path) -> list[str]:
    return [
        "env",
        "TERM=xterm-256color",
        sys.executable,
        "-m",
        "supervisor",
        "status",
        "--watch",
        "--socket",
        str(socket),
    ]


def shown_active(pane: str) -> tuple[str, int] | None:
    """The header's active color and epoch, as the screen shows them."""
    m = re.search(r"active\s+(BLUE|GREEN)\s+epoch (\d+)\b", pane)
    return (m[1].lower(), int(m[2])) if m else None


def active_is(color: str, epoch: int) -> Callable[[str], bool]:
    return lambda pane: shown_active(pane) == (color, epoch)


def both_running(pane: str) -> bool:
    return all(
        re.search(rf"^\s*{c}\s+\w+\s+\S+\s+RUNNING\b", pane, re.M) for c in ("blue", "green")
    )


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed: the live view needs a terminal")
@pytest.mark.timeout(120)
async def test_live_view_follows_a_switch_and_survives_a_daemon_restart(
    redis_server: RedisServer,
) -> None:
    async with (
        running_daemon(
            redis_url=redis_server.url, blue=agent(RAW, "1.0.0"), green=agent(RAW, "2.0.0")
        ) as d,
        tmux_session() as tmux,
    ):
        again: DaemonProcess | None = None
        try:
            st = await d.wait_status(
                lambda s: all(
                    c["state"] == "RUNNING" and c["protocol"] for c in s["children"].values()
                )
            )
            epoch0 = st["epoch"]
            exit_status = d.dir / "watch.status"
            await tmux.start(watch_command(d.socket), exit_status)
            pane = await tmux.wait_for(
                f"blue active at epoch {epoch0} with both colors running",
                lambda p: (
                    active_is("blue", epoch0)(p)
                    and both_running(p)
                    and "1.0.0" in p
                    and "2.0.0" in p
                ),
            )
            assert "no triggers reported" in pane or "TRIGGER" in pane

            r = await d.cli("switch", "green")
            assert r.rc == 0, r.err
            flip = re.compile(rf"\b{epoch0 + 1}\s+blue\W+green\s+switch\b")
            await tmux.wait_for(
                f"green active at epoch {epoch0 + 1} and the switch in the flips",
                lambda p: active_is("green", epoch0 + 1)(p) and flip.search(p) is not None,
            )

            await d.stop()
            await tmux.wait_for(
                "the reconnecting banner",
                lambda p: f"reconnecting to {d.socket}" in p and "daemon unreachable for" in p,
            )
            pane = await tmux.pane()
            assert active_is("green", epoch0 + 1)(pane), "the last view must stay on screen"

            again = DaemonProcess(d.dir, d.config, d.env)
            await again.start()
            st = await again.wait_status(
                lambda s: all(c["state"] == "RUNNING" for c in s["children"].values())
            )
            assert st["active"] == "green"
            await tmux.wait_for(
                "the view of the new daemon, without the banner",
                lambda p: (
                    f"pid {again.pid}" in p
                    and "reconnecting" not in p
                    and (shown := shown_active(p)) is not None
                    and shown[0] == "green"
                    and shown[1] >= st["epoch"]
                    and both_running(p)
                ),
            )

            assert await tmux.modes() == "1 0", "a full-screen view, cursor hidden"
            await tmux.run("send-keys", "-t", tmux.session, "C-c")
            deadline = time.monotonic() + 10
            while not exit_status.exists() or not exit_status.read_text().strip():
                assert time.monotonic() < deadline, f"still running:\n{await tmux.pane()}"
                await asyncio.sleep(0.1)
            assert exit_status.read_text().strip() == "0"
            assert await tmux.modes() == "0 1", "the terminal is restored: main screen, cursor"
        finally:
            if again is not None and again.proc is not None and again.proc.returncode is None:
                await again.stop()


@pytest.mark.timeout(60)
async def test_without_a_terminal_it_prints_the_plain_table_and_says_when_unreachable(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url, blue=agent(RAW, "1.0.0"), green=agent(RAW, "2.0.0")
    ) as d:
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-m",
            "supervisor",
            "status",
            "--watch",
            "--socket",
            str(d.socket),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=d.env,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(15):
                stamps = 0
                while stamps < 2:
                    line = (await proc.stdout.readline()).decode()
                    assert "\x1b[" not in line, "no terminal codes into a pipe"
                    stamps += line.startswith("--- ")
                    if line.startswith("test  active:"):
                        assert "active: blue" in line
            await d.stop()
            async with asyncio.timeout(15):
                while f"reconnecting to {d.socket}" not in (await proc.stderr.readline()).decode():
                    pass
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def ignores_sigint(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        ignored = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(ignored & (1 << (signal.SIGINT - 1)))


@pytest.mark.timeout(60)
async def test_ctrl_c_leaves_even_when_started_with_sigint_ignored(
    redis_server: RedisServer,
) -> None:
    # A shell's background job, or a test runner started as one, passes SIGINT on ignored:
    # Python then installs no KeyboardInterrupt handler of its own, the view must.
    async with running_daemon(
        redis_url=redis_server.url, blue=agent(RAW, "1.0.0"), green=agent(RAW, "2.0.0")
    ) as d:
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-m",
            "supervisor",
            "status",
            "--watch",
            "--socket",
            str(d.socket),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=d.env,
            cwd=ROOT,
            preexec_fn=ignore_sigint,
        )
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(15):
                while not (await proc.stdout.readline()).startswith(b"--- "):
                    pass
            assert not ignores_sigint(proc.pid), "its own handler, not the inherited SIG_IGN"
            proc.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(proc.communicate(), 10)
            assert proc.returncode == 0, err.decode()
            assert b"Traceback" not in err
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


# -- the screen, rendered from a status object (no daemon) -------------------------------------


def status(**overrides: Any) -> dict[str, Any]:
    now = time.time()
    child = {
        "state": "RUNNING",
        "pid": 101,
        "version": "1.0.0",
        "role": "active",
        "told_epoch": 3,
        "uptime_s": 12.0,
        "restarts": 0,
        "last_exit": None,
        "protocol": True,
        "heartbeat_age_s": 0.2,
        "decisions": 10,
        "executions": 4,
        "rounds": 2,
        "pnl": 1.5,
    }
    st: dict[str, Any] = {
        "active": "blue",
        "epoch": 3,
        "stable": "blue",
        "candidate": None,
        "mode": "blue-green",
        "probation_since": None,
        "probation_s": 1800.0,
        "rejected": {},
        "pending_rollback": None,
        "redis": "up",
        "name": "prod",
        "version": "0.1.0",
        "uptime_s": 60.0,
        "events": 99,
        "pid": 4242,
        "children": {
            "blue": child,
            "green": {
                **child,
                "pid": 102,
                "version": "2.0.0",
                "role": "standby",
                "state": "FATAL",
                "pnl": -2.0,
            },
        },
        "flips": [
            {
                "from": "green",
                "to": "blue",
                "epoch": "3",
                "reason": "pnl_sigma: drift",
                "by": "guard",
                "at": str(now - 30),
                "id": "1-0",
            }
        ],
    }
    st.update(overrides)
    return st


def screen(view: View, width: int = 160) -> str:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(render(view, console))
    return console.export_text()


def test_the_screen_shows_triggers_for_both_colors() -> None:
    triggers = {
        "pnl_sigma": {
            "severity": "high",
            "threshold": 13.0,
            "colors": {
                "blue": {"value": None, "state": "ok", "last_fired": None},
                "green": {"value": 14.5, "state": "fired", "last_fired": time.time() - 90},
            },
        },
        "heartbeat": {
            "severity": "critical",
            "threshold": 5.0,
            "colors": {"blue": {"value": 0.2, "state": "ok", "last_fired": None}, "green": {}},
        },
    }
    text = screen(View(Path("/tmp/x.sock"), 0.5, status=status(triggers=triggers)))
    row = next(line for line in text.splitlines() if line.strip().startswith("pnl_sigma"))
    assert re.search(
        r"pnl_sigma\s+high\s+13\s+-\s+ok\s+never\s+14\.5\s+fired\s+\S+ \(1m3\ds ago\)", row
    ), row
    assert "heartbeat" in text
    assert re.search(r"active\s+BLUE\s+epoch 3", text)
    assert re.search(r"green\s+standby\s+2\.0\.0\s+FATAL", text)
    assert re.search(r"green\W+blue\s+pnl_sigma: drift\s+guard", text)
    assert "no triggers reported" not in text


def test_the_screen_without_triggers_or_daemon() -> None:
    view = View(Path("/tmp/x.sock"), 0.5, status=status())
    assert "no triggers reported" in screen(view)
    view.problem, view.down_since = "no daemon answers", time.monotonic() - 7
    text = screen(view)
    assert "reconnecting to /tmp/x.sock… (daemon unreachable for 7s)" in text
    assert "active   BLUE" in text  # the last view stays
    empty = View(Path("/tmp/x.sock"), 0.5, problem="no daemon answers", down_since=time.monotonic())
    assert "waiting for the daemon" in screen(empty)


def test_decision_rate_spans_polls_and_restarts_with_a_new_daemon() -> None:
    def at(decisions: int, pid: int = 1) -> dict[str, Any]:
        return {"pid": pid, "children": {"blue": {"decisions": decisions}, "green": {}}}

    rate = DecisionRate(window_s=3.0)
    rate.add(0.0, at(0))
    assert rate.per_second("blue") is None  # one poll says nothing about a rate
    rate.add(1.0, at(10))
    rate.add(2.0, at(30))
    assert rate.per_second("blue") == pytest.approx(15.0)
    assert rate.per_second("green") == 0.0
    rate.add(5.0, at(60))  # the window slides: measured from the poll 3 s before
    assert rate.per_second("blue") == pytest.approx((60 - 30) / (5 - 2))
    rate.add(6.0, at(2, pid=2))  # a new daemon counts from zero again
    assert rate.per_second("blue") is None


def test_a_narrow_terminal_loses_whole_columns_not_the_colors_names() -> None:
    triggers = {
        "latency": {
            "severity": "medium",
            "threshold": 2.0,
            "colors": {
                "blue": {"value": 1.0, "state": "ok", "last_fired": None},
                "green": {"value": 2.5, "state": "alert", "last_fired": time.time() - 5},
            },
        }
    }
    text = screen(View(Path("/tmp/x.sock"), 0.5, status=status(triggers=triggers)), width=80)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text
    assert re.search(r"^\s*blue\s+active\s+.*RUNNING", text, re.M), text
    assert re.search(r"^\s*green\s+standby\s+.*FATAL", text, re.M), text
    assert "LAST EXIT" not in text  # the least useful column went first
    assert re.search(r"latency\s+.*1\s+ok\s+2\.5\s+alert", text), text


def test_a_refusal_is_shown_and_polling_goes_on() -> None:
    # No real daemon refuses `status`; a socket that answers as the daemon does when it refuses.
    directory = short_tempdir("as-w-")
    path = directory / "c.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b'{"ok": false, "error": {"code": "forbidden", "message": "not you"}}\n')

    thread = threading.Thread(target=answer)
    thread.start()
    view = View(path, 0.5, status=status())
    try:
        view.poll()
    finally:
        thread.join(10)
        server.close()
        shutil.rmtree(directory, ignore_errors=True)
    assert view.refused
    text = screen(view)
    assert "the daemon refused" in text
    assert "refused (forbidden): not you" in text
    assert "active   BLUE" in text  # the last view stays below
