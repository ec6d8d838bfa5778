"""`agentsup demo ab` tells its story and exits 0, with no configuration."""

from __future__ import annotations

import subprocess
import sys


def test_the_ab_demo_runs_to_the_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "demo", "ab"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "blue (A) cashes out at 2.0×, green (B) at 3.0×" in out
    assert ": a_better" in out  # the win rate, called
    assert "no winner on return is honest" in out
    assert "the fence held the split" in out
    assert "crash_target = 2.0 for everyone (blue 2.0, green 2.0)" in out
    assert "ab_stop: winner a (crash_target=2.0)" in out
    assert "B − A win_rate" in out
