"""Capacity: how permit latency and Redis CPU move as more supervisors share one Redis.

    python bench/capacity.py               # 1, 5, 10, 20 supervisors, 10 permits/s per agent
    python bench/capacity.py --sizes 1,5 --load-s 5 --idle-s 3    # a quick look

One real redis-server on a free TCP port of 127.0.0.1 (never the host's 6379; no disk), and for
each size N, N real daemons (``python -m supervisor run -c FILE``, as ``agentsup run``), each
one deployment with a namespace, active key and flags prefix of its own (hash tag ``{capK}``,
as on a shared Redis or a Cluster), each with two light agents (this file, ``--agent``): SDK
agents that ask for a permit on a new key at a fixed rate (``--rate`` per second each) through
the channel, as every agent does by default, and write down each answer's latency. Blue acts:
its permits go daemon -> Redis (the permit script) -> journal -> agent; green stands by and is
refused by its own SDK without a round trip (counted, not timed).

Per size: the daemons are started and left idle for ``--idle-s`` (lease renewals, health
checks, reconciles: what a deployment costs Redis doing nothing), then the agents ask for
``--load-s``. Measured: the active agents' permit latency (p50, p99), Redis's CPU over each
window from ``/proc/PID/stat`` (utime + stime, clock ticks) and from ``INFO cpu`` (finer),
Redis commands per second (``INFO stats``), and the daemons' own CPU. Per deployment = the
total over N. Then the largest size once more with the keyspace watchers of ``--ghosts`` more
deployments subscribed (one connection subscribing what each daemon does: its active key's
channel and two flag patterns; nothing is written under them): Redis matches every keyspace
event against every pattern, so what a permit costs grows with the deployments on that Redis.

On paper: Redis runs one thread, so one Redis serves as many deployments as ``--headroom``
(default 50 %) of its core pays for: their idle cost, and their permits at the cost that the
deployments' number itself raises (``on_paper``).

The machine is shared (2 cores): latencies include whatever else it runs; the CPU figures are
the processes' own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PY = sys.executable
AGENT_SCRIPT = Path(__file__).resolve()
REDIS_SERVER = shutil.which("redis-server")
TICKS = os.sysconf("SC_CLK_TCK")
HOST_PORTS = frozenset({6379, 26379})  # the host's own Redis and Sentinel: never ours
READY_TIMEOUT_S = 120.0  # 20 daemons and 40 agents starting at once on a shared 2-core machine
_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_us() -> None:
    # Between fork and exec: if the benchmark dies, so does this process.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# --------------------------------------------------------------------------------- the agent


async def agent_main() -> None:
    """One light agent: a permit on a new key every 1/rate s while ``$CAP_DIR/go`` exists;
    one line per answer, ``T_NS LATENCY_NS REASON``, in ``$CAP_DIR/NAME-COLOR.lat``."""
    from supervisor.agent import Agent

    directory = Path(os.environ["CAP_DIR"])
    interval = 1.0 / float(os.environ["CAP_RATE"])
    color = os.environ["AGENTSUP_COLOR"]
    name = os.environ["CAP_NAME"]
    go = directory / "go"
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with (directory / f"{name}-{color}.lat").open("a", buffering=1 << 16) as out:
        async with Agent.connect() as agent:
            told = directory / f"{name}-{color}.role"
            agent.on_role(lambda role, epoch, allocation: told.write_text(f"{role} {epoch}"))
            n = 0
            next_at = time.monotonic()
            flushed = time.monotonic()
            while not (stop.is_set() or agent.lost.is_set()):
                if not go.exists():
                    out.flush()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.1)
                    next_at = time.monotonic()
                    continue
                n += 1
                asked = time.monotonic_ns()
                permit = await agent.permit(f"{name}-{color}-{os.getpid()}-{n}")
                done = time.monotonic_ns()
                out.write(f"{done} {done - asked} {permit.reason.value}\n")
                if time.monotonic() - flushed > 0.5:
                    out.flush()
                    flushed = time.monotonic()
                next_at += interval
                delay = next_at - time.monotonic()
                if delay < 0:  # behind (a slow answer): no burst to catch up
                    next_at = time.monotonic()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)


# ------------------------------------------------------------------------------- the world


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in HOST_PORTS:
            return port


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


class RedisProc:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None, "redis-server is not on PATH"
        argv = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]  # fmt: skip
        self.proc = subprocess.Popen(argv, preexec_fn=_die_with_us)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@dataclass
class Deployment:
    name: str
    dir: Path
    proc: asyncio.subprocess.Process
    ready: asyncio.Event
    reader: asyncio.Task[None]


async def start_deployment(
    name: str, root: Path, redis_url: str, lat_dir: Path, rate: float
) -> Deployment:
    from tests.harness import agent, write_config

    directory = root / name
    directory.mkdir()
    env = {"CAP_DIR": str(lat_dir), "CAP_RATE": str(rate), "CAP_NAME": name}
    command = [PY, str(AGENT_SCRIPT), "--agent"]
    tag = "{" + name + "}"
    config = write_config(
        directory,
        redis_url=redis_url,
        blue=agent(command, "1.0.0", env=env),
        green=agent(command, "2.0.0", env=env),
        sections={
            "supervisor": {"name": name, "namespace": tag, "lease_ttl_s": 10.0},
            "redis": {
                "active_key": f"{tag}:active_version",
                "flags_prefix": f"{tag}flag:",
                "permit_ttl_s": 3600,
            },
            "metrics": {"listen": ""},
        },
    )
    daemon_env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    daemon_env["PYTHONUNBUFFERED"] = "1"
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "supervisor", "run", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env=daemon_env, cwd=ROOT, preexec_fn=_die_with_us, limit=4 << 20,
    )  # fmt: skip
    ready = asyncio.Event()

    async def read() -> None:  # kept in NAME/daemon.log (--keep keeps it)
        assert proc.stdout is not None
        log = (directory / "daemon.log").open("ab")
        while line := await proc.stdout.readline():
            log.write(line)
            if not ready.is_set():
                with contextlib.suppress(orjson.JSONDecodeError):
                    if orjson.loads(line).get("event") == "ready":
                        ready.set()
        log.close()

    return Deployment(name, directory, proc, ready, asyncio.create_task(read()))


async def stop_deployments(deployments: list[Deployment]) -> None:
    for d in deployments:
        with contextlib.suppress(ProcessLookupError):
            d.proc.send_signal(signal.SIGTERM)
    for d in deployments:
        try:
            await asyncio.wait_for(d.proc.wait(), 60)
        except TimeoutError:
            d.proc.kill()
            await d.proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(d.reader, 5)


async def redis_counters(url: str) -> tuple[float, int]:
    """(used CPU seconds, commands processed) from INFO."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        info: dict[str, Any] = await client.info("all")
    finally:
        await client.aclose()
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"]), int(
        info["total_commands_processed"]
    )


