"""Each color in a cgroup of its own, so that stopping a color kills everything in it.

Under systemd with ``Delegate=yes`` (the shipped unit has it) the daemon owns its cgroup (v2)
and may make sub-groups: ``<own>/blue`` and ``<own>/green``. A child joins its color's group
between ``fork`` and ``exec``, so everything it ever starts is born there, ``setsid()``,
double fork and all: the kernel keeps the membership, not the daemon's reading of ``/proc``.
When a color's process is gone (or stopped), ``cgroup.kill`` ends what is left in one write;
a daemon started after a ``kill -9`` of the last one empties both groups before its children
start, whether or not ``children.json`` knew them.

Nothing is done when the daemon's cgroup is the hierarchy's root or not writable (a shell, a
container without delegation): the process-group, subreaper and ``children.json`` layers
(:mod:`supervisor.children.reaper`) still hold; the daemon logs once that it runs without.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from supervisor.logs import get as get_logger

log = get_logger("cgroup")


def own_cgroup2(pid: int | str = "self") -> Path | None:
    """The directory of ``pid``'s cgroup in the v2 hierarchy, if one is mounted."""
    mount = _cgroup2_mount()
    if mount is None:
        return None
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return mount / line[3:].lstrip("/")
    return None


def _cgroup2_mount() -> Path | None:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split(" ")[4])
    return None


class ColorCgroup:
    """One color's group: joined by its children before exec, emptied with ``cgroup.kill``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Encoded before any fork: the child only opens and writes (see join_in_child).
        self._procs = os.fsencode(path / "cgroup.procs")

    def join_in_child(self) -> None:
        """Move the calling process into this group. Runs in the forked child before exec:
        plain system calls only. A failure leaves the child where it was (the other layers
        still hold); the parent checks and says so."""
        try:
            fd = os.open(self._procs, os.O_WRONLY)
        except OSError:
            return
        try:
            os.write(fd, b"0")
        except OSError:
            pass
        finally:
            os.close(fd)

    def holds(self, pid: int) -> bool:
        return own_cgroup2(pid) == self.path

    def pids(self) -> list[int]:
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def kill(self) -> list[int]:
        """Kill everything in the group; returns the pids that were there. ``cgroup.kill``
        (Linux 5.14) is one atomic write that also catches a process forking meanwhile; older
        kernels get SIGKILL pid by pid until the group is empty."""
        found = self.pids()
        if not found:
            return []
        try:
            (self.path / "cgroup.kill").write_text("1")
        except OSError:
            for _ in range(100):
                pids = self.pids()
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.01)
        return found

    def remove(self) -> None:
        """Remove the group (only possible once it is empty; left alone otherwise)."""
        with contextlib.suppress(OSError):
            self.path.rmdir()


def color_cgroups(colors: list[str], mode: str) -> dict[str, ColorCgroup]:
    """One group per color under the daemon's own cgroup, when it is delegated to us.
    ``mode``: ``auto`` (use them when possible) or ``off``."""
    if mode == "off":
        return {}
    own = own_cgroup2()
    if own is None or own == _cgroup2_mount() or not os.access(own, os.W_OK):
        log.info(
            "cgroups_unavailable",
            cgroup=str(own) if own else None,
            hint="no delegated cgroup (systemd Delegate=yes gives one): "
            "process groups, the subreaper and children.json contain the children",
        )
        return {}
    made: dict[str, ColorCgroup] = {}
    for color in colors:
        path = own / color
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            log.warning("cgroups_unavailable", cgroup=str(own), error=str(exc))
            return {}
        made[color] = ColorCgroup(path)
    log.info("cgroups_on", cgroups={c: str(g.path) for c, g in made.items()})
    return made
