"""``agentsup status --watch``: a live view of the daemon, redrawn after every poll.

The view asks the control socket for ``status`` every ``interval`` seconds (the same blocking
request as every other command: the daemon has no push channel, and one small request twice
a second costs it nothing) and redraws the terminal's alternate screen with rich. Nothing is
redrawn between polls, so the screen changes only when there is something new to show.

What it shows, top to bottom: who acts (the epoch, stable, candidate and its probation,
Redis, rejected versions, a pending rollback), both colors (state, pid, uptime, restarts,
heartbeat age, decisions per second, PnL), every trigger against its threshold for both
colors, and the latest flips with their reasons.

How it behaves when things go wrong:

* The daemon is down or restarting (``ControlUnreachable``): the last view stays on screen,
  dimmed, under a banner ``reconnecting to PATH… (daemon unreachable for Ns)``; polling goes
  on at the same pace and the view comes back by itself when a daemon answers again.
* The daemon refuses (``Refused``): the error is shown in a banner, and polling goes on.
* Ctrl-C, or SIGTERM (which takes the same path): the terminal is restored (main screen,
  cursor) and the exit code is 0: leaving a view is not a failure.
* stdout is not a terminal (a pipe, a file, a CI log): no screen control at all; the plain
  ``agentsup status`` table is printed once per interval under a ``--- time ---`` line, and
  the unreachable message goes to stderr. It stops with code 0 on Ctrl-C or when the reader
  goes away (``| head``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.panel import Panel
from rich.styled import Styled
from rich.table import Table
from rich.text import Text

from supervisor.config import Color
from supervisor.control.client import request
from supervisor.control.views import render_status, span
from supervisor.errors import ControlUnreachable, Refused

COLORS = tuple(Color)
# Long enough for a daemon busy committing a flip; short enough that a hung daemon (stopped,
# or stuck) turns into the reconnecting banner instead of a frozen screen.
REQUEST_TIMEOUT_S = 5.0
# Decisions per second are measured over this span of polls: one 0.5 s interval alone
# jumps between 0 and twice the real rate when an agent decides about once a second.
RATE_WINDOW_S = 3.0
# The least a wrapping column (a flip's reason) is given before other columns are left out.
WRAP_MIN_WIDTH = 24

# Keyed by Color, looked up by the plain strings of a status object (a StrEnum equals its value).
COLOR_STYLE: dict[str, str] = {Color.BLUE: "bold bright_blue", Color.GREEN: "bold green"}
BADGE_STYLE: dict[str, str] = {Color.BLUE: "bold white on blue", Color.GREEN: "bold black on green"}
CHILD_STATE_STYLE = {
    "RUNNING": "bold green",
    "STARTING": "yellow",
    "BACKOFF": "yellow",
    "EXITED": "yellow",
    "STOPPING": "yellow",
    "STOPPED": "dim",
    "FATAL": "bold red",
}
TRIGGER_STATE_STYLE = {
    "ok": "green",
    "alert": "bold yellow",
    "fired": "bold red",
    "disabled": "dim",
    "idle": "dim",
}
SEVERITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "dim"}


# -- what the view remembers between polls ----------------------------------------------------


@dataclass
class DecisionRate:
    """Decisions per second per color, from the ``decisions`` counters of two polls up to
    ``window_s`` apart.

    The counters live in the daemon, so a new daemon (another pid) or a counter that went
    down starts the measurement again rather than showing a negative or a huge rate.
    """

    window_s: float = RATE_WINDOW_S
    _samples: deque[tuple[float, dict[str, int]]] = field(default_factory=deque, init=False)
    _daemon: Any = field(default=None, init=False)  # the pid of the daemon that counted

    def add(self, at: float, status: Mapping[str, Any]) -> None:
        children = status.get("children") or {}
        counts: dict[str, int] = {
            c: int((children.get(c) or {}).get("decisions") or 0) for c in COLORS
        }
        daemon = status.get("pid")
        last = self._samples[-1][1] if self._samples else None
        if daemon != self._daemon or (last and any(counts[c] < last[c] for c in COLORS)):
            self._samples.clear()
            self._daemon = daemon
        self._samples.append((at, counts))
        while len(self._samples) > 2 and at - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def per_second(self, color: str) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return None
        return (last[color] - first[color]) / (t1 - t0)


@dataclass
class View:
    """The last answer, and what went wrong since (if anything)."""

    path: Path
    interval: float
    status: dict[str, Any] | None = None
    seen_at: float | None = None  # wall clock of the last answer
    down_since: float | None = None  # monotonic clock of the first failure in a row
    problem: str | None = None  # why the last poll failed
    refused: bool = False  # the daemon answered, with an error
    rates: DecisionRate = field(default_factory=DecisionRate)

    def poll(self) -> None:
        """Ask the daemon once; remember the answer or why there is none."""
        try:
            status = request(self.path, "status", timeout=REQUEST_TIMEOUT_S)
        except ControlUnreachable as exc:
            if self.down_since is None:
                self.down_since = time.monotonic()
            self.problem, self.refused = str(exc), False
        except Refused as exc:
            self.down_since = None
            self.problem, self.refused = f"refused ({exc.code}): {exc}", True
        else:
            self.status, self.seen_at = status, time.time()
            self.down_since, self.problem, self.refused = None, None, False
            self.rates.add(time.monotonic(), status)


# -- formatting --------------------------------------------------------------------------------


def _number(value: Any) -> str:
    if value is None:
        return "-"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if abs(x) >= 10_000:
        return f"{x:,.0f}"
    return f"{x:.4g}"


def _clock(unix: Any, now: float) -> Text:
    """``12:03:04 (2m10s ago)`` for a unix time; a dim ``never`` for none."""
    try:
        at = float(unix)
    except (TypeError, ValueError):
        return Text("never", style="dim")
    stamp = time.strftime("%H:%M:%S", time.localtime(at))
    return Text.assemble(stamp, (f" ({span(max(0.0, now - at))} ago)", "dim"))


def _color(name: Any, *, missing: str = "-") -> Text:
    if not name:
        return Text(missing, style="dim")
    return Text(str(name), style=COLOR_STYLE.get(str(name), ""))


# -- the sections ------------------------------------------------------------------------------


def _header(st: Mapping[str, Any], now: float) -> Panel:
    active = st.get("active")
    badge = (
        Text(f"  {str(active).upper()}  ", style=BADGE_STYLE.get(str(active), "reverse"))
        if active
        else Text("  NONE: NOBODY MAY ACT  ", style="bold white on red")
    )
    redis = st.get("redis")
    line1 = Text.assemble(
        ("active ", "bold"),
        badge,
        ("   epoch ", "dim"),
        (str(st.get("epoch", "-")), "bold"),
        ("   mode ", "dim"),
        str(st.get("mode", "-")),
        ("   redis ", "dim"),
        (str(redis), "bold green" if redis == "up" else "bold red"),
    )
    line2 = Text.assemble(("stable ", "dim"), _color(st.get("stable")))
    line2.append("   candidate ", style="dim")
    line2.append_text(_color(st.get("candidate")))
    since = st.get("probation_since")
    if st.get("candidate") and since:
        window = float(st.get("probation_s") or 0)
        on = max(0.0, now - float(since))
        line2.append(f"  on probation {span(on)}")
        if window:
            line2.append(f" of {span(window)}", style="dim")
            line2.append(f" ({min(on / window, 1.0):.0%})", style="dim")
        else:
            line2.append(" (promotion by `agentsup confirm` only)", style="dim")
    lines = [line1, line2]
    rejected = st.get("rejected") or {}
    if rejected:
        listed = ", ".join(f"{c} {v}" for c, v in rejected.items())
        lines.append(Text(f"rejected (no automatic promotion): {listed}", style="yellow"))
    if st.get("pending_rollback"):
        lines.append(
            Text(
                f"PENDING ROLLBACK (Redis unreachable): {st['pending_rollback']}",
                style="bold white on red",
            )
        )
    title = Text.assemble(("agentsup ", "dim"), (str(st.get("name", "?")), "bold"))
    subtitle = Text(
        f"daemon {st.get('version', '?')}  pid {st.get('pid', '?')}  "
        f"up {span(st.get('uptime_s'))}  events {_number(st.get('events'))}",
        style="dim",
    )
    return Panel(
        Group(*lines),
        title=title,
        title_align="left",
        subtitle=subtitle,
        subtitle_align="right",
        box=box.ROUNDED,
    )


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a section's table."""

    header: str
    justify: JustifyMethod = "left"
    # 0: always shown. Otherwise, when the terminal is too narrow for the whole table, left
    # out in this order (all the 1s first, together): a missing column reads better than every
    # column squeezed to an ellipsis, which is what rich does, and which hides even the colors'
    # names.
    drop: int = 0
    wrap: bool = False  # the one column that takes what is left and wraps (a flip's reason)
    style: str = ""  # the header's style


