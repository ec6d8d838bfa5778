"""The rotated files in the background: gzipped, and the oldest beyond ``keep`` removed, after
a ``retention`` record says which (so that ``verify`` knows why the log starts later)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from supervisor.decisions import files
from supervisor.decisions.files import LogFileError
from supervisor.logs import get as get_logger

if TYPE_CHECKING:
    from supervisor.decisions.writer import DecisionLog

log = get_logger("decision_log")


async def maintain(decisions: DecisionLog) -> None:
    """One pass (a task of the log's own, awaited at its close). Never raises: a failure of
    the disk is counted and alerted by the log, a bug of ours said."""
    try:
        await _compress(decisions)
        await _prune(decisions)
    except LogFileError as exc:
        decisions.failed(exc, recovering=False)
    except Exception as exc:  # a bug of ours: said, and the next rotation tries again
        log.error(
            "decision_log_maintenance_failed",
            error=f"{type(exc).__name__}: {exc}"[:300],
            hint="rotated files may stay uncompressed until the next rotation",
        )


async def _compress(decisions: DecisionLog) -> None:
    if decisions.cfg.compress != "gzip":
        return
    while True:  # again until none is left: rotations may come meanwhile
        plain = [r for r in files.rotated_files(decisions.path) if not r.compressed]
        if not plain:
            return
        for r in plain:
            await asyncio.to_thread(files.compress, r)


async def _prune(decisions: DecisionLog) -> None:
    keep = decisions.cfg.keep
    gone = files.prunable(decisions.path, keep)
    if not gone or not decisions.accepting:
        return  # (a log that cannot record the retention does not remove anything)
    kept = files.rotated_files(decisions.path)[len(gone) :]
    decisions.retention(
        {
            "removed": [r.path.name for r in gone],
            "removed_seqs": [gone[0].first, gone[-1].last],
            "before_seq": kept[0].first if kept else gone[-1].last + 1,
            "keep": keep,
        }
    )
    await decisions.flush()
    await asyncio.to_thread(files.remove, gone)
    log.info("decision_log_pruned", removed=[r.path.name for r in gone], keep=keep)
