"""The flags as the daemon last read them from Redis, with that server's ``run_id``, kept in
``state_dir/flags.json`` so that a Redis that comes back without them (restarted empty, or
from an older dump) gets them back even when the daemon restarted too.

Only the server's identity tells a lost key from a deleted one: within one ``run_id`` every
change was made by someone (``agentsup flags unset``, ``redis-cli DEL``) and is taken as it
is; across a new ``run_id`` the keys are put back as they were (supervisor/flags/book.py).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import orjson

from supervisor.logs import get as get_logger

log = get_logger("flags")


class KeptFlags:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_id: str | None = None
        self.raw: dict[str, str] = {}  # key -> its text; a key absent here was absent there

    def load(self) -> None:
        """At the first read: what an earlier daemon kept (nothing, if unreadable)."""
        try:
            data = orjson.loads(self.path.read_bytes())
            run_id, raw = data["run_id"], data["raw"]
            if not isinstance(run_id, str) or not isinstance(raw, dict):
                raise ValueError("not a flags record")
            self.raw = {str(k): str(v) for k, v in raw.items()}
            self.run_id = run_id
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("flags_record_unreadable", path=str(self.path), error=str(exc))

    def save(self, run_id: str, raw: dict[str, str | None]) -> bool:
        """Write what was read (atomically: a crash leaves the old file or the new one)."""
        kept = {k: v for k, v in raw.items() if v is not None}
        if run_id == self.run_id and kept == self.raw:
            return True
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(orjson.dumps({"run_id": run_id, "raw": kept}))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("flags_record_not_written", path=str(self.path), error=str(exc))
            return False
        self.run_id, self.raw = run_id, kept
        return True
