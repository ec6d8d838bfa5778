"""Mutation testing of the code that decides who acts: does a one-line change fail a test?

    .venv/bin/python bench/mutation.py                # the whole run (see the README for its time)
    .venv/bin/python bench/mutation.py --list         # the mutants, nothing run
    .venv/bin/python bench/mutation.py --only supervisor/arbiter/scripts.py --max 10
    .venv/bin/python bench/mutation.py --json         # one JSON object on stdout

What is mutated: the Lua scripts inside :mod:`supervisor.arbiter.scripts` (operator and
condition flips, a ``redis.call`` statement deleted, a returned status swapped), and the Python
of the arbiter, the epoch reservation (``durable.py``), the rollout and the responder (every
comparison, boolean operator, ``not``, ``+``/``-``, ``max``/``min``, ``return``, ``if``
condition, call statement, bool assignment and ``Final`` number), plus a seeded sample of the
same operators in the guard's evaluators. Logging calls are never removed (a log line is not a
decision), nor is anything in a function that only formats or reports (``SKIP_FUNCTIONS``).

How: the working tree is copied once (without ``.venv`` and ``.git``) into a private
directory, and that copy again for the second worker; each worker edits *its* copy in place,
one mutant at a time, and runs pytest there with ``PYTHONPATH`` naming the copy first, so the
tests, the daemon they start (``python -m supervisor``) and its children all import the
mutant, and nobody else's test run ever sees it. The copy's temporary directories go under a
private root, removed after every run. Every mutated file is written back and checked by its
SHA-256 before the next mutant (and on SIGINT/SIGTERM); byte code is never written
(``PYTHONDONTWRITEBYTECODE``) and each write gets a fresh mtime, so no stale ``.pyc`` of
another mutant can be imported.

For each mutant the tests most likely to kill it run first (``TESTS``: its unit tests, then the
end-to-end tests that exercise it) with ``-x``; a failure, an error or the per-mutant time
limit kills it. Only the survivors run the whole suite (``-x``) to confirm they survive. Tests
that fail on the unmutated copy (the tree is shared and may be mid-edit) are deselected and
listed. Equivalent mutants (``EQUIVALENT``, each with the reason) are listed, not run.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import io
import itertools
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tokenize
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"

SCRIPTS = "supervisor/arbiter/scripts.py"
DURABLE = "supervisor/arbiter/durable.py"
# Every mutant of these files is run (the Lua of scripts.py too).
FULL = (
    SCRIPTS,
    DURABLE,
    "supervisor/arbiter/arbiter.py",
    "supervisor/rollout/rollout.py",
    "supervisor/rollout/state.py",
    "supervisor/rollout/strategy.py",
    "supervisor/rollout/blue_green.py",
    "supervisor/rollout/responder.py",
)
# A seeded sample of these (``--sample`` per file).
SAMPLED = (
    "supervisor/guard/critical.py",
    "supervisor/guard/heartbeat.py",
    "supervisor/guard/pnl.py",
    "supervisor/guard/latency.py",
    "supervisor/guard/escrow.py",
    "supervisor/guard/double_spend.py",
)

# The tests most likely to kill a mutant of each file, in the order they run (fast first).
_E2E_FENCE = [
    "tests/test_blue_green.py",
    "tests/test_fence.py",
    "tests/test_rollout.py",
    "tests/test_redis_outage.py",
    "tests/test_lifecycle.py",
]
_E2E_GUARD = ["tests/test_critical_triggers.py", "tests/guard/test_guard_e2e.py"]
# Rollout-level tests on a real Redis (no daemon) first, the canary's too: fast.
_ROLLOUT = [
    "supervisor/rollout",
    "tests/rollout",
    "tests/canary/test_canary_record.py",
    "tests/canary/test_rollout_canary.py",
    "tests/test_blue_green.py",
    "tests/test_rollout.py",
    "tests/canary/test_canary.py",
    "tests/test_fence.py",
    "tests/test_redis_outage.py",
    "tests/test_lifecycle.py",
    *_E2E_GUARD,
    "tests/arbiter/test_restart.py",
]
TESTS: dict[str, list[str]] = {
    SCRIPTS: [
        "tests/arbiter/test_scripts.py",
        # The allocation fence of the canary and the A/B test, one script call at a time.
        "tests/canary/test_alloc_script.py",
        "tests/ab/test_ab_fence.py",
        "tests/arbiter/test_arbiter.py",
        "tests/test_agent.py",
        *_E2E_FENCE,
    ],
    DURABLE: ["tests/arbiter", *_E2E_FENCE],
    "supervisor/arbiter/arbiter.py": ["tests/arbiter", *_E2E_FENCE, "tests/test_agent.py"],
    "supervisor/rollout/rollout.py": _ROLLOUT,
    "supervisor/rollout/state.py": _ROLLOUT,
    "supervisor/rollout/strategy.py": _ROLLOUT,
    "supervisor/rollout/blue_green.py": _ROLLOUT,
    "supervisor/rollout/responder.py": [
        "tests/guard/test_responder.py",
        *_E2E_GUARD,
        "tests/test_redis_outage.py",
        "tests/test_stalls.py",
        "tests/test_rollout.py",
    ],
}
for _name in ("critical", "heartbeat", "pnl", "latency", "escrow", "double_spend"):
    TESTS[f"supervisor/guard/{_name}.py"] = [
        f"supervisor/guard/{_name}.py",  # its doctests
        f"tests/guard/test_{_name}.py",
        *(
            {
                "pnl": ["tests/guard/test_pnl_baseline.py", "tests/guard/test_pnl_new_stable.py"],
                "latency": ["tests/guard/test_latency_new_candidate.py"],
                "escrow": ["tests/guard/test_escrow_acting.py"],
            }.get(_name, [])
        ),
        "tests/guard/test_registry.py",
        *_E2E_GUARD,
        "tests/test_stalls.py",
    ]

# Functions that only format or report: nothing in them decides who acts.
SKIP_FUNCTIONS = {
    "describe",
    "state",
    "__len__",
    "_describe",
    "_show",
    "_epoch",
    "numbers",
    "reason",
    "_holder_text",
    "permit_stats",
    "flips",
    "alert_from_verdict",
}
# The epoch mark (the reservation, fsynced, and the mark of the highest epoch told): with the
# scripts, every one of its mutants must be killed. All of these functions, and any line
# elsewhere in these files that speaks of the reservation or the told mark.
EPOCH_MARK = {
    DURABLE: ("write_atomically", "EpochReservation", "ToldMark"),
    "supervisor/arbiter/arbiter.py": ("Arbiter.reserve", "Arbiter.telling"),
    "supervisor/rollout/rollout.py": (),
}
LOG_NAMES = {"log", "level", "logger"}

# Mutants that cannot change behaviour, keyed by (file, function, the line as it reads, the
# line as the mutant reads it: as --list shows them): listed with the reason, never run.
_A = "supervisor/arbiter/arbiter.py"
_R = "supervisor/rollout/rollout.py"
EQUIVALENT: dict[tuple[str, str, str, str], str] = {
    (
        SCRIPTS,
        "PERMIT",
        "if not behind and taken > share * total + (tonumber(alloc[6] or '0') or 0)"
        " + 1e-9 * total then",
        "if not behind and taken >= share * total + (tonumber(alloc[6] or '0') or 0)"
        " + 1e-9 * total then",
    ): (
        "a tie to the last bit: > and >= differ only when the stake lands exactly on the bound "
        "plus 1e-9 of the total, a tolerance there to keep float rounding off the bound"
    ),
    (
        SCRIPTS,
        "FLIP",
        "if floor > epoch then epoch = floor end",
        "if floor >= epoch then epoch = floor end",
    ): "when floor equals epoch, assigning it changes nothing",
    (
        SCRIPTS,
        "FINISH_RESTORE",
        "if (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) < (tonumber(ARGV[2]) or 0) then",
        "if (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) <= (tonumber(ARGV[2]) or 0) then",
    ): "when the counter equals ours, setting it to ours changes nothing",
    (
        SCRIPTS,
        "LEASE",
        "if now - since >= ttl then return take() end",
        "if now - since > ttl then return take() end",
    ): "a claim taken one millisecond later: the script reads the clock, no caller sets it",
    (
        DURABLE,
        "_int",
        "return value if type(value) is int and value >= 0 else 0",
        "return value if type(value) is int and value > 0 else 0",
    ): "for 0 both branches give 0",
    (
        DURABLE,
        "ToldMark.write",
        "if epoch <= self.value:",
        "if epoch < self.value:",
    ): "an epoch equal to the mark rewrites the same bytes",
    (
        DURABLE,
        "PermitJournal.compact_begin",
        "if grant is not None and grant.expires_ms > now_ms:",
        "if grant is not None and grant.expires_ms >= now_ms:",
    ): "a grant expiring this very millisecond kept by compaction is dropped when read "
    "(grants() filters again)",
    **{
        (DURABLE, f"PermitJournal.{f}", "self.failures += 1", "self.failures -= 1"): (
            "nothing reads PermitJournal.failures (the daemon counts failures through "
            "Arbiter.on_write_failure): a dead counter"
        )
        for f in ("append", "sync")
    },
    (_A, "Arbiter.__init__", "self._tailing = False", "self._tailing = True"): (
        "only makes permit() note its sequence numbers without a tail to read them: the set "
        "stays bounded by the same eviction"
    ),
    (
        _A,
        "Arbiter.reserve",
        "if not self.reservation.covers(epoch):",
        "if True:",
    ): "EpochReservation.reserve returns at once when the ceiling covers the epoch",
    (
        _A,
        "Arbiter.adopt",
        "observed = Observed(AdoptStatus(status), epoch, active or None, owner, "
        "int(seq_text or 0))",
        "observed = Observed(AdoptStatus(status), epoch, active or None, owner, "
        "int(seq_text and 0))",
    ): "Observed.seq is only logged",
    (_A, "Arbiter.adopt", "if observed.status is AdoptStatus.ADOPTED:", "if True:"): (
        "only an epoch above `seen` matters, which adopt answers as CHANGED; the rollout raises "
        "`seen` to it right after (and a flip starts from Redis's epoch anyway)"
    ),
    (_A, "Arbiter.permit", "if seq > self.seq:", "if True:"): (
        "an `ok` answer's sequence is never below self.seq: the script refuses a counter "
        "under it (`regressed`)"
    ),
    (_A, "Arbiter.permit", "if seq > self.seq:", "if seq >= self.seq:"): (
        "an equal sequence assigns the same value"
    ),
    (_A, "Arbiter.permit", "if self._tailing:", "if True:"): (
        "only notes sequence numbers without a tail to read them: bounded by the same eviction"
    ),
    **{
        (_A, "Arbiter.lease_holder_raw", "return None if raw is None else _text(raw)", after): (
            "dead code: nothing calls Arbiter.lease_holder_raw"
        )
        for after in ("return None", "return None if raw is not None else _text(raw)")
    },
    **{
        (_A, "Arbiter.import_grants", before, after): (
            "only the size of the batches changes (every key is imported all the same)"
        )
        for before, after in (
            ("if len(batch) >= 500:", "if False:"),
            ("if len(batch) >= 500:", "if True:"),
            ("if len(batch) >= 500:", "if len(batch) > 500:"),
            ("if batch:", "if True:"),
        )
    },
    (
        _A,
        "Arbiter._import",
        "if value is None or not isinstance(ttl, int) or ttl <= 0:",
        "if value is None or not isinstance(ttl, int) or ttl < 0:",
    ): "a key with 0 ms to live is journaled as expiring now, and grants() drops it when read",
    (_A, "Arbiter._lease_gone", "if self.lease_ttl_s is not None:", "if True:"): (
        "lease_ttl_s is set by take_lease(), the only way to hold a lease that a script can "
        "then find gone"
    ),
    (_A, "Arbiter.release_lease", "if not self.holds_lease:", "if False:"): (
        "the release script deletes the lease only when it is ours"
    ),
    (
        _A,
        "Arbiter.read",
        '_text(owner) if owner is not None else "",',
        '_text(owner) if owner is None else "",',
    ): "nothing reads Truth.owner",
    (_A, "Arbiter.save_rollout", "if keep:", "if True:"): (
        "the rollout's fields always name the mode and the stable color: never empty"
    ),
    (_A, "Arbiter.save_rollout", "if drop:", "if True:"): (
        "a confirm always clears the candidate and its probation: never empty"
    ),
    (_A, "Arbiter.enable_notifications", "if wanted != flags:", "if True:"): (
        "sets the flags Redis already has"
    ),
    **{
        (_R, "Rollout.start", "if truth.seq > self.arbiter.seq:", after): (
            "imports keys already journaled: duplicate journal lines, restored by the same "
            "SET NX (only the journal grows)"
        )
        for after in ("if True:", "if truth.seq >= self.arbiter.seq:")
    },
    **{
        (_R, "Rollout.start", "if truth.active is not None and observed is None:", after): (
            "the branch only logs (active_key_invalid); where the flip goes is decided the line "
            "above"
        )
        for after in (
            "if False:",
            "if True:",
            "if truth.active is None and observed is None:",
            "if truth.active is not None or observed is None:",
            "if truth.active is not None and observed is not None:",
        )
    },
    (
        _R,
        "Rollout._end_canary",
        "if nxt.candidate is not None and nxt.candidate is not active:",
        "if True:",
    ): (
        "every caller puts a candidate in charge back itself, with a probation clock "
        "(switch, _adopted, _changed, and start's by-hand branch since the candidate without "
        "a clock was fixed: tests/rollout/test_canary_ended_by_hand.py)"
    ),
    (
        _R,
        "Rollout._end_canary",
        "if nxt.candidate is not None and nxt.candidate is not active:",
        "if nxt.candidate is not None or nxt.candidate is not active:",
    ): (
        "past its first line the state is a canary's, whose candidate is never None "
        "(canary_start sets it, RolloutState.load drops a canary without one): for a candidate "
        "that is set both conditions agree"
    ),
    (
        _R,
        "Rollout._canary",
        "if self.state.mode is not Mode.CANARY or c is None:",
        "if self.state.mode is not Mode.CANARY and c is None:",
    ): (
        "the mode and the canary's state go together: every change sets both, and "
        "RolloutState.load makes a canary without its state blue-green"
    ),
    (_R, "Rollout.reconcile", "if observed.status is AdoptStatus.SAME:", "if False:"): (
        "SAME is Redis at our epoch with its owner holding the key: the checks below find "
        "nothing in it either (_changed returns None)"
    ),
    (
        _R,
        "Rollout.reconcile",
        "and as_color(observed.active) is not s.active",
        "and as_color(observed.active) is s.active",
    ): (
        "the disjunct it is in (Redis at our epoch, its owner holding the key) is exactly what "
        "ADOPT answers SAME, returned above: never reached, with either comparison"
    ),
    (
        "supervisor/guard/latency.py",
        "Latency._judge",
        "ratio = self.candidate.median / (stable_ms if stable_ms > FLOOR_MS else FLOOR_MS)",
        "ratio = self.candidate.median / (stable_ms if stable_ms >= FLOOR_MS else FLOOR_MS)",
    ): "a stable median equal to the floor divides by the same number either way",
    (
        "supervisor/guard/escrow.py",
        "EscrowGap.event",
        "if due < self._next_due:",
        "if due <= self._next_due:",
    ): ("an equal due time assigns the same value"),
    (
        "supervisor/rollout/strategy.py",
        "strategy_for",
        "if strategy is None:",
        "if True:",
    ): "fills the table again at every call, with new instances of strategies that hold no state",
    ("supervisor/guard/pnl.py", "SeedRule.reset", "self._recent.clear()", "pass"): (
        "reset's `rounds = 0` holds the seed rule back until `window` new rounds have replaced "
        "every slot of the ring; its running total is then the sum of the new rounds"
    ),
    (_A, "Arbiter.replicas", "return 0", "return None"): (
        "INFO failed: replica_count None and 0 both mean no WAIT"
    ),
    **{
        (_A, "Arbiter.wait_replica", before, "return None"): (
            "flip() ignores what wait_replica() returns"
        )
        for before in ("return int(await self.redis.wait(1, timeout_ms))", "return 0")
    },
}


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    line: int
    kind: str
    start: int  # character offsets of the replaced span in the file's text
    end: int
    replacement: str
    before: str  # the lines touched, as they read, and as the mutant reads them
    after: str
    function: str  # the enclosing function (or the Lua script's name)
    group: str  # scripts, epoch_mark or rest
    equivalent: str = ""  # the reason, for a mutant that cannot change behaviour

    def apply(self, text: str) -> str:
        return text[: self.start] + self.replacement + text[self.end :]

    def label(self) -> str:
        return f"{self.file}:{self.line}: {self.before} → {self.after}"


# ------------------------------------------------------------------------- generation


class _Source:
    """A file's text with the helpers the generators need: offsets from ast positions (ast
    columns count UTF-8 bytes), and a copy with comments and strings blanked out."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        self.masked = self._mask()

    def offset(self, lineno: int, col_bytes: int) -> int:
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode()[:col_bytes].decode())

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (
            self.offset(node.lineno, node.col_offset),  # type: ignore[attr-defined]
            self.offset(node.end_lineno, node.end_col_offset),  # type: ignore[attr-defined]
        )

    def _mask(self) -> str:
        chars = list(self.text)
        tokens = tokenize.generate_tokens(io.StringIO(self.text).readline)
        for tok in tokens:
            if tok.type in (tokenize.COMMENT, tokenize.STRING):
                a = self.starts[tok.start[0] - 1] + tok.start[1]
                b = self.starts[tok.end[0] - 1] + tok.end[1]
                for i in range(a, b):
                    if chars[i] != "\n":
                        chars[i] = " "
        return "".join(chars)

    def line_of(self, offset: int) -> int:
        lo, hi = 0, len(self.starts) - 1
        while lo < hi - 1:
            mid = (lo + hi) // 2
            if self.starts[mid] <= offset:
                lo = mid
            else:
                hi = mid
        return lo + 1

    def show(self, start: int, end: int, replacement: str) -> tuple[str, str]:
        """The touched lines before and after the edit, whitespace collapsed."""
        a = self.starts[self.line_of(start) - 1]
        b = self.starts[self.line_of(max(start, end - 1))]

        def squash(s: str) -> str:
            s = " ".join(s.split())
            return s if len(s) <= 110 else s[:107] + "..."

        before = self.text[a:b]
        return squash(before), squash(before[: start - a] + replacement + before[end - a :])


