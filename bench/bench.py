"""agent-supervisor's benchmark, side by side with the seed's way in one run.

    python bench/bench.py            # about a minute
    python bench/bench.py --quick    # a few seconds (CI smoke)

What is measured (all on this machine, real processes, real redis-server):

1. trigger → flip committed → role pushed to both children: a candidate's ``error`` event
   enters the real pipeline; the time until the flip is committed in Redis, and until both
   child processes have *received* their new role (they timestamp it with CLOCK_MONOTONIC,
   shared by every process, and report over a datagram socket).
2. an operator's ``SET`` of the active key → both children told.
   Baseline for 1 and 2: the seed's standby, polling the key once a second.
3. permit round trip through the SDK, through the channel; baseline a plain Redis GET.
4. decision events per second through the whole pipeline (channel framing, orjson, checks,
   metrics, triggers) on one core; baseline: splitting lines alone, and splitting + parsing.
5. resident memory before and after 1,000,000 events.
6. process start to READY=1 with the embedded Redis.
7. 1 and 2 again as production sees them (bench/process_flips.py): the daemon as its own
   process (``python -m supervisor run -c FILE``), the SET or the error sent from another
   process, with an idle pause before each flip and back to back; beside them the floor,
   measured the same way in the same run: a plain subscriber process notified of a SET that
   reads the key once.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import process_flips  # noqa: E402  (bench/, beside this file)

from supervisor import config, logs  # noqa: E402
from supervisor.children.channel import ChannelProtocol  # noqa: E402
from supervisor.config import Color  # noqa: E402
from supervisor.daemon import Daemon  # noqa: E402

PY = sys.executable


def _interrupted(signum: int, frame: Any) -> None:
    # SIGTERM takes Ctrl-C's way out, so every section stops its processes and removes its
    # temporary directory on the way.
    raise KeyboardInterrupt


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))]


def ms(x: float) -> str:
    return f"{x:.3f} ms" if x < 10 else f"{x:.0f} ms"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Inbox:
    """The datagram socket the probe agents and the seed pollers report to."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "bench.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.roles: dict[tuple[str, int], float] = {}
        self.seen: list[float] = []
        self.permits: dict[str, Any] | None = None
        self.changed = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = (await loop.sock_recv(self.sock, 65536)).decode()
            kind, _, rest = data.partition(" ")
            if kind == "role":
                color, _role, epoch, t = rest.split()
                if epoch != "None":
                    self.roles.setdefault((color, int(epoch)), float(t))
            elif kind == "seen":
                self.seen.append(float(rest))
            elif kind == "permits":
                self.permits = orjson.loads(rest)
            self.changed.set()

    async def until(self, check: Any, timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout):
            while not (found := check()):
                self.changed.clear()
                await self.changed.wait()
        return found

    async def both_told(self, epoch: int) -> float:
        def check() -> float | None:
            b, g = self.roles.get(("blue", epoch)), self.roles.get(("green", epoch))
            return max(b, g) if b is not None and g is not None else None

        result: float = await self.until(check)
        return result


def daemon_config(directory: Path, permits: int) -> config.Config:
    probe = [PY, str(ROOT / "bench" / "probe_agent.py")]
    env = {"BENCH_SOCKET": str(directory / "bench.sock"), "PYTHONPATH": str(ROOT)}
    # "permit via the SDK" is the direct EVALSHA: where children get their own Redis users,
    # that path is an opt-in (the default sends permits through the channel).
    access = (
        {"redis": {"child_access": "permit"}}
        if "child_access" in config.RedisSection.model_fields
        else {}
    )
    return config.parse(
        {
            **access,
            "supervisor": {
                "name": "bench",
                "namespace": "bench",
                "state_dir": str(directory / "s"),
                "control_socket": str(directory / "control.sock"),
            },
            "metrics": {"listen": ""},
            "rollout": {"probation_s": 0},
            "agents": {
                "blue": {
                    "command": probe,
                    "version": "1",
                    "env": {**env, "BENCH_PERMITS": str(permits)},
                },
                "green": {"command": probe, "version": "2", "env": env},
            },
        }
    )


