"""A hostile agent for the containment tests: it starts a process that tries to outlive it.

$DETACH_MODE says how the process gets away:
  setsid       a child that calls setsid() (a session and a group of its own, out of the
               agent's group) and sleeps; the agent keeps running
  orphan       a child starts a setsid() grandchild and exits: the grandchild is orphaned
               (reparented to the nearest subreaper) while the agent keeps running
  double_fork  the classic daemonization: fork, setsid, fork again, the middle one exits
  exit         a setsid() child, then the agent itself exits with $DETACH_EXIT_CODE (3)

Each detached process writes its pid to $DETACH_DIR/<color>-<pid>.pid (atomically, once it
has got away) and then ignores SIGTERM, SIGHUP and SIGINT and sleeps: only SIGKILL ends it.
A setsid child keeps every inherited descriptor (the channel, the pipes to the supervisor),
as careless code would; a daemonized one points its standard streams at /dev/null.
"""

import os
import signal
import sys
import time

MODE = os.environ["DETACH_MODE"]
DIR = os.environ["DETACH_DIR"]
COLOR = os.environ.get("AGENTSUP_COLOR", "agent")


def detached() -> None:
    """Become the process that must not survive: announce, then refuse to die politely."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    pid = os.getpid()
    tmp = os.path.join(DIR, f".{COLOR}-{pid}.tmp")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, os.path.join(DIR, f"{COLOR}-{pid}.pid"))
    while True:
        time.sleep(3600)


def to_dev_null() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def fork_setsid_child() -> int:
    pid = os.fork()
    if pid == 0:
        os.setsid()
        detached()
    return pid


def main() -> None:
    print(f"detaching-agent {COLOR} mode={MODE} pid={os.getpid()}", flush=True)
    child = 0
    if MODE in ("setsid", "exit"):
        child = fork_setsid_child()
    elif MODE == "orphan":
        middle = os.fork()
        if middle == 0:
            fork_setsid_child()
            os._exit(0)  # the grandchild is orphaned at once
        os.waitpid(middle, 0)
    elif MODE == "double_fork":
        middle = os.fork()
        if middle == 0:
            os.setsid()
            if os.fork() == 0:
                to_dev_null()
                detached()
            os._exit(0)
        os.waitpid(middle, 0)
    else:
        sys.exit(f"unknown DETACH_MODE {MODE!r}")
    if MODE == "exit":
        # Exit only once the child has got away, so that it is a setsid'd process that is left.
        while not os.path.exists(os.path.join(DIR, f"{COLOR}-{child}.pid")):
            time.sleep(0.01)
        sys.exit(int(os.environ.get("DETACH_EXIT_CODE", "3")))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