_COMPARE_SWAPS: dict[type, tuple[str, str]] = {
    ast.Lt: ("<", "<="),
    ast.LtE: ("<=", "<"),
    ast.Gt: (">", ">="),
    ast.GtE: (">=", ">"),
    ast.Eq: ("==", "!="),
    ast.NotEq: ("!=", "=="),
    ast.Is: ("is", "is not"),
    ast.IsNot: ("is not", "is"),
    ast.In: ("in", "not in"),
    ast.NotIn: ("not in", "in"),
}
_OP_PATTERN = {
    "<": r"<(?!=)",
    "<=": r"<=",
    ">": r">(?!=)",
    ">=": r">=",
    "==": r"==",
    "!=": r"!=",
    "is": r"\bis\b(?!\s+not\b)",
    "is not": r"\bis\s+not\b",
    "in": r"(?<!not )\bin\b",
    "not in": r"\bnot\s+in\b",
    "and": r"\band\b",
    "or": r"\bor\b",
    "+": r"\+(?!=)",
    "-": r"-(?!=)",
    "+=": r"\+=",
    "-=": r"-=",
}


def _is_text(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str | bytes)
    )


def _is_boolean(node: ast.AST) -> bool:
    return isinstance(node, ast.Compare | ast.BoolOp) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
    )


