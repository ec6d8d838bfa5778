"""One daemon per namespace: the lease in Redis (``{ns}:lease``), taken at start and renewed
from the event loop; the flip and adopt scripts refuse a daemon that does not hold it.

A second daemon on a held namespace refuses to start (or, with ``on_lease_held = "wait"``,
waits without starting a child). A holder found on this host and dead (killed with -9) is
replaced at once. A lease found missing (never taken, or lost by a Redis restarted empty or
flushed while its holder lives) is claimed and taken only once the claim is a TTL old, so a
live holder renews over it first; a clean stop leaves a marker that lets a restart take it at
once. A holder that cannot renew for two thirds of the TTL (Redis out of reach)
fences its own children *before* the lease can expire and another daemon take over; one that
finds the lease taken stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from supervisor.arbiter.arbiter import Arbiter, Claiming, Holder, LeaseMode
from supervisor.config import SupervisorSection
from supervisor.errors import NamespaceHeld, RedisUnavailable
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics

log = get_logger("lease")


class Lease:
    def __init__(
        self,
        arbiter: Arbiter,
        settings: SupervisorSection,
        metrics: Metrics,
        *,
        on_fenced: Callable[[bool], None],
        on_lost: Callable[[str], None],
        embedded: bool = False,
    ) -> None:
        self._arbiter = arbiter
        self._settings = settings
        self._metrics = metrics
        self._on_fenced = on_fenced
        self._on_lost = on_lost
        self._embedded = embedded  # the daemon's own Redis: nobody else can hold the lease
        self._renewed = time.monotonic()
        self.fenced = False  # our children are told to stand by: we may have lost it

    async def take(self) -> None:
        """Take the lease, or refuse to start (:class:`NamespaceHeld`), or wait for it.

        A lease found missing is claimed and taken only once the claim is a TTL old (Redis may
        have just lost it while its holder lives: that holder renews over the claim and keeps
        the namespace). The embedded Redis is ours alone: nothing to wait for there.
        """
        sup = self._settings
        mode: LeaseMode = "now" if self._embedded else "claim"
        replace = ""
        waiting_logged = 0.0
        claim_logged = False
        while True:
            try:
                holder = await self._arbiter.take_lease(sup.lease_ttl_s, replace, mode)
            except RedisUnavailable:
                # Redis went away during the start (found by the chaos run): wait for it,
                # no child starts meanwhile; never exit for it.
                await asyncio.sleep(min(1.0, sup.lease_ttl_s / 3))
                continue
            if holder is None:
                self._renewed = time.monotonic()
                self._metrics.lease_held.set(1)
                log.info("lease_taken", namespace=sup.namespace, ttl_s=sup.lease_ttl_s)
                return
            if isinstance(holder, Claiming):
                if not claim_logged:
                    claim_logged = True
                    log.info(
                        "lease_claimed",
                        namespace=sup.namespace,
                        wait_s=round(holder.wait_s, 3),
                        hint="the lease was missing: taken once no live daemon renews it",
                    )
                await asyncio.sleep(min(holder.wait_s, sup.lease_ttl_s / 3) + 0.01)
                continue
            if holder.is_dead_here() and holder.raw != replace:
                log.warning("lease_taken_over", previous=holder.describe(), hint="it is gone")
                replace = holder.raw
                continue
            if sup.on_lease_held == "refuse":
                raise NamespaceHeld(
                    f"namespace {sup.namespace!r} is supervised by another daemon "
                    f"({holder.describe()}); refusing to start "
                    '(supervisor.on_lease_held = "wait" waits for it instead)'
                )
            if time.monotonic() - waiting_logged > 30.0:
                waiting_logged = time.monotonic()
                log.warning(
                    "lease_waiting",
                    holder=holder.describe(),
                    hint="no child starts until the holder lets go",
                )
            await asyncio.sleep(min(1.0, sup.lease_ttl_s / 3))

    async def keep(self) -> None:
        """Renew every third of the TTL until cancelled (or the lease is found taken)."""
        ttl = self._settings.lease_ttl_s
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                holder = await self._arbiter.take_lease(ttl)
            except RedisUnavailable:
                if not self.fenced and time.monotonic() - self._renewed > ttl * 2 / 3:
                    log.error(
                        "lease_unrenewed",
                        seconds=round(time.monotonic() - self._renewed, 3),
                        hint="children told to stand by until the lease is renewed",
                    )
                    self._fence(True)
                continue
            if isinstance(holder, Holder) and holder.is_dead_here():
                # Redis went back to a dump holding a dead predecessor's lease: ours again.
                holder = await self._arbiter.take_lease(ttl, replace=holder.raw)
            if isinstance(holder, Holder):
                self.lost(holder.describe())
                return
            self._renewed = time.monotonic()
            if self.fenced:
                log.info("lease_renewed", hint="children back to their roles")
                self._fence(False)

    def lost(self, holder: str) -> None:
        log.error(
            "lease_lost",
            holder=holder,
            hint="another daemon supervises this namespace now; stopping ours",
        )
        self._fence(True)
        self._on_lost("lease lost")

    def _fence(self, fenced: bool) -> None:
        self.fenced = fenced
        self._metrics.lease_held.set(0 if fenced else 1)
        self._on_fenced(fenced)
