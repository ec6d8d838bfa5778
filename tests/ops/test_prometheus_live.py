"""A real Prometheus scrapes a real daemon and sees a switch to green.

The other Prometheus test (``test_dashboard.py``) scrapes a bare :class:`Metrics` object that
the test fills in by hand; this one runs ``agentsup run`` with two raw protocol agents and a
test Redis, points Debian's ``prometheus`` at the port the daemon logged in
``metrics_listening``, switches to green through the CLI and reads the new epoch back through
Prometheus's HTTP API: what an operator's dashboard would show after a deploy.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.harness import PY, agent, running_daemon
from tests.ops.test_dashboard import free_port, rule_exprs
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus")
RAW = [PY, str(ROOT / "tests" / "agents" / "raw_agent.py")]

POLL_S = 0.2
WAIT_S = 30.0

T = TypeVar("T")


def api(base: str, path: str, **params: str) -> dict[str, Any]:
    """GET a Prometheus API path; an error answer (400, 422, 503) is returned, not raised."""
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = {"status": "http_error", "code": exc.code, "body": exc.read().decode()[:500]}
    return body


async def wait_until(
    what: str,
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    log: Path,
) -> T:
    """Poll ``probe`` every 200 ms until ``done`` holds; fail after 30 s with its last answer."""
    last: Any = "no answer yet"
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                try:
                    answer = await probe()
                    if done(answer):
                        return answer
                    last = answer
                except (OSError, urllib.error.URLError, ValueError) as exc:
                    last = exc
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        pass
    tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-3000:]
    raise AssertionError(
        f"{what}: not within {WAIT_S} s; last answer: {last!r}\nprometheus log:\n{tail}"
    )


@pytest.fixture
def prometheus_binary() -> str:
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian: apt-get install prometheus)")
    return PROMETHEUS


class PrometheusServer:
    """``prometheus`` scraping one target every second, with the project's alert rules."""

    def __init__(self, binary: str, directory: Path, target: str) -> None:
        self.directory = directory
        self.target = target
        self.base = f"http://127.0.0.1:{free_port()}"
        self.log = directory / "prometheus.log"
        config = directory / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {ALERTS}\n"
            "scrape_configs:\n  - job_name: agent-supervisor\n"
            f"    static_configs:\n      - targets: ['{target}']\n",
            encoding="utf-8",
        )
        self.argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={self.base.removeprefix('http://')}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"prometheus exited with {self.proc.returncode}:\n"
                f"{self.log.read_text(errors='replace')[-3000:]}"
            )
        return await asyncio.to_thread(api, self.base, path, **params)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` selects on this target: [] while there is none."""
        body = await self.get("/api/v1/query", query=expr)
        if body.get("status") != "success":
            raise ValueError(f"query {expr!r}: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_prometheus_reads_the_epoch_of_a_switch_from_a_running_daemon(
    redis_server: RedisServer, prometheus_binary: str, tmp_path: Path
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(RAW, "1.0.0"),
        green=agent(RAW, "2.0.0"),
    ) as d:
        target = (await d.wait_log("metrics_listening"))["address"]
        host, _, port = target.rpartition(":")
        assert host == "127.0.0.1"
        assert int(port) > 0
        await d.wait_status(
            lambda s: all(c["state"] == "RUNNING" and c["protocol"] for c in s["children"].values())
        )

        with PrometheusServer(prometheus_binary, tmp_path, target) as prom:
            on_target = f'instance="{target}",job="agent-supervisor"'

            # The target is up and its series arrive before the switch: blue at the first epoch.
            before = await d.status()
            assert before["active"] == "blue"
            await wait_until(
                "the daemon scraped: up == 1",
                lambda: prom.query(f"up{{{on_target}}}"),
                lambda r: values(r) == [1.0],
                prom.log,
            )
            await wait_until(
                f"agentsup_active_epoch == {before['epoch']} (blue) in Prometheus",
                lambda: prom.query(f"agentsup_active_epoch{{{on_target}}}"),
                lambda r: values(r) == [float(before["epoch"])],
                prom.log,
            )

            switched = await d.cli("switch", "green")
            assert switched.rc == 0, switched.err
            after = await d.status()
            assert after["active"] == "green"
            assert after["epoch"] > before["epoch"]

            await wait_until(
                f"agentsup_active_epoch == {after['epoch']} (green) in Prometheus",
                lambda: prom.query(f"agentsup_active_epoch{{{on_target}}}"),
                lambda r: values(r) == [float(after["epoch"])],
                prom.log,
            )
            active = await wait_until(
                'agentsup_active{color="green"} == 1 and blue 0 in Prometheus',
                lambda: prom.query(f"agentsup_active{{{on_target}}}"),
                lambda r: (
                    {s["metric"]["color"]: float(s["value"][1]) for s in r}
                    == {"green": 1.0, "blue": 0.0}
                ),
                prom.log,
            )
            assert len(active) == 2

            # Every alert rule loaded, was evaluated against the daemon's series, and is ok.
            # ("0001-..." is Go's zero time: a rule not evaluated yet.)
            async def rules() -> list[dict[str, Any]]:
                body = await prom.get("/api/v1/rules")
                if body.get("status") != "success":
                    raise ValueError(f"/api/v1/rules: {body}")
                groups = body["data"]["groups"]
                return [rule for group in groups for rule in group["rules"]]

            expected = len(rule_exprs(ALERTS.read_text(encoding="utf-8")))
            loaded = await wait_until(
                f"{expected} rules loaded and evaluated",
                rules,
                lambda rs: (
                    len(rs) == expected
                    and all(not r["lastEvaluation"].startswith("0001") for r in rs)
                ),
                prom.log,
            )
            assert [
                (r["name"], r["health"], r.get("lastError")) for r in loaded if r["health"] != "ok"
            ] == []

            # A switch done by an operator is no incident: nothing critical is even pending.
            alerts = (await prom.get("/api/v1/alerts"))["data"]["alerts"]
            raised = {a["labels"]["alertname"] for a in alerts}
            assert not raised & {
                "BothColorsActive",
                "NoColorActive",
                "RedisUnreachable",
                "AgentSupervisorDown",
                "EpochDecreased",
            }
