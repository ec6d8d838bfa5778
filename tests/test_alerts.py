"""Alerts: a real HTTP server in the test receives the webhook's POSTs; retries, give-ups and a
full queue that drops the oldest alert without blocking."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from supervisor.alerts import Alerter
from supervisor.config import AlertsSection, Color, parse
from supervisor.errors import ConfigError
from supervisor.guard.verdict import Action, Severity, Verdict
from supervisor.rollout.responder import alert_from_verdict

# Tiny backoff so that retries take milliseconds; bounds in the asserts are generous.
FAST: dict[str, Any] = {"backoff_initial_s": 0.001, "backoff_max_s": 0.01, "timeout_s": 5.0}


@dataclass
class Webhook:
    """What the test server saw, and how it answers: ``statuses`` in turn, then 200."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def webhook_server(statuses: list[int] | None = None) -> Iterator[Webhook]:
    hook = Webhook(statuses=list(statuses or []))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with hook.lock:
                hook.requests += 1
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.bodies.append(orjson.loads(body))
                    hook.headers.append(dict(self.headers))
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_port}/hooks/agentsup?token=s3cret"
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@asynccontextmanager
async def worker(alerter: Alerter) -> AsyncIterator[asyncio.Task[None]]:
    """The alerter's worker as an owned task, cancelled at the end (as the daemon does)."""
    task = asyncio.create_task(alerter.run())
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def dead_url() -> str:
    """A URL on a port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def counter() -> tuple[list[int], Callable[[], None]]:
    calls: list[int] = []
    return calls, lambda: calls.append(1)


VERDICT = Verdict(
    "escrow_gap",
    Severity.MEDIUM,
    Action.ROLLBACK,
    Color.GREEN,
    "escrow esc-1 unchecked by green for 61 s (gap 60 s): audit esc-1",
    value=61.0,
    threshold=60.0,
    window=1.0,
)


def test_alert_from_verdict_builds_the_body() -> None:
    body = alert_from_verdict(
        VERDICT,
        supervisor_name="dice-bot",
        version="2.0.0",
        epoch=8,
        extra={"escrows": [{"id": "esc-1", "due_at": None}], "trigger": "not this"},
        at=1_767_225_600.5,
    )
    assert body == {
        "trigger": "escrow_gap",  # extra cannot replace the contract's fields
        "severity": "medium",
        "action": "rollback",
        "color": "green",
        "version": "2.0.0",
        "message": VERDICT.message,
        "value": 61.0,
        "threshold": 60.0,
        "window": 1.0,
        "baseline": None,
        "epoch": 8,
        "at": 1_767_225_600.5,
        "supervisor": "dice-bot",
        "escrows": [{"id": "esc-1", "due_at": None}],
    }
    assert isinstance(
        alert_from_verdict(VERDICT, supervisor_name="s", version=None, epoch=None)["at"], float
    )


async def test_the_webhook_receives_the_alert_as_json() -> None:
    with webhook_server() as hook:
        alerter = Alerter(hook.url, **FAST)
        body = alert_from_verdict(VERDICT, supervisor_name="dice-bot", version="2.0.0", epoch=8)
        async with worker(alerter):
            alerter.send(body)
            async with asyncio.timeout(10):
                await alerter.drain()
        assert hook.bodies == [body]
        assert hook.headers[0]["Content-Type"] == "application/json"
        assert hook.headers[0]["User-Agent"].startswith("agent-supervisor/")
        assert (alerter.sent, alerter.failed, alerter.dropped) == (1, 0, 0)
        assert alerter.state()["webhook"] == hook.url.split("/")[2]  # the host, not the token


async def test_two_failures_then_success_on_the_third_attempt() -> None:
    calls, on_failure = counter()
    with webhook_server(statuses=[500, 503]) as hook:
        alerter = Alerter(hook.url, on_failure=on_failure, attempts=5, **FAST)
        async with worker(alerter):
            alerter.send({"trigger": "latency", "n": 1})
            async with asyncio.timeout(10):
                await alerter.drain()
        assert hook.requests == 3
        assert hook.bodies == [{"trigger": "latency", "n": 1}]
        assert (alerter.sent, alerter.failed) == (1, 0)
        assert calls == []


async def test_a_webhook_that_keeps_failing_gets_exactly_attempts_tries() -> None:
    calls, on_failure = counter()
    with webhook_server(statuses=[500] * 10) as hook:
        alerter = Alerter(hook.url, on_failure=on_failure, attempts=3, **FAST)
        async with worker(alerter):
            alerter.send({"trigger": "latency"})
            async with asyncio.timeout(10):
                await alerter.drain()
        assert hook.requests == 3
        assert calls == [1]
        assert (alerter.sent, alerter.failed) == (0, 1)


async def test_a_dead_url_calls_on_failure_after_the_attempts() -> None:
    calls, on_failure = counter()
    alerter = Alerter(dead_url(), on_failure=on_failure, attempts=4, **FAST)
    async with worker(alerter):
        alerter.send({"trigger": "double_spend"})
        alerter.send({"trigger": "double_spend", "n": 2})
        async with asyncio.timeout(10):
            await alerter.drain()
    assert calls == [1, 1]
    assert (alerter.sent, alerter.failed) == (0, 2)


@pytest.mark.parametrize("status", [400, 404, 302])
async def test_a_rejection_is_not_retried_and_a_redirect_not_followed(status: int) -> None:
    calls, on_failure = counter()
    with webhook_server(statuses=[status]) as hook:
        alerter = Alerter(hook.url, on_failure=on_failure, attempts=5, **FAST)
        async with worker(alerter):
            alerter.send({"trigger": "latency"})
            async with asyncio.timeout(10):
                await alerter.drain()
        assert hook.requests == 1  # a redirect followed would be a second request (a GET)
        assert calls == [1]


async def test_a_full_queue_drops_the_oldest_and_send_never_blocks() -> None:
    with webhook_server() as hook:
        alerter = Alerter(hook.url, queue_size=3, **FAST)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(1000):  # no worker yet: the queue fills and stays full
            alerter.send({"n": n})
        assert loop.time() - started < 1.0
        assert (alerter.pending, alerter.dropped) == (3, 997)
        async with worker(alerter):
            async with asyncio.timeout(10):
                await alerter.drain()
        assert [b["n"] for b in hook.bodies] == [997, 998, 999]  # the newest were kept


async def test_a_failing_on_failure_does_not_stop_the_worker() -> None:
    def broken() -> None:
        raise RuntimeError("metrics are gone")

    with webhook_server(statuses=[400]) as hook:
        alerter = Alerter(hook.url, on_failure=broken, **FAST)
        async with worker(alerter) as task:
            alerter.send({"n": 1})
            alerter.send({"n": 2})
            async with asyncio.timeout(10):
                await alerter.drain()
            assert not task.done()
        assert [b["n"] for b in hook.bodies] == [2]


async def test_an_alert_that_is_not_json_costs_that_alert_only() -> None:
    calls, on_failure = counter()
    with webhook_server() as hook:
        alerter = Alerter(hook.url, on_failure=on_failure, **FAST)
        async with worker(alerter):
            alerter.send({"n": 1, "big": 2**70})  # orjson refuses ints over 64 bits
            alerter.send({"n": 2})
            async with asyncio.timeout(10):
                await alerter.drain()
        assert [b["n"] for b in hook.bodies] == [2]
        assert calls == [1]


async def test_without_a_webhook_send_only_logs() -> None:
    alerter = Alerter(None)
    alerter.send({"trigger": "latency"})
    assert alerter.pending == 0
    async with asyncio.timeout(1):
        await alerter.drain()  # nothing to wait for


def test_from_config() -> None:
    section = AlertsSection(webhook_url="https://hooks.example.com/x", attempts=2, queue_size=7)
    alerter = Alerter.from_config(section)
    assert (alerter.url, alerter.attempts, alerter.host) == (
        "https://hooks.example.com/x",
        2,
        "hooks.example.com",
    )
    with pytest.raises(ValueError, match="http"):
        Alerter("ftp://example.com/x")


MINIMAL: dict[str, Any] = {
    "agents": {
        "blue": {"command": ["agent"], "version": "1"},
        "green": {"command": ["agent"], "version": "2"},
    }
}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/hook", "alerts.webhook_url: must be an http:// or https:// URL"),
        ("hooks.example.com/x", "alerts.webhook_url: must be an http:// or https:// URL"),
        ("http:///nohost", "alerts.webhook_url: must be an http:// or https:// URL"),
        ("https://user:pw@example.com/x", "alerts.webhook_url: must not hold user:password@"),
        ("https://example.com:99999/x", "alerts.webhook_url: has an invalid port"),
    ],
)
def test_the_config_names_a_bad_webhook_url(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse({**MINIMAL, "alerts": {"webhook_url": url}})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(problem)


def test_the_config_takes_a_good_webhook_url() -> None:
    cfg = parse({**MINIMAL, "alerts": {"webhook_url": "https://hooks.example.com/T0/B1?x=1"}})
    assert cfg.alerts.webhook_url == "https://hooks.example.com/T0/B1?x=1"
    assert parse(MINIMAL).alerts.webhook_url is None
