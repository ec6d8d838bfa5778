"""`agentsup demo canary` tells its story and exits 0, with no configuration."""

from __future__ import annotations

import subprocess
import sys


def test_the_canary_demo_runs_to_the_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "demo", "canary"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "green has 5 % of the capital, blue 95 %" in out
    assert "the judge passes the 5 % step" in out
    assert "green gets 20 %" in out
    assert "the stake sizing bug doubles every stake" in out
    assert "the judge aborts (running look)" in out
    assert ": stake high (candidate" in out
    assert "green v2.0.0 is rejected" in out
    assert "blue -> blue   by judge            canary_abort: stake high" in out
