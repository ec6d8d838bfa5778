"""Alerts: a JSON POST to the operator's webhook, in the background, never in the pipeline's way.

:meth:`Alerter.send` puts the alert on a bounded queue and returns: it never blocks and never
raises (when the queue is full the oldest alert is dropped and counted, since the newest says
most about now). :meth:`Alerter.run` is the worker, a task the daemon owns and cancels at
shutdown: it POSTs one alert at a time with ``urllib.request`` in a thread (no HTTP client to
depend on for one request a minute), retried with tenacity: exponential backoff with jitter,
capped, ``attempts`` tries in all. A 5xx, a 408, a 429, a refused or dropped connection and a
timeout are retried; any other answer (a 4xx, a redirect, which a POST must not follow) is a
rejection that no retry will change. An alert that is not delivered calls ``on_failure`` (the
daemon counts ``agentsup_webhook_failures_total``) and is logged with its trigger.

With no webhook configured, ``send`` only logs the alert.

The body is :func:`supervisor.rollout.responder.alert_from_verdict`'s object:

.. code-block:: json

    {"trigger": "latency", "severity": "medium", "action": "alert", "color": "green",
     "version": "2.0.0", "message": "candidate median 48.0 ms is 4.8× stable 10.0 ms ...",
     "value": 4.8, "threshold": 2.0, "window": 50.0, "baseline": 10.0, "epoch": 8,
     "at": 1767225600.123, "supervisor": "dice-bot"}

plus whatever ``extra`` adds (``escrows``: the list to audit, for escrow_gap).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import IO, Any, Final
from urllib.parse import urlsplit

import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from supervisor import __version__
from supervisor.config import AlertsSection
from supervisor.errors import SupervisorError
from supervisor.logs import BurstLog
from supervisor.logs import get as get_logger

log = get_logger("alerts")

# Answers worth another try: the webhook is overloaded, restarting or rate-limiting us.
RETRY_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
# How much of a reply body is read (and thrown away) so the connection closes cleanly.
REPLY_READ_MAX: Final = 64 * 1024

Alert = dict[str, Any]


class WebhookError(SupervisorError):
    """The webhook did not take an alert."""

    code = "webhook"


class WebhookUnavailable(WebhookError):
    """No answer, a dropped connection, or an answer that says try again (5xx, 408, 429)."""


class WebhookRejected(WebhookError):
    """An answer that another try will not change (a 4xx, a redirect)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would follow a 301/302 as a GET without the body: the alert would be lost and the
    # 200 at the end would look like a delivery. A redirect is an error to fix in the config.
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


