"""``ab report --html FILE``: the report as one self-contained page (no script, no stylesheet
or font to fetch), in the shadow report's style, with one inline SVG drawn by hand: each arm's
mean return per unit staked over time with its always-valid interval as a band.

>>> page = render({"flag": "crash_target", "arms": {}, "series": []})
>>> page.startswith("<!DOCTYPE html>") and "<svg" in page
True
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any, Final

from supervisor.shadow.html import HEIGHT, PAD, REAL, STYLE, WIDTH, WOULD_BE

ARM_COLORS: Final = {"a": REAL, "b": WOULD_BE}
# Columns of a series point: seconds, then per arm n, mean, low, high (supervisor/ab/arms.py).
_COLUMNS: Final = {"a": 1, "b": 5}


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return _e(x)


def _ci(ci: Sequence[float] | None) -> str:
    return "–" if not ci else f"[{_num(ci[0])}, {_num(ci[1])}]"


def band_chart(series: Sequence[Sequence[float]], labels: dict[str, str]) -> str:
    """Each arm's mean return per unit staked over time, its interval shaded."""
    title = "mean return per unit staked, with the always-valid 95 % interval"
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(title)}">'
        f'<text x="{PAD}" y="18" font-size="13" font-weight="600">{_e(title)}</text>'
    )
    points = [p for p in series if len(p) >= 9 and p[1] >= 2 and p[5] >= 2]
    if len(points) < 2:
        return head + f'<text x="{PAD}" y="{HEIGHT // 2}" fill="#888">no data yet</text></svg>'
    xs = [p[0] for p in points]
    values = [p[i + k] for p in points for i in _COLUMNS.values() for k in (2, 3)]
    # Early intervals are wide: clip the scale to where the means are, with room.
    means = [p[i + 1] for p in points for i in _COLUMNS.values()]
    spread = max(max(means) - min(means), 0.05)
    y0 = min(max(min(values), min(means) - 2 * spread), 0.0)  # zero always on the scale
    y1 = max(min(max(values), max(means) + 2 * spread), 0.0)
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x1 = x0 + 1
    if y1 <= y0:
        y1 = y0 + 1
    w, h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def px(x: float) -> float:
        return PAD + (x - x0) / (x1 - x0) * w

    def py(y: float) -> float:
        return PAD + (y1 - min(max(y, y0), y1)) / (y1 - y0) * h

    parts = [
        head,
        f'<line x1="{PAD}" y1="{PAD + h}" x2="{PAD + w}" y2="{PAD + h}" stroke="#999"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{PAD + h}" stroke="#999"/>'
        f'<line x1="{PAD}" y1="{py(0):.1f}" x2="{PAD + w}" y2="{py(0):.1f}" '
        f'stroke="#bbb" stroke-dasharray="4 3"/>'
        f'<text x="{PAD - 6}" y="{PAD + 4}" font-size="11" text-anchor="end">{_num(y1)}</text>'
        f'<text x="{PAD - 6}" y="{PAD + h + 4}" font-size="11" text-anchor="end">'
        f"{_num(y0)}</text>"
        f'<text x="{PAD + w}" y="{HEIGHT - 12}" font-size="11" text-anchor="end">'
        "seconds since the start</text>",
    ]
    for k, (arm, col) in enumerate(_COLUMNS.items()):
        color = ARM_COLORS[arm]
        upper = [f"{px(p[0]):.1f},{py(p[col + 3]):.1f}" for p in points]
        lower = [f"{px(p[0]):.1f},{py(p[col + 2]):.1f}" for p in reversed(points)]
        mean = " ".join(f"{px(p[0]):.1f},{py(p[col + 1]):.1f}" for p in points)
        parts.append(
            f'<polygon fill="{color}" fill-opacity="0.15" stroke="none" '
            f'points="{" ".join(upper + lower)}"/>'
            f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{mean}"/>'
            f'<rect x="{PAD + 10 + 220 * k}" y="{PAD - 18}" width="12" height="3" '
            f'fill="{color}"/><text x="{PAD + 26 + 220 * k}" y="{PAD - 13}" font-size="11">'
            f"{_e(labels.get(arm, arm))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render(r: dict[str, Any]) -> str:
    """The page for report ``r`` (``AbTest.report()``'s object)."""
    since = r.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    arms = r.get("arms") or {}
    labels = {
        a: f"{a.upper()} ({x.get('color')}): {r.get('flag')}={x.get('value')}"
        for a, x in arms.items()
    }
    ended = r.get("ended")
    state = (
        "running"
        if r.get("running")
        else "ended" + (f", winner {ended['winner']}" if ended and ended.get("winner") else "")
    )
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>A/B test of {_e(r.get('flag'))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>A/B test: {_e(r.get('flag'))}, "
        + " against ".join(_e(labels[a]) for a in ("a", "b") if a in labels)
        + "</h1>",
        f"<p>Version {_e(r.get('version'))}; started {_e(when)}, {_num(r.get('seconds'))} s; "
        f"{_e(state)}. Split: B has {_num(r.get('split'))} % of the capital; no verdict "
        f"before {_e(r.get('min_rounds'))} rounds an arm; α = {_num(r.get('alpha'))}.</p>",
        "<h2>Over time</h2>",
        band_chart(r.get("series") or [], labels),
        _arms_table(arms),
        _difference_table(r),
        _srm_table(r.get("srm") or {}),
        "</body></html>",
    ]
    return "\n".join(out)


def _arms_table(arms: dict[str, Any]) -> str:
    rows = [
        "<h2>Arms</h2><table><tr><th>arm</th><th>value</th><th>share</th><th>rounds</th>"
        "<th>staked</th><th>PnL</th><th>return / unit</th><th>interval</th><th>win rate</th>"
        "<th>interval</th></tr>"
    ]
    for a, x in arms.items():
        rows.append(
            f"<tr><td>{_e(a.upper())} ({_e(x['color'])})</td><td>{_e(x['value'])}</td>"
            f"<td class='n'>{x['share']:.0%}</td><td class='n'>{_e(x['rounds'])}</td>"
            f"<td class='n'>{_num(x['stake']['total'])}</td><td class='n'>{_num(x['pnl'])}</td>"
            f"<td class='n'>{_num(x['return']['mean'])}</td>"
            f"<td class='n'>{_ci(x['return']['ci'])}</td>"
            f"<td class='n'>{x['win_rate']['mean']:.1%}</td>"
            f"<td class='n'>{_ci(x['win_rate']['ci'])}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _difference_table(r: dict[str, Any]) -> str:
    rows = [
        "<h2>B − A</h2><table><tr><th>metric</th><th>difference</th><th>always-valid "
        "interval</th><th>p (always valid)</th><th>verdict</th></tr>"
    ]
    verdict = r.get("verdict") or {}
    for metric, d in (r.get("difference") or {}).items():
        v = verdict.get(metric, "not_yet")
        cls = "yes" if v != "not_yet" else ""
        if d is None:
            rows.append(
                f"<tr><td>{_e(metric)}</td><td colspan='3'>too few rounds</td><td>{_e(v)}</td></tr>"
            )
            continue
        rows.append(
            f"<tr><td>{_e(metric)}</td><td class='n'>{_num(d['b_minus_a'])}</td>"
            f"<td class='n'>{_ci(d['ci'])}</td><td class='n'>{_num(d['p'], 3)}</td>"
            f"<td class='{cls}'>{_e(v)}</td></tr>"
        )
    rows.append("</table>")
    if r.get("why_not"):
        rows.append(f"<p>No verdict yet: {_e(r['why_not'])}.</p>")
    return "".join(rows)


def _srm_table(srm: dict[str, Any]) -> str:
    rows = [
        "<h2>Sample ratio</h2><table><tr><th>check</th><th>observed</th><th>expected</th>"
        "<th>p</th><th>broken (p &lt; 0.001)</th></tr>"
    ]
    for what, m in srm.items():
        if m is None:
            rows.append(f"<tr><td>{_e(what)}</td><td colspan='4'>too few rounds</td></tr>")
            continue
        rows.append(
            f"<tr><td>{_e(what)}</td><td class='n'>{_num(m['observed'])}</td>"
            f"<td class='n'>{_num(m['expected'])}</td><td class='n'>{_num(m['p'], 3)}</td>"
            f"<td class='{'yes' if m['broken'] else ''}'>{'yes' if m['broken'] else 'no'}"
            "</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)