@dataclass
class Window:
    seconds: float
    redis_ticks: int
    redis_cpu_s: float  # INFO
    commands: int
    daemon_ticks: int

    def redis_pct(self) -> float:
        return 100.0 * self.redis_ticks / TICKS / self.seconds

    def redis_info_pct(self) -> float:
        return 100.0 * self.redis_cpu_s / self.seconds


async def measure(seconds: float, redis: RedisProc, daemons: list[int]) -> Window:
    t0 = time.monotonic()
    r0, (c0, n0) = cpu_ticks(redis.pid), await redis_counters(redis.url)
    d0 = sum(cpu_ticks(p) for p in daemons)
    await asyncio.sleep(seconds)
    r1, (c1, n1) = cpu_ticks(redis.pid), await redis_counters(redis.url)
    d1 = sum(cpu_ticks(p) for p in daemons)
    return Window(time.monotonic() - t0, r1 - r0, c1 - c0, n1 - n0, d1 - d0)


@dataclass
class Row:
    n: int
    ghosts: int
    permits: int
    oks: int
    refused_locally: int
    other: dict[str, int]
    p50_ms: float
    p99_ms: float
    idle: Window
    load: Window

    @property
    def ok_per_s(self) -> float:
        return self.oks / self.load.seconds

    def redis_us_per_permit(self) -> float:
        load, idle = self.load, self.idle
        extra = load.redis_cpu_s / load.seconds - idle.redis_cpu_s / idle.seconds
        return 1e6 * extra / max(self.ok_per_s, 1e-9)


