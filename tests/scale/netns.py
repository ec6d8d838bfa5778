"""Several "hosts" on this one machine, for tests of what crosses a network.

Each host is a network namespace of its own (``ip netns add``) with one interface, ``eth0``,
a veth pair whose other end sits on a bridge in a "switch" namespace: every host reaches every
other on one /24 of 10.231.0.0/16, and nothing else. No link, address or route is ever made
in the machine's own namespace (each veth is created inside the switch namespace with its peer
moved straight into the host's), so no packet of a test leaves its hosts, and the machine's
own services (the Redis on 127.0.0.1:6379) are out of their reach.

    with hosts("a", "b", "c") as net:
        redis = NetnsRedis(net["b"], directory, port=6390)
        ...  # a process on host a: net["a"].prefix + [argv...]
        net["a"].cut()  # its link goes down: it reaches nobody, nobody reaches it
        net["a"].heal()

Names carry this process's pid (``asnet<PID>-a``), so two runs never meet; everything is
deleted on the way out, even on failure, with whatever still ran inside (namespaces left by
a run that was killed are deleted by the next one: their pid is gone). ``unavailable()`` says
why it cannot work here (not root, no iproute2, no ``ip netns``), for a skip.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IP = shutil.which("ip")
UNSHARE = shutil.which("unshare")
REDIS_SERVER = shutil.which("redis-server")
PREFIX = "asnet"
_OURS = re.compile(rf"^{PREFIX}(\d+)-")
SUBNET_BASE = "10.231"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert IP is not None
    return subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, check=check)


def unavailable() -> str | None:
    """Why network-namespace hosts cannot be made here, or None when they can."""
    if IP is None:
        return "iproute2's ip is not installed (Debian: apt-get install iproute2)"
    if UNSHARE is None:
        return "unshare is not installed (Debian: util-linux)"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    try:
        assert UNSHARE is not None
        ran = _ip("netns", "exec", probe, UNSHARE, "--uts", "--", "true", check=False)
        if ran.returncode != 0:
            return f"ip netns exec ... unshare --uts failed: {ran.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _delete(netns: str) -> None:
    """Kill what still runs inside (ours: only this module makes these names), then delete."""
    pids = _ip("netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", netns, check=False)


def sweep_stale() -> None:
    """Delete namespaces a killed run of this module left (their pid is gone)."""
    for name in _namespaces():
        match = _OURS.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _delete(name)


@dataclass(frozen=True)
class Host:
    """One host: a network namespace with ``eth0`` at ``address`` and a hostname of its own
    (a UTS namespace per process started through ``prefix``)."""

    name: str
    netns: str
    address: str
    iface: str = "eth0"

    @property
    def hostname(self) -> str:
        return f"host-{self.name}"

    @property
    def prefix(self) -> list[str]:
        """Put in front of a command to run it on this host. It execs the command (same pid),
        in this network namespace, with its own hostname."""
        assert IP is not None
        assert UNSHARE is not None
        return [
            IP, "netns", "exec", self.netns,
            UNSHARE, "--uts", "--",
            "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname,
        ]  # fmt: skip

    def run(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a command on this host and wait for it."""
        return subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )

    def cut(self) -> None:
        """Take this host off the network (its link goes down: packets to and from it are
        dropped, its connections break)."""
        _ip("-n", self.netns, "link", "set", self.iface, "down")

    def heal(self) -> None:
        _ip("-n", self.netns, "link", "set", self.iface, "up")


@contextlib.contextmanager
def hosts(*names: str) -> Iterator[dict[str, Host]]:
    """Hosts joined by one switch; deleted on the way out, whatever happened."""
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    sweep_stale()
    run = f"{PREFIX}{os.getpid()}"
    subnet = f"{SUBNET_BASE}.{os.getpid() % 250 + 1}"
    switch = f"{run}-sw"
    made: list[str] = []
    try:
        _ip("netns", "add", switch)
        made.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        net: dict[str, Host] = {}
        for i, name in enumerate(names):
            host = Host(name, f"{run}-{name}", f"{subnet}.{i + 1}")
            _ip("netns", "add", host.netns)
            made.append(host.netns)
            port = f"p-{name}"[:15]
            _ip("-n", switch, "link", "add", port, "type", "veth",
                "peer", "name", host.iface, "netns", host.netns)  # fmt: skip
            _ip("-n", switch, "link", "set", port, "master", "br0")
            _ip("-n", switch, "link", "set", port, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.iface)
            _ip("-n", host.netns, "link", "set", host.iface, "up")
            net[name] = host
        yield net
    finally:
        for netns in reversed(made):
            _delete(netns)


class NetnsRedis:
    """A redis-server on one host, bound to that host's address only (no disk writes)."""

    def __init__(
        self, host: Host, directory: Path, *, port: int = 6390, password: str | None = None
    ) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        self.host = host
        self.dir = directory
        self.port = port
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self._drain = threading.Thread()

    @property
    def url(self) -> str:
        return f"redis://{self.host.address}:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        assert REDIS_SERVER is not None
        argv = [
            REDIS_SERVER,
            "--bind", self.host.address,
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if self.password is not None:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(
            [*self.host.prefix, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert self.proc.stdout is not None
        ready = threading.Event()
        out = self.proc.stdout
        seen: list[bytes] = []

        def drain() -> None:  # never blocks on a full pipe; tells when it is ready
            for line in out:
                if len(seen) < 200:
                    seen.append(line)
                if b"ready to accept connections" in line.lower():
                    ready.set()

        self._drain = threading.Thread(target=drain, daemon=True, name="netns-redis-drain")
        self._drain.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    "redis-server did not become ready: " + b"".join(seen).decode(errors="replace")
                )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cli(self, *args: str) -> str:
        """redis-cli on the Redis host itself."""
        argv = ["redis-cli", "-h", self.host.address, "-p", str(self.port)]
        env = dict(os.environ)
        if self.password is not None:
            env["REDISCLI_AUTH"] = self.password
        out = subprocess.run(
            [*self.host.prefix, *argv, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env=env,
        )
        return out.stdout.strip()

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._drain.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