def _build(title: str, columns: list[Column], rows: list[list[Text]], keep: list[int]) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD,
        expand=True,
        show_edge=False,
        title=title,
        title_justify="left",
        title_style="bold",
    )
    for i in keep:
        col = columns[i]
        table.add_column(
            col.header,
            justify=col.justify,
            no_wrap=not col.wrap,
            ratio=1 if col.wrap else None,
            header_style=col.style,
        )
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table


def _fitted(console: Console, title: str, columns: list[Column], rows: list[list[Text]]) -> Table:
    """The table with as many columns as fit in the console's width (see ``Column.drop``)."""
    keep = list(range(len(columns)))
    natural = console.options.update_width(10_000)
    # A wrapping column needs only its share, not its longest line, to fit.
    wraps = [i for i, c in enumerate(columns) if c.wrap]
    measured = [[cell.copy() for cell in row] for row in rows] if wraps else rows
    for row in measured if wraps else []:
        for i in wraps:
            row[i].truncate(WRAP_MIN_WIDTH)
    for level in sorted({c.drop for c in columns if c.drop}):
        width = Measurement.get(console, natural, _build(title, columns, measured, keep)).maximum
        if width <= console.width:
            break
        keep = [i for i in keep if columns[i].drop != level]
    return _build(title, columns, rows, keep)