def _is_log_call(node: ast.AST) -> bool:
    if isinstance(node, ast.Await):
        node = node.value
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    while isinstance(func, ast.Attribute):
        func = func.value
    return isinstance(func, ast.Name) and func.id in LOG_NAMES


class _PythonMutator(ast.NodeVisitor):
    def __init__(self, src: _Source) -> None:
        self.src = src
        self.scope: list[str] = []
        self.found: list[tuple[int, int, str, str, str]] = []  # start, end, kind, new, function

    def add(self, start: int, end: int, kind: str, new: str) -> None:
        if not self.scope or self.scope[-1] not in SKIP_FUNCTIONS:
            self.found.append((start, end, kind, new, ".".join(self.scope)))

    def _op_between(self, left: ast.AST, right: ast.AST, op: str) -> tuple[int, int] | None:
        a, b = self.src.span(left)[1], self.src.span(right)[0]
        m = re.search(_OP_PATTERN[op], self.src.masked[a:b])
        return (a + m.start(), a + m.end()) if m else None

    def _quiet(self, node: ast.AST) -> None:
        """Nothing inside is mutated: an assert, a log call's arguments, a log level picked."""

    def visit_Assert(self, node: ast.Assert) -> None:
        self._quiet(node)

    def _scoped(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _scoped

    def visit_Compare(self, node: ast.Compare) -> None:
        left: ast.AST = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            old, new = _COMPARE_SWAPS[type(op)]
            where = self._op_between(left, right, old)
            if where:
                self.add(*where, "compare", new)
            left = right
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
        spans = [self._op_between(a, b, old) for a, b in itertools.pairwise(node.values)]
        if spans and all(spans):
            # One mutant for the whole chain: every operator of it flipped.
            start, end = spans[0][0], spans[-1][1]  # type: ignore[index]
            text = self.src.text[start:end]
            for s, e in reversed(spans):  # type: ignore[misc]
                text = text[: s - start] + new + text[e - start :]
            self.add(start, end, "boolop", text)
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            start = self.src.span(node)[0]
            self.add(start, self.src.span(node.operand)[0], "not", "")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Add | ast.Sub) and not (
            _is_text(node.left) or _is_text(node.right)
        ):
            old, new = ("+", "-") if isinstance(node.op, ast.Add) else ("-", "+")
            where = self._op_between(node.left, node.right, old)
            if where:
                self.add(*where, "arith", new)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.op, ast.Add | ast.Sub) and not _is_text(node.value):
            old, new = ("+=", "-=") if isinstance(node.op, ast.Add) else ("-=", "+=")
            where = self._op_between(node.target, node.value, old)
            if where:
                self.add(*where, "arith", new)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in ("max", "min"):
            start, end = self.src.span(node.func)
            self.add(start, end, "minmax", "min" if node.func.id == "max" else "max")
        self.generic_visit(node)

    def visit_Return(self, node: ast.Return) -> None:
        value = node.value
        if value is not None and not (isinstance(value, ast.Constant) and value.value is None):
            start, end = self.src.span(value)
            if isinstance(value, ast.Constant) and isinstance(value.value, bool):
                self.add(start, end, "return", str(not value.value))
            elif _is_boolean(value):
                self.add(start, end, "return", f"not ({self.src.text[start:end]})")
            else:
                self.add(start, end, "return", "None")
        self.generic_visit(node)

    def _condition(self, node: ast.If | ast.While) -> None:
        start, end = self.src.span(node.test)
        self.add(start, end, "if_true", "True")
        if isinstance(node, ast.If):
            self.add(start, end, "if_false", "False")
        self.generic_visit(node)

    visit_If = visit_While = _condition

    def visit_Expr(self, node: ast.Expr) -> None:
        call = node.value.value if isinstance(node.value, ast.Await) else node.value
        if _is_log_call(node.value):
            return self._quiet(node)
        if isinstance(call, ast.Call):
            self.add(*self.src.span(node), "call", "pass")
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        if any(isinstance(t, ast.Name) and t.id in LOG_NAMES for t in node.targets):
            return self._quiet(node)
        value = node.value
        if isinstance(value, ast.Constant) and isinstance(value.value, bool):
            self.add(*self.src.span(value), "constant", str(not value.value))
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        value = node.value
        final = "Final" in ast.unparse(node.annotation)
        if (
            final
            and isinstance(value, ast.Constant)
            and isinstance(value.value, int | float)
            and not isinstance(value.value, bool)
        ):
            self.add(*self.src.span(value), "constant", "0" if value.value else "1")
        self.generic_visit(node)