def read_samples(lat_dir: Path, t_from: int, t_to: int) -> tuple[list[float], dict[str, int]]:
    latencies: list[float] = []
    reasons: dict[str, int] = {}
    for path in lat_dir.glob("*.lat"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 3 or not t_from <= int(parts[0]) <= t_to:
                continue
            reason = parts[2]
            color = path.stem.rsplit("-", 1)[1]
            reasons[f"{color}:{reason}"] = reasons.get(f"{color}:{reason}", 0) + 1
            if reason == "ok":
                latencies.append(int(parts[1]) / 1e6)
    return latencies, reasons


def quantile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def every_agent_told(lat_dir: Path, deployments: list[Deployment]) -> None:
    """Until every blue agent was told it acts and every green one it stands by (a role push
    writes NAME-COLOR.role): on a busy machine 40 agents take a while to start."""
    want = {f"{d.name}-blue.role": "active" for d in deployments}
    want.update({f"{d.name}-green.role": "standby" for d in deployments})

    def missing() -> list[str]:
        out = []
        for file, role in want.items():
            try:
                told = (lat_dir / file).read_text().split()
            except FileNotFoundError:
                told = []
            if not told or told[0] != role:
                out.append(file)
        return out

    deadline = time.monotonic() + READY_TIMEOUT_S
    while left := missing():
        if time.monotonic() > deadline:
            raise RuntimeError(f"agents not told their roles: {left}")
        await asyncio.sleep(0.1)


async def run_size(
    n: int, redis: RedisProc, root: Path, args: argparse.Namespace, ghosts: int = 0
) -> Row:
    size_dir = root / f"n{n}g{ghosts}"
    lat_dir = size_dir / "lat"
    lat_dir.mkdir(parents=True)
    deployments: list[Deployment] = []
    try:
        for k in range(n):
            deployments.append(
                await start_deployment(f"cap{k}", size_dir, redis.url, lat_dir, args.rate)
            )
        waiting = [asyncio.create_task(d.ready.wait()) for d in deployments]
        _, pending = await asyncio.wait(waiting, timeout=READY_TIMEOUT_S)
        if pending:
            for task in pending:
                task.cancel()
            raise RuntimeError(f"{len(pending)} of {n} daemons not ready in {READY_TIMEOUT_S} s")
        pids = [d.proc.pid for d in deployments]
        await every_agent_told(lat_dir, deployments)
        await asyncio.sleep(args.settle_s)
        idle = await measure(args.idle_s, redis, pids)
        (lat_dir / "go").touch()
        await asyncio.sleep(args.warmup_s)
        t_from = time.monotonic_ns()
        load = await measure(args.load_s, redis, pids)
        t_to = time.monotonic_ns()
        (lat_dir / "go").unlink()
        await asyncio.sleep(1.0)  # the agents flush what they wrote
        latencies, reasons = read_samples(lat_dir, t_from, t_to)
    finally:
        await stop_deployments(deployments)
    oks = sum(v for k, v in reasons.items() if k.endswith(":ok"))
    refused = reasons.get("green:not_active", 0)
    other = {k: v for k, v in reasons.items() if not k.endswith(":ok") and k != "green:not_active"}
    return Row(
        n,
        ghosts,
        sum(reasons.values()),
        oks,
        refused,
        other,
        quantile(latencies, 0.5),
        quantile(latencies, 0.99),
        idle,
        load,
    )


def table(rows: list[Row], rate: float) -> str:
    head = (
        "| supervisors | agents | permits ok/s | p50 ms | p99 ms | Redis CPU % (load) "
        "| Redis CPU %/deployment (load) | (idle) | Redis µs/permit | Redis cmds/s "
        "| daemon CPU %/deployment |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        ld, idle = r.load, r.idle
        lines.append(
            f"| {r.n}{f' (+{r.ghosts} watchers)' if r.ghosts else ''} | {2 * r.n} "
            f"| {r.ok_per_s:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {ld.redis_pct():.1f} ({ld.redis_info_pct():.1f}) "
            f"| {ld.redis_info_pct() / r.n:.2f} | {idle.redis_info_pct() / r.n:.2f} "
            f"| {r.redis_us_per_permit():.0f} | {ld.commands / ld.seconds:.0f} "
            f"| {100.0 * ld.daemon_ticks / TICKS / ld.seconds / r.n:.1f} |"
        )
    return "\n".join(lines)


def on_paper(rows: list[Row], rate: float, headroom: float) -> str:
    """Deployments (and agents) one Redis serves at this rate.

    Per deployment, Redis spends ``idle`` µs/s doing nothing (lease, health, reconcile) and
    ``c(D)`` µs per permit, where c grows with D, the deployments on that Redis: every
    keyspace event (a permit writes a few) is matched against every daemon's patterns. From the
    largest run without ghosts (c0 at N) and the same run with G ghosts' watchers (cG):
    c(D) = c0 + s (D - N), s = (cG - c0) / G. The limit is the D where
    D (idle + rate c(D)) reaches ``headroom`` % of Redis's one core.
    """
    plain = [r for r in rows if r.ghosts == 0]
    base = max(plain, key=lambda row: row.n)
    probe = next((r for r in rows if r.ghosts and r.n == base.n), None)
    n = base.n
    idle_us = 1e6 * base.idle.redis_cpu_s / base.idle.seconds / n
    c0 = base.redis_us_per_permit()
    slope = max(0.0, (probe.redis_us_per_permit() - c0) / probe.ghosts) if probe else 0.0
    budget = headroom / 100.0 * 1e6
    # slope*rate D^2 + (idle + rate (c0 - slope N)) D - budget = 0
    qa, qb = slope * rate, idle_us + rate * (c0 - slope * n)
    limit = budget / qb if qa == 0 else (-qb + math.sqrt(qb * qb + 4 * qa * budget)) / (2 * qa)
    linear = budget / (idle_us + rate * c0)
    lines = [
        f"Per deployment ({n} supervisors, {rate:g} permits/s per active agent): Redis idles at "
        f"{idle_us:.0f} µs/s (lease, health, reconcile) and spends {c0:.0f} µs per permit.",
    ]
    if probe is not None:
        lines.append(
            f"With the watchers of {probe.ghosts} more deployments subscribed: "
            f"{probe.redis_us_per_permit():.0f} µs per permit, so each deployment on the same "
            f"Redis adds {slope:.3f} µs to every permit (keyspace events matched against its "
            "patterns)."
        )
    lines.append(
        f"On paper, at {headroom:g} % of its one core, one Redis serves about {limit:.0f} such "
        f"deployments ({2 * limit:.0f} agents, half acting; {limit * rate:.0f} permits/s)"
        + (f"; {linear:.0f} if the watchers cost nothing." if probe is not None else ".")
    )
    return "\n".join(lines)


async def ghost_watchers(url: str, count: int) -> Any:
    """What ``count`` more daemons' keyspace watchers cost Redis with no daemon: each daemon
    subscribes to its active key's channel and to two patterns (its flags), and Redis matches
    every keyspace event against every pattern of every client. They match nothing here."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    pubsub = client.pubsub()
    for k in range(count):
        tag = "{ghost" + str(k) + "}"
        await pubsub.subscribe(f"__keyspace@0__:{tag}:active_version")
        await pubsub.psubscribe(
            f"__keyspace@0__:{tag}flag:*", f"__keyspace@0__:{tag}:flags:color:*"
        )
    return client, pubsub


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="as-cap-"))
    redis = RedisProc(root)
    rows: list[Row] = []
    try:
        redis.start()
        runs = [(n, 0) for n in args.sizes]
        if args.ghosts:
            runs.append((max(args.sizes), args.ghosts))
        for n, ghosts in runs:
            watchers = await ghost_watchers(redis.url, ghosts) if ghosts else None
            try:
                row = await run_size(n, redis, root, args, ghosts)
            finally:
                if watchers is not None:
                    await watchers[1].aclose()
                    await watchers[0].aclose()
            rows.append(row)
            print(
                f"N={n} (+{ghosts} watchers): {row.oks} ok, "
                f"{row.refused_locally} refused by green's own SDK, "
                f"other {row.other or '-'}; p50 {row.p50_ms:.2f} ms p99 {row.p99_ms:.2f} ms",
                flush=True,
            )
            from redis.asyncio import Redis

            client = Redis.from_url(redis.url)
            await client.flushall()
            await client.aclose()
        print()
        print(table(rows, args.rate))
        print()
        print(on_paper(rows, args.rate, args.headroom))
    finally:
        redis.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default="1,5,10,20", help="supervisors per run, e.g. 1,5,10,20")
    parser.add_argument("--rate", type=float, default=10.0, help="permits/s per agent")
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--load-s", type=float, default=20.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--settle-s", type=float, default=1.0)
    parser.add_argument("--headroom", type=float, default=50.0, help="% of Redis's core to use")
    parser.add_argument(
        "--ghosts",
        type=int,
        default=1000,
        help="then the largest size again with the watchers of this many more daemons (0: no)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    return args


if __name__ == "__main__":
    if sys.argv[1:] == ["--agent"]:
        asyncio.run(agent_main())
    else:
        asyncio.run(main(parse()))