def _heartbeat(age: Any, timeout: float | None) -> Text:
    if age is None:
        return Text("-", style="dim")
    text = span(float(age))
    if timeout is None:
        return Text(text)
    if age >= timeout:
        return Text(text, style="bold red")
    return Text(text, style="yellow" if age >= timeout / 2 else "")


CHILD_COLUMNS = [
    Column("COLOR"),
    Column("ROLE"),
    Column("VERSION", drop=9),
    Column("STATE"),
    Column("PID", drop=5),
    Column("UPTIME", drop=6),
    Column("RESTARTS", drop=8),
    Column("LAST EXIT", drop=1),
    Column("HEARTBEAT", "right"),
    Column("DECISIONS/S", "right"),
    Column("DECISIONS", "right", drop=4),
    Column("EXECUTIONS", "right", drop=2),
    Column("ROUNDS", "right", drop=3),
    Column("PNL", "right"),
]


def _children(console: Console, st: Mapping[str, Any], rates: DecisionRate) -> Table:
    hb = ((st.get("triggers") or {}).get("heartbeat") or {}).get("threshold")
    timeout = float(hb) if isinstance(hb, int | float) else None
    children = st.get("children") or {}
    rows = []
    for color in COLORS:
        c = children.get(color) or {}
        state = str(c.get("state", "?"))
        rate = rates.per_second(color)
        pnl = c.get("pnl")
        pnl_text = Text("-", style="dim")
        if isinstance(pnl, int | float):
            pnl_text = Text(f"{pnl:+,.2f}", style="green" if pnl >= 0 else "red")
        last_exit = c.get("last_exit")
        role = str(c.get("role") or "-")
        rows.append(
            [
                _color(color),
                Text(role, style="bold" if role == "active" else ""),
                Text(str(c.get("version", "-"))),
                Text(state, style=CHILD_STATE_STYLE.get(state, "")),
                Text(str(c.get("pid") or "-")),
                Text(span(c.get("uptime_s"))),
                Text(str(c.get("restarts", 0)), style="yellow" if c.get("restarts") else ""),
                Text(
                    "-" if last_exit is None else str(last_exit), style="" if last_exit else "dim"
                ),
                _heartbeat(c.get("heartbeat_age_s"), timeout),
                Text("-" if rate is None else f"{rate:.1f}"),
                Text(_number(c.get("decisions"))),
                Text(_number(c.get("executions"))),
                Text(_number(c.get("rounds"))),
                pnl_text,
            ]
        )
    return _fitted(console, "agents", CHILD_COLUMNS, rows)