def _mask_lua(text: str) -> str:
    """Lua with the contents of its quoted strings blanked (the scripts use single quotes)."""
    return re.sub(r"'[^'\n]*'", lambda m: "'" + " " * (len(m.group()) - 2) + "'", text)


# The status a Lua ``return`` is swapped to: a refusal becomes a yes, a yes a refusal.
_STATUS_SWAPS = {
    "PERMIT": {"ok": "duplicate", "*": "ok"},
    "FLIP": {"ok": "dup", "*": "ok"},
    "ADOPT": {"same": "changed", "*": "same"},
    "LEASE": {"mine": "held", "held": "mine"},
}
_LUA_COMPARE = {
    "~=": ["=="],
    "==": ["~="],
    "<": ["<=", ">"],
    "<=": ["<"],
    ">": [">=", "<"],
    ">=": [">"],
}


def _lua_mutants(src: _Source, name: str, a: int, b: int) -> list[tuple[int, int, str, str]]:
    """Mutants of the Lua text ``src.text[a:b]`` (the body of script ``name``)."""
    lua = src.text[a:b]
    masked = _mask_lua(lua)
    out: list[tuple[int, int, str, str]] = []
    for m in re.finditer(r"~=|==|<=|>=|<|>", masked):
        for new in _LUA_COMPARE[m.group()]:
            out.append((a + m.start(), a + m.end(), "lua_compare", new))
    for m in re.finditer(r"\b(and|or)\b", masked):
        out.append(
            (a + m.start(), a + m.end(), "lua_boolop", "or" if m.group() == "and" else "and")
        )
    for m in re.finditer(r"\+\s*1\b", masked):
        out.append((a + m.start(), a + m.end(), "lua_arith", "+ 0"))
    for m in re.finditer(r"\bif (.+?) then\b", masked):
        cond = lua[m.start(1) : m.end(1)]
        out.append((a + m.start(1), a + m.end(1), "lua_not", f"not ({cond})"))
    for m in re.finditer(r"redis\.call\(", masked):
        head = masked[masked.rfind("\n", 0, m.start()) + 1 : m.start()]
        if head.strip() not in ("", "then", "else") and not head.rstrip().endswith(
            (" then", "else")
        ):
            continue  # an expression: its value is used
        depth, i = 0, m.end() - 1
        while True:
            depth += {"(": 1, ")": -1}.get(masked[i], 0)
            if depth == 0:
                break
            i += 1
        out.append((a + m.start(), a + i + 1, "lua_delete_call", ""))
    swaps = _STATUS_SWAPS.get(name, {})
    for m in re.finditer(r"(?:return \{|answer\()'([a-z_]+)'", lua):
        old = m.group(1)
        new = swaps.get(old, swaps.get("*", old))
        if new != old:
            out.append((a + m.start(1), a + m.end(1), "lua_status", new))
    for m in re.finditer(r"\breturn ([01])\b", masked):
        out.append((a + m.start(1), a + m.end(1), "lua_status", "1" if m.group(1) == "0" else "0"))
    return out


