"""The harness's own guarantees: a daemon that went wrong fails the test that ran it, and the
package imports without side effects (``--doctest-modules`` imports every module)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.harness import PY, _leftovers, _problem_records, _proc_stat, alive, running_daemon

# A config error: ``agentsup run`` exits 78 before it starts anything.
INVALID = {"supervisor": {"initial_active": "red"}}


async def test_an_unexpected_exit_code_fails_the_test_with_the_evidence() -> None:
    with pytest.raises(AssertionError, match=r"exited with 78, expected 0") as failure:
        async with running_daemon(redis_url=None, sections=INVALID, wait_ready=False) as d:
            await d.wait(30)
    assert "supervisor.initial_active" in str(failure.value), "stderr's tail is the evidence"


async def test_a_declared_exit_code_passes() -> None:
    async with running_daemon(
        redis_url=None, sections=INVALID, wait_ready=False, expect_exit=78
    ) as d:
        assert await d.wait(30) == 78


async def test_a_failing_test_keeps_its_error_and_gets_the_daemons_as_notes() -> None:
    async def failing_test() -> None:
        async with running_daemon(redis_url=None, sections=INVALID, wait_ready=False) as d:
            await d.wait(30)
            raise KeyError("the test's own")

    with pytest.raises(KeyError, match="the test's own") as failure:
        await failing_test()
    assert any("exited with 78" in note for note in failure.value.__notes__)


def test_failure_records_are_found_unless_allowed() -> None:
    logged = SimpleNamespace(
        logs=[
            {"event": "ready"},
            {"event": "task_failed", "task": "t"},
            {"event": "alert_failed", "exception": "Traceback ..."},
            {"event": "internal_task_failed"},
            {"event": "child_output", "line": "Traceback (most recent call last):"},
        ]
    )
    found = _problem_records(logged, frozenset())  # type: ignore[arg-type]
    assert [r["event"] for r in found] == ["task_failed", "alert_failed", "internal_task_failed"]
    allowed = _problem_records(logged, {"alert_failed"})  # type: ignore[arg-type]
    assert [r["event"] for r in allowed] == ["task_failed", "internal_task_failed"]


async def test_a_process_left_in_a_childs_group_is_found() -> None:
    # A child (its own group, as the daemon starts it) that started a grandchild, then died.
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 1000 & echo $!; exec sleep 1000"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert leader.stdout is not None
        grandchild = int(leader.stdout.readline())
        started = (leader.pid, _proc_stat(leader.pid)[2])
        assert _leftovers([started]) == sorted([leader.pid, grandchild])
        leader.kill()
        leader.wait()
        assert _leftovers([started]) == [grandchild]
        os.killpg(leader.pid, signal.SIGKILL)
        async with asyncio.timeout(10):
            while alive(grandchild):
                await asyncio.sleep(0.05)
        assert _leftovers([started]) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
        assert leader.stdout is not None
        leader.stdout.close()


def test_importing_every_module_of_the_package_has_no_side_effects(tmp_path: Path) -> None:
    # Doctest collection imports every module under supervisor/: none may start a thread,
    # install a signal handler, configure logging or write a file when imported.
    script = """
import importlib, logging, os, pkgutil, signal, threading
import structlog
import supervisor
signals = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGPIPE)
before = {s: signal.getsignal(s) for s in signals}
names = [
    m.name for m in pkgutil.walk_packages(supervisor.__path__, "supervisor.")
    if not m.name.endswith(".__main__")
]
for name in names:
    importlib.import_module(name)
assert len(names) > 30, names
assert {s: signal.getsignal(s) for s in signals} == before, "a signal handler"
assert threading.active_count() == 1, threading.enumerate()
assert not logging.getLogger().handlers, "logging configured"
assert not structlog.is_configured(), "structlog configured"
assert os.listdir(".") == [], os.listdir(".")
print("ok")
"""
    out = subprocess.run(
        [PY, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stderr