def _trigger_columns() -> list[Column]:
    columns = [Column("TRIGGER"), Column("SEVERITY", drop=2), Column("THRESHOLD", "right", drop=3)]
    for color in COLORS:
        style = COLOR_STYLE[color]
        columns += [
            Column(f"{color.upper()} VALUE", "right", style=style),
            Column("STATE", style=style),
            Column("LAST FIRED", drop=1, style=style),
        ]
    return columns


TRIGGER_COLUMNS = _trigger_columns()


def _triggers(console: Console, st: Mapping[str, Any], now: float) -> RenderableType:
    triggers = st.get("triggers")
    if not triggers:
        return Text("triggers: no triggers reported", style="dim")
    rows = []
    for name, trig in sorted(triggers.items()):
        trig = trig or {}
        severity = str(trig.get("severity") or "-")
        row = [
            Text(str(name), style="bold"),
            Text(severity, style=SEVERITY_STYLE.get(severity, "")),
            Text(_number(trig.get("threshold"))),
        ]
        for color in COLORS:
            c = (trig.get("colors") or {}).get(color) or {}
            state = str(c.get("state") or "-")
            state_style = TRIGGER_STATE_STYLE.get(state, "")
            value_style = state_style if state in ("alert", "fired") else ""
            row += [
                Text(_number(c.get("value")), style=value_style),
                Text(state, style=state_style),
                _clock(c.get("last_fired"), now),
            ]
        rows.append(row)
    return _fitted(console, "triggers", TRIGGER_COLUMNS, rows)


FLIP_COLUMNS = [
    Column("TIME"),
    Column("EPOCH", "right"),
    Column("FROM → TO"),
    Column("REASON", wrap=True),
    Column("BY", drop=1),
]


def _flips(console: Console, st: Mapping[str, Any]) -> RenderableType:
    flips = st.get("flips") or []
    if not flips:
        return Text("flips: none recorded" if st.get("redis") == "up" else "", style="dim")
    rows = []
    for f in flips:
        try:
            at = time.strftime("%m-%d %H:%M:%S", time.localtime(float(f.get("at") or 0)))
        except (TypeError, ValueError):
            at = "?"
        move = Text.assemble(_color(f.get("from")), " → ", _color(f.get("to"), missing="NONE"))
        by = str(f.get("by", ""))
        rows.append(
            [
                Text(at),
                Text(str(f.get("epoch", "-"))),
                move,
                Text(str(f.get("reason", ""))),
                Text(by),
            ]
        )
    return _fitted(console, "latest flips", FLIP_COLUMNS, rows)


def _banner(view: View, mono: float) -> Panel | None:
    if view.problem is None:
        return None
    if view.refused:
        return Panel(Text(view.problem), title="the daemon refused", style="bold red")
    down = 0.0 if view.down_since is None else mono - view.down_since
    head = Text(f"reconnecting to {view.path}… (daemon unreachable for {int(down)}s)", style="bold")
    detail = Text(view.problem, style="dim")
    if view.seen_at is not None:
        last = time.strftime("%H:%M:%S", time.localtime(view.seen_at))
        detail.append(f"\nbelow: the last view, from {last}")
    return Panel(Group(head, detail), style="yellow", box=box.HEAVY)