async def flips(directory: Path, n: int, permits: int) -> dict[str, Any]:
    inbox = Inbox(directory)
    reader = asyncio.create_task(inbox.run())
    daemon = Daemon(daemon_config(directory, permits))
    runner = asyncio.create_task(daemon.run())
    committed: dict[int, float] = {}
    original = daemon.deployment.rollout._on_change

    def on_change(change: Any) -> None:  # instrumentation: when the flip came back from Redis
        committed[change.epoch] = time.monotonic()
        original(change)

    daemon.deployment.rollout._on_change = on_change
    out: dict[str, Any] = {"set": [], "trigger_commit": [], "trigger_told": []}
    try:
        async with asyncio.timeout(30):
            while not daemon.ready.is_set() or not all(
                c.speaks_protocol for c in daemon.deployment.children.values()
            ):
                await asyncio.sleep(0.01)
        if permits:
            out["permits"] = await inbox.until(lambda: inbox.permits, timeout=60)
        # The operator's connection, with the daemon's credentials (the embedded Redis may
        # answer to nobody else).
        auth = daemon.redis.connection_pool.connection_kwargs
        client = Redis.from_url(
            daemon.config.redis_url(), username=auth.get("username"), password=auth.get("password")
        )
        green = daemon.deployment.children[Color.GREEN]
        key = daemon.config.redis.active_key
        for _ in range(n):
            # An operator's SET: green takes over (adopted as a switch, epoch +1).
            expected = daemon.deployment.rollout.state.epoch + 1
            t0 = time.monotonic()
            await client.set(key, "green")
            out["set"].append((await inbox.both_told(expected) - t0) * 1000)
            # Green reports an unhandled exception: the critical trigger rolls back.
            expected = daemon.deployment.rollout.state.epoch + 1
            t0 = time.monotonic()
            daemon.deployment.pipeline.handle(
                green, {"type": "error", "kind": "exception", "message": "bench"}
            )
            told = await inbox.both_told(expected)
            out["trigger_told"].append((told - t0) * 1000)
            out["trigger_commit"].append((committed[expected] - t0) * 1000)
        await client.aclose()
    finally:
        daemon.request_shutdown("bench done")
        await runner
        reader.cancel()
        inbox.sock.close()
    return out


async def seed_baseline(directory: Path, n_pollers: int, rounds: int) -> list[float]:
    """The seed's standby: the key polled once a second; latency from SET to noticed."""
    from tests.redis_server import RedisServer

    server = RedisServer(directory)
    server.start()
    inbox = Inbox(directory)
    reader = asyncio.create_task(inbox.run())
    pollers = subprocess.Popen(
        [
            PY,
            str(ROOT / "bench" / "seed_poller.py"),
            server.url,
            "agent:active_version",
            inbox.path,
            str(n_pollers),
        ]
    )
    client = Redis.from_url(server.url)
    samples: list[float] = []
    try:
        await asyncio.sleep(1.5)  # every poller has read the key once
        for i in range(rounds):
            inbox.seen.clear()
            t0 = time.monotonic()
            await client.set("agent:active_version", "green" if i % 2 == 0 else "blue")
            await inbox.until(lambda: len(inbox.seen) >= n_pollers, timeout=5)
            samples += [(t - t0) * 1000 for t in inbox.seen]
    finally:
        pollers.kill()
        pollers.wait()
        await client.aclose()
        reader.cancel()
        inbox.sock.close()
        server.stop()
    return samples


