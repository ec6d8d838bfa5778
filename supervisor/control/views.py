"""The operator's tables: how a ``status`` or ``triggers`` result reads as plain text.

Pure functions of a result (plain JSON, as the control socket returns it) to a string: no
socket, no terminal. The commands print them (``agentsup status``, ``agentsup triggers``),
the live view prints the status table when stdout is not a terminal, and the demo prints it
at the end, so they live here, below all three, rather than in the CLI that also runs them.
"""

from __future__ import annotations

import time
from typing import Any

from supervisor.config import Color


def span(seconds: float | None) -> str:
    """A duration the way the status table and the live view show it: 4.2s, 37s, 5m02s.

    >>> [span(None), span(4.25), span(37), span(302), span(7260), span(90000)]
    ['-', '4.2s', '37s', '5m02s', '2h01m', '1d01h']
    """
    if seconds is None:
        return "-"
    s = int(seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns as wide as their widest cell, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render_status(st: dict[str, Any]) -> str:
    """The human table of ``agentsup status``."""
    lines = [
        f"{st['name']}  active: {st['active'] or 'NONE'}  epoch: {st['epoch']}  "
        f"mode: {st['mode']}  redis: {st['redis']}",
    ]
    cand = st.get("candidate")
    probation = ""
    if cand and st.get("probation_since"):
        on = span(time.time() - st["probation_since"])
        window = st.get("probation_s") or 0
        probation = f" (on probation {on}" + (f" of {span(window)})" if window else ")")
    lines.append(f"stable: {st['stable']}  candidate: {cand or '-'}{probation}")
    if st.get("rejected"):
        rej = ", ".join(f"{c} {v}" for c, v in st["rejected"].items())
        lines.append(f"rejected (no automatic promotion): {rej}")
    if st.get("pending_rollback"):
        lines.append(f"PENDING ROLLBACK (Redis unreachable): {st['pending_rollback']}")
    ab = st.get("ab")
    if ab:
        rounds = ab["rounds"]
        lines.append(
            f"A/B test of {ab['flag']}: a (blue) = {ab['a']} ({rounds['a']} rounds), "
            f"b (green) = {ab['b']} ({rounds['b']} rounds), split {ab['split']:g} % to b "
            "(agentsup ab report)"
        )
    if st.get("gates"):
        shut = [gate for gate, is_open in st["gates"].items() if not is_open]
        lines.append(
            "deploy gates: " + (f"closed: {', '.join(shut)} (agentsup gates)" if shut else "open")
        )
    lines.append("")
    rows: list[tuple[str, ...]] = [
        ("COLOR", "ROLE", "VERSION", "STATE", "PID", "UPTIME", "RESTARTS", "PROTOCOL")
    ]
    for color in Color:
        c = st["children"][color.value]
        rows.append(
            (
                color.value,
                c["role"],
                c["version"],
                c["state"],
                str(c["pid"] or "-"),
                span(c["uptime_s"]),
                str(c["restarts"]),
                "yes" if c["protocol"] else "no",
            )
        )
    lines += _table(rows)
    lines += render_handoff(st)
    if st.get("flips"):
        lines += ["", "Recent flips (newest first):"]
        for f in st["flips"]:
            at = time.strftime("%H:%M:%S", time.localtime(float(f.get("at", 0))))
            lines.append(
                f"  {at}  epoch {f.get('epoch'):>4}  {f.get('from') or '-':>5} -> "
                f"{f.get('to') or '-':<5}  {f.get('reason')}  (by {f.get('by')})"
            )
    return "\n".join(lines)


def render_handoff(st: dict[str, Any]) -> list[str]:
    """The status lines of state handoff: each color's latest snapshot (age, size, digest),
    a handoff in progress (or the last one), the colors held quiesced.

    >>> render_handoff({"snapshots": {"blue": None, "green": None}, "handoff": None})
    []
    """
    lines: list[str] = []
    snaps = st.get("snapshots") or {}
    if any(snaps.values()):
        lines += ["", "Snapshots (latest per color):"]
        for color in Color:
            s = snaps.get(color.value)
            if s:
                lines.append(
                    f"  {color.value:<5}  {span(s['age_s'])} old  {s['bytes']} bytes  "
                    f"schema {s['schema']}  sha256 {s['digest'][:16]}…  v{s['version']}"
                )
            else:
                lines.append(f"  {color.value:<5}  none")
    h = st.get("handoff")
    if h:
        what = f"{h['source']} -> {h['target']}{' (dry run)' if h.get('dry_run') else ''}"
        if h.get("in_progress"):
            lines += ["", f"HANDOFF IN PROGRESS {what}: {h['phase']} ({span(h['age_s'])})"]
        else:
            reason = f": {h['reason']}" if h.get("reason") else ""
            lines += ["", f"last handoff {what}: {h['phase']}{reason} ({span(h['age_s'])} ago)"]
    held = st.get("held") or {}
    if held:
        lines.append(
            "held (no action until done): " + ", ".join(f"{c} ({w})" for c, w in held.items())
        )
    return lines


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def render_triggers(triggers: dict[str, Any]) -> str:
    """The human table of ``agentsup triggers``."""
    rows: list[tuple[str, ...]] = [
        ("TRIGGER", "SEVERITY", "THRESHOLD", "COLOR", "VALUE", "STATE", "LAST FIRED")
    ]
    for name, t in triggers.items():
        for color in Color:
            c = t["colors"][color.value]
            fired = c.get("last_fired")
            when = time.strftime("%H:%M:%S", time.localtime(fired)) if fired else "-"
            state = c.get("state", "ok") if t.get("enabled", True) else "disabled"
            first = color is Color.BLUE  # the trigger's own columns, once per trigger
            rows.append(
                (
                    name if first else "",
                    t["severity"] if first else "",
                    _num(t.get("threshold")) if first else "",
                    color.value,
                    _num(c.get("value")),
                    str(state),
                    when,
                )
            )
    return "\n".join(_table(rows))