def render(
    view: View, console: Console, now: float | None = None, mono: float | None = None
) -> RenderableType:
    """The whole screen for ``view`` at wall-clock ``now``, as wide as ``console`` (no I/O:
    the tests render it into a recording console)."""
    now = time.time() if now is None else now
    mono = time.monotonic() if mono is None else mono
    parts: list[RenderableType] = []
    banner = _banner(view, mono)
    if banner is not None:
        parts.append(banner)
    st = view.status
    if st is None:
        parts.append(Text(f"waiting for the daemon on {view.path}…", style="dim"))
    else:
        sections = (
            _header(st, now),
            _children(console, st, view.rates),
            _triggers(console, st, now),
            _flips(console, st),
        )
        body = Group(*(part for section in sections for part in (section, "")))
        parts.append(Styled(body, "dim") if banner is not None else body)
    footer = f"every {view.interval:g}s from {view.path}  ·  Ctrl-C to leave"
    if view.seen_at is not None:
        footer = f"updated {time.strftime('%H:%M:%S', time.localtime(view.seen_at))}  ·  " + footer
    parts.append(Text(footer, style="dim"))
    return Group(*parts)


# -- running it --------------------------------------------------------------------------------


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


@contextmanager
def _leave_on_interrupt() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM raise KeyboardInterrupt, so that the view leaves and the
    terminal is restored either way.

    Installed here rather than left to Python's default: Python installs its own SIGINT
    handler only when SIGINT was not ignored at start, and a process started with SIGINT
    ignored (a shell's background job, a test runner started that way) would otherwise sit
    through every Ctrl-C. The handler raises instead of setting an event: this is a blocking
    CLI loop, and an event would be seen only after the request in flight, up to
    REQUEST_TIMEOUT_S later when the daemon hangs.
    """
    previous = {
        sig: signal.signal(sig, signal.default_int_handler)
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch_live(path: Path, interval: float) -> int:
    view = View(path, interval)
    console = Console()
    with Live(
        render(view, console),
        console=console,
        screen=True,
        auto_refresh=False,
        redirect_stdout=False,
        redirect_stderr=False,
    ) as live:
        live.refresh()
        while True:
            started = time.monotonic()
            view.poll()
            live.update(render(view, console), refresh=True)
            _sleep_until(started + interval)


def _watch_plain(path: Path, interval: float) -> int:
    down_since: float | None = None
    while True:
        started = time.monotonic()
        try:
            st = request(path, "status", timeout=REQUEST_TIMEOUT_S)
        except ControlUnreachable as exc:
            down_since = started if down_since is None else down_since
            down = int(started - down_since)
            print(
                f"agentsup: reconnecting to {path}… (daemon unreachable for {down}s): {exc}",
                file=sys.stderr,
                flush=True,
            )
        except Refused as exc:
            down_since = None
            print(f"agentsup: refused ({exc.code}): {exc}", file=sys.stderr, flush=True)
        else:
            down_since = None
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            print(f"--- {stamp} ---\n{render_status(st)}\n", flush=True)
        _sleep_until(started + interval)


def watch(path: Path, interval: float = 0.5) -> int:
    """Show the daemon on ``path`` live until Ctrl-C; returns the exit code (0).

    For example ``watch(Path("/run/agent-supervisor/control.sock"))``: it runs until
    interrupted, so it is no doctest.
    """
    if interval <= 0:
        raise ValueError("interval must be positive")
    try:
        with _leave_on_interrupt():
            if sys.stdout.isatty():
                return _watch_live(path, interval)
            return _watch_plain(path, interval)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader left (`| head`): stop quietly, and point stdout at /dev/null so that
        # Python's last flush at exit does not complain about the dead pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