def _group(file: str, function: str, line: str) -> str:
    if file == SCRIPTS:
        return "scripts"
    if file in EPOCH_MARK and ("reserv" in line or "told" in line):
        return "epoch_mark"
    for prefix in EPOCH_MARK.get(file, ()):
        if function == prefix or function.startswith(prefix + "."):
            return "epoch_mark"
    return "rest"


def generate(file: str, text: str) -> list[Mutant]:
    """Every mutant of ``file`` (its whole text), in the order they appear."""
    src = _Source(file, text)
    tree = ast.parse(text)
    raw: list[tuple[int, int, str, str, str]] = []
    if file == SCRIPTS:
        for node in tree.body:
            target = (
                node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
            )
            value = getattr(node, "value", None)
            if not (isinstance(target, ast.Name) and isinstance(value, ast.Constant)):
                continue
            if not (isinstance(value.value, str) and "redis.call(" in value.value):
                continue  # not a script
            start, end = src.span(value)
            body_start, body_end = start + 3, end - 3
            if text[body_start:body_end] != value.value:
                raise SystemExit(f"{file}: {target.id} is not a plain triple-quoted string")
            raw += [(*m, target.id) for m in _lua_mutants(src, target.id, body_start, body_end)]
    else:
        visitor = _PythonMutator(src)
        visitor.visit(tree)
        raw = visitor.found
    stem = Path(file).stem
    mutants: list[Mutant] = []
    seen: set[tuple[int, int, str]] = set()
    for start, end, kind, new, function in sorted(raw, key=lambda m: (m[0], m[1], m[2], m[3])):
        if (start, end, new) in seen or text[start:end] == new:
            continue
        seen.add((start, end, new))
        mutated = text[:start] + new + text[end:]
        if file != SCRIPTS:
            try:
                ast.parse(mutated)
            except SyntaxError:
                continue
        line = src.line_of(start)
        before, after = src.show(start, end, new)
        mutants.append(
            Mutant(
                id=f"{stem}-{len(mutants) + 1}",
                file=file,
                line=line,
                kind=kind,
                start=start,
                end=end,
                replacement=new,
                before=before,
                after=after,
                function=function,
                group=_group(file, function, src.lines[line - 1]),
                equivalent=EQUIVALENT.get((file, function, before, after), ""),
            )
        )
    return mutants


