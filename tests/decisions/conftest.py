"""Fixtures of the decision log's tests: a directory for a log, and logs written by the real
writer (supervisor.decisions.DecisionLog) with real, unstarted Child objects."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import short_tempdir

# Scripts the tests run as agents, not test modules.
collect_ignore = ["agents"]


@pytest.fixture
def log_dir() -> Iterator[Path]:
    directory = short_tempdir("as-dl-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