class Alerter:
    """Delivers alerts to one webhook in the background.

    >>> alerter = Alerter("https://hooks.example.com/agentsup", attempts=5)
    >>> alerter.send({"trigger": "latency", "message": "slow"})  # returns at once
    >>> alerter.pending  # until the worker, ``await alerter.run()``, takes it
    1
    """

    def __init__(
        self,
        webhook_url: str | None,
        *,
        on_failure: Callable[[], None] | None = None,
        queue_size: int = 1000,
        attempts: int = 5,
        timeout_s: float = 5.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        if webhook_url is not None and urlsplit(webhook_url).scheme not in ("http", "https"):
            raise ValueError("webhook_url must be an http:// or https:// URL")
        if queue_size < 1 or attempts < 1:
            raise ValueError("queue_size and attempts must be at least 1")
        self.url = webhook_url
        # For the log: the host only, since a webhook's path often holds its secret token.
        self.host = urlsplit(webhook_url).netloc if webhook_url else None
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._on_failure = on_failure
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=queue_size)
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._drops = BurstLog()
        self.sent = 0  # delivered
        self.failed = 0  # given up on after the retries (or rejected)
        self.dropped = 0  # pushed out of a full queue before a try

    @classmethod
    def from_config(
        cls, section: AlertsSection, *, on_failure: Callable[[], None] | None = None
    ) -> Alerter:
        """An alerter with the settings of ``[alerts]``."""
        return cls(
            section.webhook_url,
            on_failure=on_failure,
            queue_size=section.queue_size,
            attempts=section.attempts,
            timeout_s=section.timeout_s,
            backoff_initial_s=section.backoff_initial_s,
            backoff_max_s=section.backoff_max_s,
        )

    # -- the caller's side: never blocks ----------------------------------------------------

    def send(self, alert: Alert) -> None:
        """Queue ``alert`` for the webhook (from the event loop's thread). When the queue is
        full the oldest alert waiting is dropped and counted."""
        if self.url is None:
            log.info("alert", alert=alert, webhook=None)
            return
        queue = self._queue
        if queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
                queue.task_done()
                self.dropped += 1
                suppressed = self._drops.should_log(time.monotonic())
                if suppressed is not None:
                    log.warning(
                        "alert_dropped",
                        reason="queue full",
                        dropped_total=self.dropped,
                        suppressed_since_last=suppressed,
                    )
        queue.put_nowait(alert)

    @property
    def pending(self) -> int:
        """Alerts waiting for the worker (the one in flight is not counted)."""
        return self._queue.qsize()

    def state(self) -> dict[str, Any]:
        return {
            "webhook": self.host,
            "pending": self.pending,
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
        }

    # -- the worker ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver alerts until cancelled (the daemon owns this task)."""
        queue = self._queue
        while True:
            alert = await queue.get()
            try:
                await self._deliver(alert)
            finally:
                queue.task_done()

    async def drain(self) -> None:
        """Wait until every queued alert has been delivered or given up on (at shutdown, under
        the daemon's own time limit: ``async with asyncio.timeout(2): await alerter.drain()``).
        Returns at once when nothing is queued or no webhook is set."""
        await self._queue.join()

    async def _deliver(self, alert: Alert) -> None:
        trigger = alert.get("trigger")
        try:
            body = orjson.dumps(alert, default=str, option=orjson.OPT_NON_STR_KEYS)
            retrying = AsyncRetrying(
                stop=stop_after_attempt(self.attempts),
                # Not wait_exponential_jitter: its `initial` is deprecated in tenacity 9 and its
                # `multiplier` does not exist in 8, and the project supports both.
                wait=wait_exponential(multiplier=self.backoff_initial_s, max=self.backoff_max_s)
                + wait_random(0, self.backoff_initial_s),
                retry=retry_if_exception_type(WebhookUnavailable),
                before_sleep=self._retrying,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    await asyncio.to_thread(self._post, body)
        except WebhookError as exc:
            self._given_up(trigger, str(exc))
        except Exception as exc:  # a bug must cost one alert, not the alerting
            log.exception("alert_failed", trigger=trigger, webhook=self.host)
            self._given_up(trigger, repr(exc))
        else:
            self.sent += 1
            log.debug("alert_sent", trigger=trigger, webhook=self.host)

    def _retrying(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.info(
            "alert_retry",
            webhook=self.host,
            attempt=state.attempt_number,
            attempts=self.attempts,
            wait_s=round(wait, 3),
            error=str(exc),
        )

    def _given_up(self, trigger: object, error: str) -> None:
        self.failed += 1
        log.warning("alert_not_delivered", trigger=trigger, webhook=self.host, error=error)
        if self._on_failure is not None:
            try:
                self._on_failure()
            except Exception:
                log.exception("alert_on_failure_failed")

    def _post(self, body: bytes) -> None:
        """One POST, in a worker thread: returns on a 2xx, raises a WebhookError otherwise."""
        assert self.url is not None
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"agent-supervisor/{__version__}",
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as reply:
                reply.read(REPLY_READ_MAX)
                status = reply.status
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in RETRY_STATUS or exc.code >= 500:
                raise WebhookUnavailable(f"HTTP {exc.code}") from None
            raise WebhookRejected(f"HTTP {exc.code}") from None
        except (OSError, http.client.HTTPException) as exc:
            # URLError (refused, no route, DNS), timeouts and dropped connections: all OSError.
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise WebhookUnavailable(f"{type(exc).__name__}: {reason}") from None
        if not 200 <= status < 300:
            raise WebhookRejected(f"HTTP {status}")