def select(
    texts: dict[str, str], *, seed: int, sample: int, only: list[str], limit: int | None
) -> list[Mutant]:
    """The mutants of this run: all of FULL, a seeded sample of SAMPLED, then ``limit``."""
    chosen: list[Mutant] = []
    for file in (*FULL, *SAMPLED):
        if only and not any(file == o or file.endswith("/" + o) for o in only):
            continue
        mutants = generate(file, texts[file])
        if file in SAMPLED and len(mutants) > sample:
            rng = random.Random(f"{seed}:{file}")
            keep = set(rng.sample(range(len(mutants)), sample))
            mutants = [m for i, m in enumerate(mutants) if i in keep]
        chosen += mutants
    if limit is not None and len(chosen) > limit:
        rng = random.Random(f"{seed}:max")
        keep = set(rng.sample(range(len(chosen)), limit))
        chosen = [m for i, m in enumerate(chosen) if i in keep]
    return chosen


# ------------------------------------------------------------------------- the copies

_PROBE = '''
"""Loaded by bench/mutation.py into its pytest runs: each test's outcome and time, as JSON."""
import json, os

_results = {}


def pytest_runtest_logreport(report):
    r = _results.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0})
    r["seconds"] += report.duration
    if report.failed:
        r["outcome"] = "failed" if report.when == "call" else "error"
    elif report.skipped and r["outcome"] == "passed":
        r["outcome"] = "skipped"


def pytest_collectreport(report):
    if report.failed:
        _results[report.nodeid or "<collection>"] = {"outcome": "error", "seconds": 0.0}


def pytest_sessionfinish(session, exitstatus):
    with open(os.environ["MUTATION_PROBE_OUT"], "w") as f:
        json.dump(_results, f)
'''

_IGNORED = shutil.ignore_patterns(
    ".venv", ".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
    ".hypothesis", "*.egg-info", ".coverage*",
)  # fmt: skip


@dataclass
class Outcome:
    rc: int | None  # None: killed at the time limit
    seconds: float
    tests: dict[str, dict[str, Any]]

    @property
    def failed(self) -> list[str]:
        return [n for n, r in self.tests.items() if r["outcome"] in ("failed", "error")]


