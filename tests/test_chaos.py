"""The chaos run's short version (``bench/chaos.py --quick``) as a test of the whole fence.

Thirteen randomized fault schedules against a real redis-server, a real daemon process and two
real SDK agents asking for permits all the time (see bench/chaos.py for the world, the faults
and the checker). The run must find no violation of DESIGN.md's invariants, and must really
have tried every kind of fault: a run that skipped them would prove nothing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CHAOS = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"
SEED = 7
# The kinds of fault the issue asks the chaos run to compose.
KINDS = {
    "kill9_daemon",  # at any moment, mid-flip, mid-start, while Redis is away
    "sigstop_daemon",
    "sigstop_child",
    "kill9_child",
    "redis_restart_empty",
    "redis_restore_dump",
    "redis_down",
    "redis_lost_mid_restore",  # Redis goes back in time again while the daemon restores it
    "second_daemon",
    "operator_race",  # a raw SET racing a switch and a rollback
    "incrby_epoch",
    "garbage_lines",
    "switch",
}


def counts(line: str) -> dict[str, int]:
    """``name 3, other name 1`` -> {"name": 3, "other name": 1}."""
    found = {}
    for item in line.split(", "):
        name, _, n = item.rpartition(" ")
        if n.isdigit():
            found[name] = int(n)
    return found


def run_chaos(*args: str, timeout: float) -> tuple[int, str, str]:
    """Run bench/chaos.py; past ``timeout`` it gets SIGTERM, which it answers by stopping its
    processes, removing its directory and printing what it found so far."""
    proc = subprocess.Popen(
        [sys.executable, str(CHAOS), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=90)
        pytest.fail(f"the chaos run took over {timeout} s:\n{out}\n{err[-3000:]}")
    return proc.returncode, out, err


def test_a_quick_chaos_run_tries_every_fault_and_finds_no_violation() -> None:
    rc, out, err = run_chaos("--quick", "--seed", str(SEED), timeout=150)
    said = f"stdout:\n{out}\nstderr:\n{err[-3000:]}"
    assert re.search(r"^chaos: seed \d+, schedules run 13 ", out, re.M), said
    assert re.search(r"^violations: 0 \(target 0\)$", out, re.M), said
    assert rc == 0, said
    injected = re.search(r"^faults injected: (.*)$", out, re.M)
    assert injected, said
    tried = counts(injected.group(1))
    assert {k for k in KINDS if tried.get(k, 0) < 1} == set(), said
    permits = re.search(r"^permits: (.*?) \|", out, re.M)
    assert permits, said
    answers = counts(permits.group(1))
    # Evidence that the agents asked all along and the fence answered both ways.
    assert answers.get("ok", 0) > 50, said
    assert answers.get("duplicate", 0) > 0, said
