"""``shadow report --html FILE``: the report as one self-contained page (no script, no
stylesheet or font to fetch) with two inline SVG plots, drawn by hand: the cumulative real and
would-be PnL over the scored rounds, and the divergent decisions over time.

>>> page = render({"color": "green", "live": "blue", "series": {"pnl": [], "divergences": []}})
>>> page.startswith("<!DOCTYPE html>") and "<svg" in page
True
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any, Final

import orjson

WIDTH: Final = 720
HEIGHT: Final = 260
PAD: Final = 48
REAL: Final = "#1f6feb"
WOULD_BE: Final = "#d9480f"
STYLE: Final = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:980px;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.8em}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:3px 9px;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
.yes{color:#b00020;font-weight:600}code{font-size:12px;white-space:pre-wrap;word-break:break-all}
svg{background:#fafafa;border:1px solid #e3e3e3}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return _e(x)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _json(x: Any) -> str:
    try:
        return _e(orjson.dumps(x).decode())
    except (TypeError, orjson.JSONEncodeError):
        return _e(repr(x))


def line_chart(
    title: str,
    xs: Sequence[float],
    lines: Sequence[tuple[str, Sequence[float], str]],
    *,
    x_label: str,
) -> str:
    """An SVG line chart: ``lines`` as (label, ys, color), on shared axes."""
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(title)}">'
        f'<text x="{PAD}" y="18" font-size="13" font-weight="600">{_e(title)}</text>'
    )
    values = [y for _, ys, _ in lines for y in ys]
    if len(xs) < 2 or not values:
        return head + f'<text x="{PAD}" y="{HEIGHT // 2}" fill="#888">no data yet</text></svg>'
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(min(values), 0.0), max(max(values), 0.0)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    w, h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def px(x: float) -> float:
        return PAD + (x - x0) / (x1 - x0) * w

    def py(y: float) -> float:
        return PAD + (y1 - y) / (y1 - y0) * h

    parts = [head]
    # axes, the zero line, and the extremes labelled
    parts.append(
        f'<line x1="{PAD}" y1="{PAD + h}" x2="{PAD + w}" y2="{PAD + h}" stroke="#999"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{PAD + h}" stroke="#999"/>'
        f'<line x1="{PAD}" y1="{py(0):.1f}" x2="{PAD + w}" y2="{py(0):.1f}" '
        f'stroke="#bbb" stroke-dasharray="4 3"/>'
        f'<text x="{PAD - 6}" y="{PAD + 4}" font-size="11" text-anchor="end">{_num(y1)}</text>'
        f'<text x="{PAD - 6}" y="{PAD + h + 4}" font-size="11" text-anchor="end">'
        f"{_num(y0)}</text>"
        f'<text x="{PAD + w}" y="{HEIGHT - 12}" font-size="11" text-anchor="end">'
        f"{_e(x_label)}</text>"
    )
    for i, (label, ys, color) in enumerate(lines):
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=False))
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{points}"/>'
            f'<rect x="{PAD + 10 + 170 * i}" y="{PAD - 18}" width="12" height="3" '
            f'fill="{color}"/><text x="{PAD + 26 + 170 * i}" y="{PAD - 13}" font-size="11">'
            f"{_e(label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render(r: dict[str, Any]) -> str:
    """The page for report ``r`` (``Shadow.report()``'s object)."""
    started = r.get("started_at")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>shadow {_e(r.get('color'))} of {_e(r.get('live'))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Shadow: {_e(r.get('color'))} v{_e(r.get('version'))} beside "
        f"{_e(r.get('live'))} v{_e(r.get('live_version'))}</h1>",
        f"<p>Started {_e(when)}, {_num(r.get('seconds'))} s; "
        f"{'running' if r.get('running') else 'ended: ' + _e(r.get('stop_reason'))}. "
        f"Floor: {_e(r.get('floor'))}. Executions by the shadow: "
        f"<span class='{'yes' if r.get('executions') else ''}'>{_e(r.get('executions', 0))}"
        "</span>.</p>",
    ]
    mirrors = r.get("mirrors") or {}
    out.append(
        "<p>Mirrors: " + ", ".join(f"{_e(k)} {_e(v)}" for k, v in mirrors.items()) + "; "
        f"compared {_e(r.get('compared', 0))}, divergent {_e(r.get('diverged', 0))}; "
        f"fields above the floor: {_e(', '.join(r.get('reported') or []) or 'none')}.</p>"
    )
    series = r.get("series") or {}
    pnl = series.get("pnl") or []
    out.append("<h2>Would-be and real PnL</h2>")
    out.append(
        line_chart(
            "cumulative PnL per scored round",
            list(range(1, len(pnl) + 1)) if pnl else [],
            [
                ("real (live)", [p[1] for p in pnl], REAL),
                ("would-be (shadow)", [p[2] for p in pnl], WOULD_BE),
            ],
            x_label="scored rounds (sampled)",
        )
    )
    out.append(_pnl_table(r.get("pnl") or {}))
    div = series.get("divergences") or []
    t0 = div[0][0] if div else 0.0
    out.append("<h2>Divergences over time</h2>")
    out.append(
        line_chart(
            "divergent shadow decisions (cumulative)",
            [p[0] - t0 for p in div],
            [("divergent", [p[2] for p in div], WOULD_BE), ("compared", [p[1] for p in div], REAL)],
            x_label="seconds since the first comparison",
        )
    )
    out.append(_fields_table(r.get("kinds") or []))
    out.append(_top_table(r.get("top") or []))
    out.append(_latency_table(r.get("latency") or {}))
    out.append("</body></html>")
    return "\n".join(out)


def _pnl_table(p: dict[str, Any]) -> str:
    if not p.get("scoring"):
        return "<p>The shadow does not score outcomes (no on_mirror_outcome hook).</p>"
    rows = ["<table><tr><th></th><th>total</th><th>rounds</th><th>mean</th><th>95 % CI</th></tr>"]
    for name, key in (
        ("real", "real"),
        ("would-be", "would_be"),
        ("would-be − real", "difference"),
    ):
        m = p.get(key) or {}
        ci = m.get("ci95")
        rows.append(
            f"<tr><td>{name}</td><td class='n'>{_num(m.get('total'))}</td>"
            f"<td class='n'>{_e(m.get('n', 0))}</td><td class='n'>{_num(m.get('mean'))}</td>"
            f"<td class='n'>{'–' if not ci else f'[{_num(ci[0])}, {_num(ci[1])}]'}</td></tr>"
        )
    gap = p.get("difference") or {}
    av = gap.get("always_valid_ci95")
    if av:
        rows.append(
            f"<tr><td colspan='4'>would-be − real, valid at every look</td>"
            f"<td class='n'>[{_num(av[0])}, {_num(av[1])}]: {_e(gap.get('verdict'))}</td></tr>"
        )
    rows.append(f"</table><p>Unscored rounds: {_e(p.get('unscored', 0))}.</p>")
    return "".join(rows)


def _fields_table(kinds: list[dict[str, Any]]) -> str:
    rows = [
        "<h2>Fields</h2><table><tr><th>kind</th><th>field</th><th>diverged</th><th>rate</th>"
        "<th>floor rate</th><th>excess</th><th>above the floor</th></tr>"
    ]
    for k in kinds:
        for f in k["fields"]:
            rows.append(
                f"<tr><td>{_e(k['kind'])} ({_e(k['compared'])} / {_e(k['floor_compared'])})</td>"
                f"<td>{_e(f['field'])}</td><td class='n'>{_e(f['diverged'])}</td>"
                f"<td class='n'>{_pct(f['rate'])}</td><td class='n'>{_pct(f['floor_rate'])}</td>"
                f"<td class='n'>{_pct(f['excess'])}</td>"
                f"<td class='{'yes' if f['reported'] else ''}'>"
                f"{'yes' if f['reported'] else 'no'}</td></tr>"
            )
    rows.append("</table>")
    return "".join(rows)


def _top_table(top: list[dict[str, Any]]) -> str:
    rows = [
        "<h2>Largest divergences</h2><table><tr><th>kind</th><th>fields</th><th>inputs</th></tr>"
    ]
    for d in top:
        fields = "<br>".join(
            f"{_e(f['field'])}: {_json(f['live'])} → {_json(f['shadow'])}" for f in d["fields"]
        )
        rows.append(
            f"<tr><td>{_e(d['kind'])}<br><small>{_e(d['decision_id'])}</small></td>"
            f"<td><code>{fields}</code></td><td><code>{_json(d['inputs'])}</code></td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _latency_table(lat: dict[str, Any]) -> str:
    rows = [
        "<h2>Latency</h2><table><tr><th></th><th>n</th><th>p50 ms</th><th>p90 ms</th>"
        "<th>p99 ms</th><th>max ms</th></tr>"
    ]
    names = {
        "shadow_mirror": "shadow, mirror round trip",
        "live_mirror": "live, mirror round trip (floor)",
        "live_decision": "live, decision as reported",
    }
    for key, name in names.items():
        q = lat.get(key) or {}
        rows.append(
            f"<tr><td>{name}</td><td class='n'>{_e(q.get('n', 0))}</td>"
            + "".join(
                f"<td class='n'>{_num(q.get(c))}</td>"
                for c in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
            )
            + "</tr>"
        )
    rows.append("</table>")
    return "".join(rows)
