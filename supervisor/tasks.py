"""Background tasks with an owner: named, tracked, and never failing in silence.

Two kinds. A *loop* lives as long as the daemon (the health check, the reconciler...): if one
ever ends with an exception, that is a bug in the daemon, and ``on_loop_failed`` decides what
follows (the daemon logs ``internal_task_failed`` and stops with exit 1). A *job* is short (a
rollback, a permit): tracked until done; its exception goes to ``on_job_failed``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from supervisor.logs import get as get_logger

log = get_logger("tasks")


class Tasks:
    def __init__(
        self,
        on_loop_failed: Callable[[asyncio.Task[Any], BaseException], None],
        on_job_failed: Callable[[asyncio.Task[Any], BaseException], None],
    ) -> None:
        self._on_loop_failed = on_loop_failed
        self._on_job_failed = on_job_failed
        self._loops: list[asyncio.Task[Any]] = []
        self._jobs: set[asyncio.Task[Any]] = set()

    def loop(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A task that runs until cancelled."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._loop_done)
        self._loops.append(task)
        return task

    def job(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A short task, tracked until done."""
        task = asyncio.create_task(coro, name=name)
        self._jobs.add(task)
        task.add_done_callback(self._job_done)
        return task

    def _loop_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._on_loop_failed(task, exc)

    def _job_done(self, task: asyncio.Task[Any]) -> None:
        self._jobs.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._on_job_failed(task, exc)

    async def cancel_loops(self) -> None:
        await cancel_all(self._loops)

    async def cancel_jobs(self) -> None:
        await cancel_all(list(self._jobs))


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel and wait; a task whose library swallowed the cancellation is asked again."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            log.warning("task_ignored_cancel", task=task.get_name())