def pipeline_throughput(events: int) -> dict[str, float]:
    """Feed the channel framing + pipeline of a real (unstarted) daemon with decision lines."""
    directory = Path(tempfile.mkdtemp(prefix="asb-", dir="/tmp"))
    try:
        daemon = Daemon(daemon_config(directory, 0))
        child = daemon.deployment.children[Color.BLUE]
        line = (
            orjson.dumps(
                {
                    "type": "decision",
                    "id": "d-000000",
                    "kind": "dice",
                    "inputs": {"target": 49.5, "stake": 1.0},
                    "output": {"bet": "under"},
                    "latency_ms": 1.25,
                }
            )
            + b"\n"
        )
        per_chunk = 65536 // len(line)
        chunk = line * per_chunk
        chunks = events // per_chunk

        def run(proto: Any) -> float:
            gc.collect()
            t0 = time.perf_counter()
            for _ in range(chunks):
                proto.data_received(chunk)
            return chunks * per_chunk / (time.perf_counter() - t0)

        class Split:
            def data_received(self, data: bytes) -> None:
                data.split(b"\n")

        class Parse:
            def data_received(self, data: bytes) -> None:
                for part in data.split(b"\n")[:-1]:
                    orjson.loads(part)

        full = ChannelProtocol(
            lambda m: daemon.deployment.pipeline.handle(child, m), lambda k, d: None, lambda: None
        )
        result = {"split": run(Split()), "parse": run(Parse())}
        before = rss_mb()
        result["pipeline"] = run(full)
        result["rss_before"] = before
        result["rss_after"] = rss_mb()
        mixed = b"".join(
            [
                line,
                orjson.dumps({"type": "outcome", "pnl": -1.0, "decision_id": "d-1"}) + b"\n",
                orjson.dumps({"type": "execution", "decision_id": "d-1", "key": "k", "amount": 1})
                + b"\n",
                orjson.dumps({"type": "heartbeat"}) + b"\n",
            ]
        )
        chunk = mixed * (65536 // len(mixed))
        per_chunk = 4 * (65536 // len(mixed))
        chunks = events // per_chunk
        result["mixed"] = run(full)
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def start_to_ready(runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        directory = Path(tempfile.mkdtemp(prefix="asr-", dir="/tmp"))
        proc: subprocess.Popen[bytes] | None = None
        try:
            cfg = directory / "c.toml"
            cfg.write_text(
                f'[supervisor]\nstate_dir = "{directory}/s"\n'
                f'control_socket = "{directory}/c.sock"\n[metrics]\nlisten = ""\n'
                '[agents.blue]\ncommand = ["sleep", "100"]\nversion = "1"\n'
                '[agents.green]\ncommand = ["sleep", "100"]\nversion = "2"\n'
            )
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.bind(str(directory / "n.sock"))
            notify.settimeout(20)
            env = {**os.environ, "NOTIFY_SOCKET": str(directory / "n.sock")}
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [PY, "-m", "supervisor", "run", "-c", str(cfg)],
                env=env,
                stdout=subprocess.DEVNULL,
                cwd=ROOT,
            )
            while b"READY=1" not in notify.recv(65536):
                pass
            samples.append((time.monotonic() - t0) * 1000)
            proc.terminate()
            proc.wait(30)
            notify.close()
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            shutil.rmtree(directory, ignore_errors=True)
    return samples


def print_process_flips(
    proc: dict[str, list[float]], inproc: dict[str, Any], pause_ms: float
) -> None:
    """The production-like flips beside their floor and the in-process figures."""
    print(
        "\nthe daemon as its own process (`python -m supervisor run -c FILE`, 2 SDK children,"
        " a redis-server set up\nas the embedded one); the SET, or the candidate's error,"
        " sent from another process; floor: a plain\nsubscriber process notified of a SET"
        " that reads the key once (same Redis, same setter, floor and\ndaemon SETs"
        " alternating; the trigger has no floor of its own: the SET's is beside it for scale)"
    )
    print(
        f"{'latency':<37} {'pause':>5} {'p50':>9} {'p99':>9} {'floor p50':>9} "
        f"{'floor p99':>9} {'p50/floor':>9} {'in-proc':>9}  target"
    )
    rows = [
        ("operator SET -> both children told", "set", inproc["set"]),
        ("trigger (child's error) -> both told", "trigger", inproc["trigger_told"]),
    ]
    for name, kind, in_process in rows:
        for variant, pause in (("idle", f"{pause_ms:g} ms"), ("busy", "none")):
            samples, floor = proc[f"{kind}_{variant}"], proc[f"floor_{variant}"]
            p50, p99, f50 = statistics.median(samples), pct(samples, 0.99), statistics.median(floor)
            if kind == "set":
                met = p50 <= 1.5 * f50
                target = "p50 within 1.5x floor"
            else:  # no floor of its own: the SET's floor is beside it for scale
                met = p50 < 1 and p99 < 5
                target = "p50 < 1 ms, p99 < 5 ms"
            print(
                f"{name:<37} {pause:>5} {ms(p50):>9} {ms(p99):>9} "
                f"{ms(f50):>9} {ms(pct(floor, 0.99)):>9} {p50 / f50:>8.2f}x "
                f"{ms(statistics.median(in_process)):>9}  {target}: {'met' if met else 'NOT met'}"
            )
    n = len(proc["set_idle"])
    print(
        f"  ({n} flips of each kind and {n} floor SETs per pause, after {process_flips.WARMUP}"
        " uncounted; in-proc: p50 of the in-process\n  run, no pause)\n"
    )


def run_loop(coro: Any) -> Any:
    import uvloop

    try:
        return uvloop.run(coro)
    finally:
        # The in-process daemon leaves SIGTERM at its default on its way out: take it back.
        signal.signal(signal.SIGTERM, _interrupted)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small numbers, for CI")
    ap.add_argument(
        "--pause-ms",
        type=float,
        default=50.0,
        help="idle time before each flip with the daemon as its own process (default 50)",
    )
    args = ap.parse_args()
    n_flips, permits, events, pollers, rounds, starts, n_process = (
        (20, 500, 200_000, 10, 2, 2, 40) if args.quick else (300, 5000, 1_000_000, 50, 4, 5, 200)
    )
    logs.configure("warning", json=True, sink=open(os.devnull, "w"))  # noqa: SIM115

    print(
        f"agent-supervisor benchmark ({'quick' if args.quick else 'full'}), "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n",
        flush=True,
    )
    directory = Path(tempfile.mkdtemp(prefix="asb-", dir="/tmp"))
    try:
        print(
            "flips and permits (in-process daemon, embedded Redis, 2 probe agents)...", flush=True
        )
        (directory / "f").mkdir()
        f = run_loop(flips(directory / "f", n_flips, permits))
        print(f"the seed's standby: {pollers} pollers x {rounds} SETs...", flush=True)
        (directory / "b").mkdir()
        base = run_loop(seed_baseline(directory / "b", pollers, rounds))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(
        f"flips with the daemon as its own process: {n_process} of each kind, "
        f"{args.pause_ms:g} ms idle before each, then back to back...",
        flush=True,
    )
    proc = run_loop(process_flips.measure(n_process, args.pause_ms / 1000))
    print(f"pipeline: {events:,} events...", flush=True)
    tp = pipeline_throughput(events)
    print("start to READY...\n", flush=True)
    ready = start_to_ready(starts)

    rows = [
        ("trigger -> flip committed in Redis", f["trigger_commit"], None, "-"),
        ("trigger -> both children told", f["trigger_told"], base, "p50 < 1 ms, p99 < 5 ms"),
        ("operator SET -> both children told", f["set"], base, "p50 < 1 ms, p99 < 10 ms"),
    ]
    print(f"{'latency':<38} {'p50':>11} {'p99':>11} {'seed p50':>11} {'seed p99':>11}  target")
    for name, samples, baseline, target in rows:
        b50 = ms(statistics.median(baseline)) if baseline else "-"
        b99 = ms(pct(baseline, 0.99)) if baseline else "-"
        print(
            f"{name:<38} {ms(statistics.median(samples)):>11} {ms(pct(samples, 0.99)):>11} "
            f"{b50:>11} {b99:>11}  {target}"
        )
    print_process_flips(proc, f, args.pause_ms)
    p = f["permits"]
    print(
        f"{'permit via the SDK (one EVALSHA)':<38} {ms(p['sdk']['p50']):>11} "
        f"{ms(p['sdk']['p99']):>11} {ms(p['get']['p50']):>11} {ms(p['get']['p99']):>11}  "
        "p50 < 0.2 ms, p99 < 1 ms (baseline: a plain GET)"
    )
    print(
        f"{'permit via the channel':<38} {ms(p['channel']['p50']):>11} "
        f"{ms(p['channel']['p99']):>11} {'':>11} {'':>11}  p99 < 2 ms"
    )
    print(f"  ({len(f['set'])} flips each way, {permits} permits each, {len(base)} seed samples)\n")
    print(f"{'throughput, one core':<38} {'events/s':>11}")
    print(f"{'baseline: split lines only':<38} {tp['split']:>11,.0f}")
    print(f"{'baseline: split + orjson.loads':<38} {tp['parse']:>11,.0f}")
    print(f"{'pipeline: decision events':<38} {tp['pipeline']:>11,.0f}  target >= 100,000")
    print(
        f"{'pipeline: mixed events':<38} {tp['mixed']:>11,.0f}  "
        "(decision, outcome, execution, heartbeat)"
    )
    grew = tp["rss_after"] - tp["rss_before"]
    print(
        f"{'resident memory over the run':<38} {tp['rss_before']:.1f} MB -> "
        f"{tp['rss_after']:.1f} MB (+{grew:.1f} MB)  target < +10 MB\n"
    )
    print(
        f"{'start to READY=1 (embedded Redis)':<38} median {ms(statistics.median(ready))}, "
        f"max {ms(max(ready))} over {len(ready)} starts  target < 1.5 s"
    )
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
