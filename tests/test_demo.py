"""`agentsup demo` tells the whole story and exits 0, with no configuration."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_to_the_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "demo"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "blue v1.0.0 in charge" in out
    assert "flip: green v2.0.0 in charge" in out
    assert "trigger 'exception' (critical)" in out
    assert "rollback: blue back in charge" in out
    assert "green v2.0.0 is rejected" in out
    assert "green -> blue   by guard            exception:" in out
    assert "active: blue" in out
