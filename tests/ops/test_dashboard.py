"""The Grafana dashboard and the Prometheus rules name only metrics the daemon exports.

A dashboard panel or an alert on a misspelt metric shows nothing and never fires, silently:
these tests take every PromQL expression (every panel, rows nested or not, the template
variables, the annotations; every rule), pull out the ``agentsup_*`` names and look each one
up in what :class:`supervisor.metrics.Metrics` really registers. promtool then checks the
rules and runs their unit tests, and a real Prometheus scrapes a real metrics endpoint,
evaluates the rules and runs every dashboard query.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from supervisor.config import Color
from supervisor.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "agent-supervisor.json"
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "config" / "prometheus" / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")

# A metric name in PromQL: not preceded by a name character, so that "my_agentsup_x" does not
# count. A quoted one does (a label value, or {__name__="agentsup_x"}): none of ours is one.
METRIC_TOKEN = re.compile(r"(?<![A-Za-z0-9_:])agentsup_[A-Za-z0-9_:]*")

# The sample names each metric type exposes, by family type. A counter family is named
# without "_total"; a histogram has no sample under its bare name; prometheus_client's
# summaries have no quantiles, so only _count and _sum (quantile samples, if a summary ever
# has them, come in through the samples themselves).
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def exported_samples(registry: CollectorRegistry) -> dict[str, str]:
    """Every sample name the registry can expose, mapped to its family's name.

    Taken from the family types as well as the samples: a labelled metric whose label values
    have not been touched yet (``flips_total{reason}`` before the first flip) is registered
    but has no sample.
    """
    names: dict[str, str] = {}
    for family in registry.collect():
        for suffix in SAMPLE_SUFFIXES[family.type]:
            names[family.name + suffix] = family.name
        for sample in family.samples:
            names[sample.name] = family.name
    return names


EXPORTED = exported_samples(Metrics().registry)


def metric_names(expr: str) -> set[str]:
    return set(METRIC_TOKEN.findall(expr))


def unknown_metrics(exprs: dict[str, str]) -> dict[str, list[str]]:
    """{where: [names not exported]} for every expression naming one."""
    bad = {}
    for where, expr in exprs.items():
        missing = sorted(name for name in metric_names(expr) if name not in EXPORTED)
        if missing:
            bad[where] = missing
    return bad


# --- the dashboard -----------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in a collapsed row (and rows within rows)."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    """{"panel 12 'Title' A": expr, "variable job": query, "annotation Flips": expr}."""
    exprs = {}
    for panel in iter_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                where = f"panel {panel['id']} {panel['title']!r} {target['refId']}"
                exprs[where] = target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]
            exprs[f"variable {var['name']}"] = query["query"] if isinstance(query, dict) else query
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            exprs[f"annotation {annotation['name']}"] = annotation["expr"]
    return exprs


GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def as_promql(expr: str, *, job: str = "agent-supervisor", instance: str = ".*") -> str:
    """The expression as Grafana sends it, its variables replaced by plain values."""
    values = {
        "__rate_interval": "1m",
        "__interval": "15s",
        "__range": "1h",
        "job": job,
        "instance": instance,
    }

    def replace(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise KeyError(f"unknown Grafana variable {match.group(0)} in {expr!r}")
        return values[match.group(1)]

    return GRAFANA_VARIABLE.sub(replace, expr)


def promql_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """The dashboard's PromQL (template variable queries are Grafana's label_values(), not
    PromQL, and are left out)."""
    return {
        where: as_promql(expr)
        for where, expr in dashboard_exprs(dashboard).items()
        if not where.startswith("variable ")
    }


def test_the_checker_catches_names_the_daemon_does_not_export() -> None:
    exprs = {
        "misspelt counter": "rate(agentsup_flip_total[5m])",
        "counter without _total": "increase(agentsup_flips[5m])",
        "gauge is no histogram": "agentsup_active_epoch_bucket",
        "summary has no buckets": "agentsup_round_pnl_bucket",
        "histogram bare name": "agentsup_decision_latency_seconds",
        "fine": "agentsup_round_pnl_sum / agentsup_round_pnl_count",
        "fine too": "rate(agentsup_decision_latency_seconds_bucket[1m]) + agentsup_flips_total",
        "not ours": "my_agentsup_total + agentsup_active",
        # Quoted names count too, so that {__name__="..."} is checked as well.
        "quoted": 'up{__name__="agentsup_redis"}',
    }
    assert unknown_metrics(exprs) == {
        "misspelt counter": ["agentsup_flip_total"],
        "counter without _total": ["agentsup_flips"],
        "gauge is no histogram": ["agentsup_active_epoch_bucket"],
        "summary has no buckets": ["agentsup_round_pnl_bucket"],
        "histogram bare name": ["agentsup_decision_latency_seconds"],
        "quoted": ["agentsup_redis"],
    }


def test_exported_names_include_labelled_metrics_not_touched_yet() -> None:
    # flips_total{reason} has no sample before the first flip, but is exported.
    assert EXPORTED["agentsup_flips_total"] == "agentsup_flips"
    assert EXPORTED["agentsup_decision_latency_seconds_bucket"] == (
        "agentsup_decision_latency_seconds"
    )
    assert "agentsup_round_pnl_sum" in EXPORTED
    assert "agentsup_active_epoch" in EXPORTED


def test_every_dashboard_expression_names_only_exported_metrics() -> None:
    exprs = dashboard_exprs(load_dashboard())
    assert len(exprs) > 30, "the expressions were not found: has the dashboard's layout changed?"
    assert unknown_metrics(exprs) == {}


def test_the_whole_dashboard_names_only_exported_metrics() -> None:
    # Catches an expression in a place dashboard_exprs() does not look (a new panel type).
    names = metric_names(DASHBOARD.read_text(encoding="utf-8"))
    assert sorted(names - EXPORTED.keys()) == []
    extracted = set().union(*map(metric_names, dashboard_exprs(load_dashboard()).values()))
    assert sorted(names - extracted) == [], "names outside the expressions the tests read"


def test_panels_in_collapsed_rows_are_checked_too() -> None:
    dashboard = load_dashboard()
    nested = [
        panel
        for row in dashboard["panels"]
        if row["type"] == "row"
        for panel in iter_panels(row["panels"])
    ]
    assert nested, "no collapsed row: nothing tests the nested walk"
    exprs = dashboard_exprs(dashboard)
    for panel in nested:
        assert any(where.startswith(f"panel {panel['id']} ") for where in exprs), panel["title"]


def test_dashboard_covers_what_an_operator_watches() -> None:
    """The issue's list: active color and epoch, flips and rollbacks with their reasons,
    decisions and latency by color, PnL by color, triggers, children, Redis, permits."""
    used = {
        name for expr in dashboard_exprs(load_dashboard()).values() for name in metric_names(expr)
    }
    for family in [
        "agentsup_active",
        "agentsup_active_epoch",
        "agentsup_flips_total",
        "agentsup_rollbacks_total",
        "agentsup_decisions_total",
        "agentsup_decision_latency_seconds_bucket",
        "agentsup_round_pnl_sum",
        "agentsup_round_pnl_count",
        "agentsup_triggers_fired_total",
        "agentsup_trigger_value",
        "agentsup_trigger_threshold",
        "agentsup_child_state",
        "agentsup_child_restarts_total",
        "agentsup_redis_up",
        "agentsup_permits_granted_total",
        "agentsup_permits_denied_total",
    ]:
        assert family in used, family


def test_dashboard_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "agent-supervisor"
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [panel["id"] for panel in iter_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in iter_panels(dashboard["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


# --- the alert rules ---------------------------------------------------------------------


def rule_exprs(text: str) -> dict[str, str]:
    """{"AlertName#n": expr} from a rules file: plain and block scalars (">-", "|").

    A small reader for the one shape the rules file has, so that the test needs no YAML
    library; test_the_whole_rules_file_names_only_exported_metrics covers what it misses.
    """
    exprs: dict[str, str] = {}
    lines = text.splitlines()
    name = "?"
    for i, line in enumerate(lines):
        stripped = line.strip()
        for key in ("- alert:", "- record:"):
            if stripped.startswith(key):
                name = stripped.removeprefix(key).strip()
        if not stripped.startswith("expr:"):
            continue
        value = stripped.removeprefix("expr:").strip()
        if value[:1] in (">", "|"):
            indent = len(line) - len(line.lstrip())
            block = []
            for following in lines[i + 1 :]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                block.append(following.strip())
            value = " ".join(part for part in block if part)
        exprs[f"{name}#{sum(k.startswith(name + '#') for k in exprs)}"] = value
    return exprs


def test_rule_reader_reads_block_scalars() -> None:
    text = (
        "groups:\n  - name: g\n    rules:\n"
        "      - alert: A\n        expr: agentsup_redis_up == 0\n"
        "      - alert: B\n        expr: >-\n          agentsup_a\n          > agentsup_b\n"
        "        labels: {}\n"
    )
    assert rule_exprs(text) == {"A#0": "agentsup_redis_up == 0", "B#0": "agentsup_a > agentsup_b"}


def test_every_alert_names_only_exported_metrics() -> None:
    exprs = rule_exprs(ALERTS.read_text(encoding="utf-8"))
    assert len(exprs) >= 8
    assert unknown_metrics(exprs) == {}


def test_the_whole_rules_file_names_only_exported_metrics() -> None:
    for path in (ALERTS, ALERTS_TEST):
        names = metric_names(path.read_text(encoding="utf-8"))
        assert sorted(names - EXPORTED.keys()) == [], path.name


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    text = ALERTS.read_text(encoding="utf-8")
    alerts = re.split(r"^\s*- alert: ", text, flags=re.M)[1:]
    assert len(alerts) >= 8
    for block in alerts:
        name = block.split("\n", 1)[0].strip()
        assert re.search(r"^\s+severity: (critical|warning|info)$", block, re.M), name
        for key in ("summary", "description"):
            assert re.search(rf"^\s+{key}: ", block, re.M), f"{name}: no {key}"
        anchor = f'runbook: "README.md#runbook-{name.lower()}"'
        assert anchor in block, f"{name}: no {anchor}"


def test_every_alert_has_a_promtool_unit_test() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)$", ALERTS.read_text(encoding="utf-8"), re.M))
    tested = set(
        re.findall(r"^\s*alertname: (\w+)$", ALERTS_TEST.read_text(encoding="utf-8"), re.M)
    )
    assert sorted(alerts - tested) == []


needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses each query as a recording rule: a syntax error names the panel.
    queries = promql_queries(load_dashboard())
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (where, expr) in enumerate(queries.items()):
        lines += [f"      # {where}", f"      - record: dashboard:query_{i}"]
        lines += [f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr


# --- a real Prometheus scraping a real metrics endpoint ----------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def api(base: str, path: str, **params: str) -> dict[str, Any]:
    """GET a Prometheus API path; an error answer (400, 422) is returned, not raised."""
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code not in (400, 422):
            raise
        body = json.loads(exc.read())
    return body


@pytest.fixture
def prometheus_scraping(tmp_path: Path) -> Iterator[tuple[str, Metrics, str, Path]]:
    """(Prometheus API base URL, the Metrics it scrapes, the target's instance label, the
    Prometheus log)."""
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian: apt-get install prometheus)")
    metrics = Metrics()
    port = metrics.serve("127.0.0.1", 0)
    instance = f"127.0.0.1:{port}"
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {ALERTS}\n"
        "scrape_configs:\n  - job_name: agent-supervisor\n"
        f"    static_configs:\n      - targets: ['{instance}']\n",
        encoding="utf-8",
    )
    log_path = tmp_path / "prometheus.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{web}"
    try:
        yield base, metrics, instance, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        metrics.close()


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, urllib.error.URLError, KeyError, IndexError) as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"timed out; last error: {last!r}")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_prometheus_scrapes_the_metrics_and_runs_every_query_and_rule(
    prometheus_scraping: tuple[str, Metrics, str, Path],
) -> None:
    base, metrics, instance, log = prometheus_scraping
    metrics.set_active(Color.GREEN, 42)
    metrics.set_child_state(Color.BLUE, "RUNNING")
    metrics.set_child_state(Color.GREEN, "RUNNING")
    metrics.child_role_active.labels("green").set(1)
    metrics.redis_up.set(1)
    metrics.flips.labels("rollback").inc()
    metrics.rollbacks.labels("pnl_sigma").inc()
    metrics.triggers_fired.labels("pnl_sigma", "high").inc()
    metrics.trigger_value.labels("pnl_sigma", "green").set(3.4)
    metrics.trigger_threshold.labels("pnl_sigma").set(3.0)
    metrics.decisions[Color.GREEN].inc(5)
    metrics.decision_latency[Color.GREEN].observe(0.003)
    metrics.round_pnl[Color.GREEN].observe(-1.5)

    def epoch() -> float:
        body = api(base, "/api/v1/query", query=f'agentsup_active_epoch{{instance="{instance}"}}')
        return float(body["data"]["result"][0]["value"][1])

    try:
        value = wait_for(epoch)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nprometheus log:\n{log.read_text()[-3000:]}") from None
    assert value == 42

    # Every rule loaded and evaluated without error ("0001-..." is Go's zero time: not yet).
    def rules_evaluated() -> list[dict[str, Any]]:
        groups = api(base, "/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = rules and all(not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if done else []

    rules = wait_for(rules_evaluated)
    assert len(rules) == len(rule_exprs(ALERTS.read_text(encoding="utf-8")))
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []

    # The first rollback of a trigger makes a series that starts at 1, which increase()
    # alone cannot see: RollbackFired must fire all the same.
    def firing() -> set[tuple[str, str]]:
        alerts = api(base, "/api/v1/alerts")["data"]["alerts"]
        return {
            (a["labels"]["alertname"], a["labels"].get("trigger", ""))
            for a in alerts
            if a["state"] == "firing"
        }

    assert ("RollbackFired", "pnl_sigma") in wait_for(firing)
    assert not {name for name, _ in firing()} & {"BothColorsActive", "RedisUnreachable"}

    # Every dashboard query runs (no matching errors, e.g. many-to-many) on real series.
    failures = {}
    for where, expr in dashboard_exprs(load_dashboard()).items():
        if where.startswith("variable "):
            continue
        body = api(base, "/api/v1/query", query=as_promql(expr, instance=instance))
        if body["status"] != "success" or body.get("warnings"):
            failures[where] = body
    assert failures == {}
