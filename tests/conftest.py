from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import (
    TEMP_PREFIX,
    TEMP_ROOT,
    RedisServer,
    handed_out,
    running_redis,
    short_tempdir,
)

# Scripts the tests run as agents, not test modules: ``--doctest-modules`` would import them.
collect_ignore = ["agents"]

# New /tmp/as-* directories this session did not make: another session's on a shared machine,
# or made without short_tempdir(); listed at the end, never a failure (they may not be ours).
_STRANGERS = pytest.StashKey[list[Path]]()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server on a temporary Unix socket."""
    with running_redis() as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def no_temporary_directory_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the session if a directory from short_tempdir() outlived it, naming the test that
    asked for it (then remove it, so that one leak does not pile up run after run)."""
    pattern = TEMP_PREFIX + "*"
    before = set(TEMP_ROOT.glob(pattern))
    yield
    leaked = {path: test for path, test in handed_out.items() if path.exists()}
    request.config.stash[_STRANGERS] = sorted(
        set(TEMP_ROOT.glob(pattern)) - before - set(handed_out)
    )
    if leaked:
        for path in leaked:
            shutil.rmtree(path, ignore_errors=True)
        listed = "\n".join(f"  {path}  from {test}" for path, test in sorted(leaked.items()))
        pytest.fail(f"temporary directories left behind (now removed):\n{listed}", pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    strangers = terminalreporter.config.stash.get(_STRANGERS, [])
    if strangers:
        terminalreporter.section("temporary directories not made by short_tempdir()")
        for path in strangers:
            terminalreporter.line(f"{path} (another session's, or a test's own mkdtemp?)")


@pytest.fixture
def orders() -> Iterator[Path]:
    """A directory for tests/agents/order_agent.py's FIFOs (the fence tests tell it what to
    ask for through them)."""
    directory = short_tempdir("as-o-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