class Workspace:
    """A private copy of the tree that one worker mutates in place."""

    def __init__(self, root: Path, source: Path) -> None:
        self.root = root
        self.tree = root / "tree"
        self.tmp = root / "tmp"  # the tests' temporary directories (short: sockets live there)
        shutil.copytree(source, self.tree, ignore=_IGNORED, symlinks=True)
        self.tmp.mkdir()
        (root / "mutation_probe.py").write_text(_PROBE)
        self._redirect_temp_root()
        self.originals = {f: (self.tree / f).read_bytes() for f in (*FULL, *SAMPLED)}
        self._clock = int(time.time()) + 10
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    def _redirect_temp_root(self) -> None:
        """The copy's tests make their temporary directories under our own root, so that a
        run cut off at its time limit leaves nothing in /tmp for others to wonder about."""
        path = self.tree / "tests" / "redis_server.py"
        text, found = re.subn(
            r'^TEMP_ROOT = Path\("[^"]*"\)$',
            f'TEMP_ROOT = Path("{self.tmp}")',
            path.read_text(),
            flags=re.M,
        )
        if found != 1:
            raise SystemExit(f"{path}: no TEMP_ROOT = Path(...) to point at a private directory")
        path.write_text(text)

    def env(self, probe_out: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
        env.update(
            PYTHONPATH=f"{self.tree}:{self.root}",
            PYTHONDONTWRITEBYTECODE="1",
            MUTATION_PROBE_OUT=str(probe_out),
        )
        env.pop("PYTEST_ADDOPTS", None)
        return env

    def write(self, file: str, data: bytes) -> None:
        """Write ``file`` with an mtime no earlier write had (a .pyc keyed on mtime and size
        could otherwise pass for another version of the same length)."""
        path = self.tree / file
        path.write_bytes(data)
        self._clock += 2
        os.utime(path, (self._clock, self._clock))
        for pyc in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
            pyc.unlink(missing_ok=True)

    def restore(self, file: str) -> None:
        self.write(file, self.originals[file])
        if (
            hashlib.sha256((self.tree / file).read_bytes()).digest()
            != hashlib.sha256(self.originals[file]).digest()
        ):
            raise SystemExit(f"{self.tree / file} was not restored")

    @contextlib.contextmanager
    def mutated(self, mutant: Mutant) -> Iterator[None]:
        original = self.originals[mutant.file].decode()
        try:
            self.write(mutant.file, mutant.apply(original).encode())
            yield
        finally:
            self.restore(mutant.file)

    def all_restored(self) -> bool:
        return all((self.tree / f).read_bytes() == data for f, data in self.originals.items())

    def pytest(self, args: list[str], timeout: float) -> Outcome:
        probe_out = self.root / "probe.json"
        probe_out.unlink(missing_ok=True)
        command = [
            str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-p", "mutation_probe", *args,
        ]  # fmt: skip
        started = time.monotonic()
        with self.lock:
            # Its own session: at the time limit the whole tree of processes goes at once.
            self.proc = subprocess.Popen(
                command,
                cwd=self.tree,
                env=self.env(probe_out),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            rc: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = None
        finally:
            with self.lock:
                self.proc = None
        seconds = time.monotonic() - started
        tests = json.loads(probe_out.read_text()) if probe_out.exists() else {}
        if rc is None:
            self._sweep_temp()
        return Outcome(rc, seconds, tests)

    def kill(self) -> None:
        with self.lock:
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _sweep_temp(self) -> None:
        for entry in self.tmp.iterdir():
            shutil.rmtree(entry, ignore_errors=True)


def check_imports(ws: Workspace) -> None:
    """The copy is what pytest, the daemon and its children import, not the editable install
    of the shared tree: checked from outside the copy, where only PYTHONPATH can point at it."""
    env = ws.env(ws.root / "unused.json")
    done = subprocess.run(
        [str(PYTHON), "-c", "import supervisor; print(supervisor.__file__)"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    where = Path(done.stdout.strip()).resolve()
    if not where.is_relative_to(ws.tree.resolve()):
        raise SystemExit(f"supervisor is imported from {where}, not from the copy {ws.tree}")


# ------------------------------------------------------------------------- running


@dataclass
class Result:
    mutant: Mutant
    status: str  # killed, timeout, survived, equivalent
    killer: str = ""
    seconds: float = 0.0
    confirmed: bool = False  # a survivor of its tests that the whole suite ran against too


def _under(nodeid: str, path: str) -> bool:
    """True when the test ``nodeid`` is collected from ``path`` (a file or a directory)."""
    file = nodeid.split("::", 1)[0]
    return file == path or file.startswith(path.rstrip("/") + "/")


def suite_files(tree: Path) -> list[str]:
    """What a bare ``pytest`` collects, as paths: every test file, and the package (its
    doctests)."""
    files = sorted(str(p.relative_to(tree)) for p in (tree / "tests").rglob("test_*.py"))
    return [*files, "supervisor"]


@dataclass
class Run:
    workspaces: list[Workspace]
    log: Callable[[str], None]
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)
    measured: list[str] = field(default_factory=list)  # the paths the baseline covers
    stop: threading.Event = field(default_factory=threading.Event)
    done: list[Result] = field(default_factory=list)  # every mutant judged, as it is judged

    @property
    def broken(self) -> list[str]:
        """The tests that fail on the unmutated copy."""
        return sorted(n for n, r in self.baseline.items() if r["outcome"] in ("failed", "error"))

    def parallel(self, jobs: list[Any], work: Callable[[Workspace, Any], Any]) -> list[Any]:
        """Run ``work(workspace, job)`` for every job, one job per workspace at a time."""
        todo: queue.Queue[tuple[int, Any]] = queue.Queue()
        for item in enumerate(jobs):
            todo.put(item)
        results: list[Any] = [None] * len(jobs)
        errors: list[BaseException] = []

        def worker(ws: Workspace) -> None:
            while not self.stop.is_set():
                try:
                    i, job = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[i] = work(ws, job)
                except BaseException as exc:
                    errors.append(exc)
                    self.stop.set()
                    return

        threads = [threading.Thread(target=worker, args=(ws,)) for ws in self.workspaces]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
        except BaseException:
            self.stop.set()
            for ws in self.workspaces:
                ws.kill()
            for t in threads:
                t.join()
            raise
        if errors:
            raise errors[0]
        return results

    def measure(self, paths: list[str]) -> None:
        """Run ``paths`` (those not measured yet) on the unmutated copies, split across them:
        each test's time, and the tests that fail before anything is mutated."""
        paths = [p for p in paths if not any(_under(p, m) for m in self.measured)]
        if not paths:
            return
        shares = [paths[i :: len(self.workspaces)] for i in range(len(self.workspaces))]
        outcomes = self.parallel([s for s in shares if s], lambda ws, s: ws.pytest(s, 3600))
        for outcome in outcomes:
            self.baseline.update(outcome.tests)
        self.measured += paths
        unusable = [n for n in self.broken if "::" not in n]
        if unusable:
            raise SystemExit(f"cannot collect on the unmutated copy: {unusable}")

    def expected_seconds(self, paths: list[str]) -> float:
        return sum(
            float(r["seconds"])
            for n, r in self.baseline.items()
            if any(_under(n, p) for p in paths)
        )

    def deselect(self) -> list[str]:
        return [arg for nodeid in self.broken for arg in ("--deselect", nodeid)]

    def targeted(self, ws: Workspace, mutant: Mutant) -> Result:
        paths = TESTS[mutant.file]
        limit = 3 * self.expected_seconds(paths) + 60
        with ws.mutated(mutant):
            outcome = ws.pytest(["-x", *self.deselect(), *paths], timeout=limit)
        return self._judge(mutant, outcome)

    def confirm(self, ws: Workspace, result: Result) -> Result:
        limit = 3 * self.expected_seconds(self.measured) + 120
        with ws.mutated(result.mutant):
            outcome = ws.pytest(["-x", *self.deselect()], timeout=limit)
        judged = self._judge(result.mutant, outcome)
        judged.seconds += result.seconds
        judged.confirmed = judged.status == "survived"
        return judged

    def _judge(self, mutant: Mutant, outcome: Outcome) -> Result:
        if outcome.rc is None:
            status = "timeout"
        elif outcome.rc == 0:
            status = "survived"
        elif outcome.rc in (1, 2, 3) or outcome.failed:
            status = "killed"
        elif self.stop.is_set():
            raise KeyboardInterrupt
        else:  # 4: usage, 5: nothing collected: the run itself is wrong
            raise SystemExit(f"pytest exited {outcome.rc} for {mutant.id}: check the test paths")
        killer = outcome.failed[0] if outcome.failed else ""
        self.log(f"{status:<8} {outcome.seconds:6.1f}s {mutant.id:<16} {mutant.label()}  {killer}")
        result = Result(mutant, status, killer, outcome.seconds)
        self.done.append(result)
        return result


# ------------------------------------------------------------------------- reporting


def summary(results: list[Result]) -> dict[str, Any]:
    per_file: dict[str, Counter[str]] = {}
    groups: dict[str, Counter[str]] = {}
    for r in results:
        per_file.setdefault(r.mutant.file, Counter())[r.status] += 1
        groups.setdefault(r.mutant.group, Counter())[r.status] += 1

    total = sum(per_file.values(), Counter())

    def score(c: Counter[str]) -> float | None:
        run = c["killed"] + c["timeout"] + c["survived"]
        return round(100.0 * (c["killed"] + c["timeout"]) / run, 1) if run else None

    return {
        "files": {f: {**c, "score": score(c)} for f, c in per_file.items()},
        "groups": {g: {**c, "score": score(c)} for g, c in groups.items()},
        "total": {**total, "score": score(total)},
    }


def print_report(results: list[Result], meta: dict[str, Any]) -> None:
    s = summary(results)
    cols = ("killed", "timeout", "survived", "equivalent")
    print(f"\n{'file':<34} {'mutants':>7} " + " ".join(f"{c:>10}" for c in cols) + "   score")
    rows = [*s["files"].items(), ("total", s["total"])]
    for name, c in rows:
        n = sum(c.get(k, 0) for k in cols)
        pct = "-" if c["score"] is None else f"{c['score']:.1f} %"
        print(f"{name:<34} {n:>7} " + " ".join(f"{c.get(k, 0):>10}" for k in cols) + f"  {pct:>7}")
    print("\nby target: " + ", ".join(
        f"{g} {c.get('killed', 0) + c.get('timeout', 0)}/"
        f"{c.get('killed', 0) + c.get('timeout', 0) + c.get('survived', 0)} killed"
        for g, c in sorted(s["groups"].items())
    ))  # fmt: skip
    survivors = [r for r in results if r.status == "survived"]
    if survivors:
        print("\nsurvivors" + (" (the whole suite ran against each):" if meta["confirm"] else ":"))
        for r in survivors:
            print(f"  {r.mutant.label()}   [{r.mutant.kind}, {r.mutant.id}]")
    equivalent = [r for r in results if r.status == "equivalent"]
    if equivalent:
        print("\nequivalent (not run):")
        for r in equivalent:
            print(f"  {r.mutant.label()}: {r.mutant.equivalent}")
    if meta["broken"]:
        print("\ntests failing on the unmutated copy (deselected): " + ", ".join(meta["broken"]))
    print(f"\nwall time {meta['wall_s']:.0f} s, {meta['workers']} workers, seed {meta['seed']}")


# ------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    parser.add_argument("--only", action="append", default=[], metavar="FILE")
    parser.add_argument("--max", type=int, default=None, metavar="N", help="a seeded sample")
    parser.add_argument(
        "--id", action="append", default=[], help="only these mutants (--list), comma-separated"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample", type=int, default=20, help="mutants per guard evaluator")
    parser.add_argument("--workers", type=int, choices=(1, 2), default=2)
    parser.add_argument("--no-confirm", action="store_true", help="survivors skip the suite")
    parser.add_argument("--source", type=Path, default=ROOT, help="the tree to copy")
    parser.add_argument(
        "--tests",
        action="append",
        default=[],
        metavar="PATH",
        help="run these test paths against each mutant instead of its TESTS (does a new test "
        "kill it?)",
    )
    args = parser.parse_args(argv)

    if args.tests:
        for file in TESTS:
            TESTS[file] = args.tests
    texts = {f: (args.source / f).read_text() for f in (*FULL, *SAMPLED)}
    mutants = select(texts, seed=args.seed, sample=args.sample, only=args.only, limit=args.max)
    if args.id:
        wanted = {i for arg in args.id for i in arg.split(",") if i}
        mutants = [m for m in mutants if m.id in wanted]
    if args.list:
        if args.json:
            print(json.dumps([asdict(m) for m in mutants], indent=1))
        else:
            for m in mutants:
                extra = f"   (equivalent: {m.equivalent})" if m.equivalent else ""
                print(f"{m.id:<18} {m.group:<11} {m.kind:<15} {m.label()}{extra}")
            print(f"{len(mutants)} mutants", file=sys.stderr)
        return 0

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="agentsup-mutation-"))
    workspaces: list[Workspace] = []
    run: Run | None = None
    not_run: list[str] = []

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        first = Workspace(root / "w0", args.source)
        workspaces.append(first)
        for i in range(1, args.workers):
            # A copy of the copy: both workers test the very same snapshot of the tree.
            workspaces.append(Workspace(root / f"w{i}", first.tree))
        check_imports(first)
        run = Run(workspaces, log=say)
        runnable = [m for m in mutants if not m.equivalent]
        paths = list(dict.fromkeys(p for m in runnable for p in TESTS[m.file]))
        say(f"{len(mutants)} mutants; baseline of {len(paths)} test paths on the unmutated copy")
        run.measure(paths)
        if run.broken:
            say(f"failing before any mutation (deselected): {run.broken}")
        results = run.parallel(runnable, run.targeted)
        survivors = [r for r in results if r.status == "survived"]
        if survivors and not args.no_confirm:
            say(f"{len(survivors)} survivors: the whole suite against each")
            run.measure(suite_files(first.tree))
            confirmed = run.parallel(survivors, run.confirm)
            by_id = {r.mutant.id: r for r in confirmed}
            results = [by_id.get(r.mutant.id, r) for r in results]
        results += [Result(m, "equivalent") for m in mutants if m.equivalent]
        order = {m.id: i for i, m in enumerate(mutants)}
        results.sort(key=lambda r: order[r.mutant.id])
        for ws in workspaces:
            if not ws.all_restored():
                raise SystemExit(f"{ws.tree}: a mutated file was not restored")
    except KeyboardInterrupt:
        say("interrupted: every file restored, the copies removed")
        interrupted_at = run.done if run else []
        if not interrupted_at:
            return 130
        # What was judged before the interruption is still a result: reported as such.
        judged = {r.mutant.id for r in interrupted_at}
        results = [*interrupted_at, *(Result(m, "equivalent") for m in mutants if m.equivalent)]
        order = {m.id: i for i, m in enumerate(mutants)}
        results.sort(key=lambda r: order[r.mutant.id])
        not_run = [m.id for m in mutants if not m.equivalent and m.id not in judged]
        say(f"{len(judged)} mutants judged, {len(not_run)} not run")
    finally:
        for ws in workspaces:
            ws.kill()
            for f in ws.originals:
                ws.restore(f)
        shutil.rmtree(root, ignore_errors=True)
    meta = {
        "interrupted": bool(not_run),
        "not_run": not_run,
        "seed": args.seed,
        "workers": args.workers,
        "confirm": not args.no_confirm,
        "wall_s": round(time.monotonic() - started, 1),
        "broken": run.broken if run else [],
        "command": " ".join(["bench/mutation.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    if args.json:
        out = {
            **meta,
            **summary(results),
            "mutants": [
                {**asdict(r.mutant), **{k: v for k, v in asdict(r).items() if k != "mutant"}}
                for r in results
            ],
        }
        print(json.dumps(out, indent=1))
    else:
        print_report(results, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
