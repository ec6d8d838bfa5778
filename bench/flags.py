"""Feature flags: a change → both children hold the new value, beside the floor and the seed.

    python bench/flags.py              # 200 changes of each kind, 50 ms idle before each
    python bench/flags.py --quick      # 20 of each (a smoke run)

The daemon runs as its own process (``python -m supervisor run -c FILE``) on a redis-server
the benchmark starts (append-only, as the embedded default); both children are SDK agents
(this file with ``--agent``) that report, over a datagram socket, the moment each ``flags``
push reaches them (CLOCK_MONOTONIC, one clock for every process on Linux). In one run, with an
idle pause before every change (production changes are rare; waking idle processes is most
of what they cost), alternating so that the machine's noise falls on each alike:

- ``flags set``: an operator's control request (the one ``agentsup flags set`` sends, without
  the CLI's interpreter start) from the benchmark's process, until both children hold it;
- ``redis SET``: ``SET flag:crash_target V`` from another process (bench/operator_set.py, as
  redis-cli), until both children hold it;
- the floor: the same SET of another key, seen by a plain subscriber process that reads the
  key once (bench/floor_subscriber.py): the least any process can do to learn of a SET;
- the seed's way: one ``GET flag:crash_target`` per decision (its ``Flags.get``), timed in
  this process: what every decision pays, changed or not; a change is seen at the next
  decision, so the seed's delay is its decision interval plus this.

Target (issue 12): p50 within 1.5x of the floor, p99 under 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "bench"
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))

import process_flips as pf  # noqa: E402  (bench/, beside this file)

PY = sys.executable
FLAG = "crash_target"
FLOOR_KEY = "bench:floor"


# --- the children ---------------------------------------------------------------------------
async def agent_main() -> None:
    """A child: report ``flag COLOR VALUE T_NS`` for every push."""
    from supervisor.agent import Agent

    out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    target = os.environ["BENCH_SOCKET"]
    color = os.environ["AGENTSUP_COLOR"]
    async with Agent.connect() as agent:

        @agent.on_flags
        def pushed(values: Any) -> None:
            now = time.monotonic_ns()  # first: the report is not part of the latency
            out.sendto(f"flag {color} {values.get(FLAG)!r} {now}".encode(), target)

        await agent.lost.wait()


# --- the benchmark --------------------------------------------------------------------------
class Inbox(pf.Inbox):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.flags: dict[str, dict[str, int]] = {}  # value -> color -> when

    def _take(self, words: list[str]) -> None:
        if words[0] == "flag":  # flag COLOR VALUE T_NS
            self.flags.setdefault(words[2], {}).setdefault(words[1], int(words[3]))
        else:
            super()._take(words)

    def both(self, value: str) -> int | None:
        seen = self.flags.get(value, {})
        return max(seen.values()) if len(seen) == 2 else None


def _config(directory: Path, redis_url: str) -> Path:
    env = f'{{ BENCH_SOCKET = "{directory / "inbox.sock"}", PYTHONPATH = "{ROOT}" }}'
    path = directory / "agentsup.toml"
    path.write_text(
        "[supervisor]\n"
        'name = "bench-flags"\nnamespace = "bench"\n'
        f'state_dir = "{directory / "state"}"\ncontrol_socket = "{directory / "control.sock"}"\n\n'
        f'[redis]\nurl = "{redis_url}"\n\n[metrics]\nlisten = ""\n\n'
        "[decision_log]\nenabled = false\n\n"
        f'[flags]\n{FLAG} = {{ type = "float", default = 2.0, min = 1.0 }}\n\n'
        + "".join(
            f'[agents.{c}]\ncommand = ["{PY}", "{HERE / "flags.py"}", "--agent"]\n'
            f'version = "{v}"\nenv = {env}\n\n'
            for c, v in (("blue", "1"), ("green", "2"))
        )
    )
    return path


def _timed(request: Any, sock: Path, name: str, value: str) -> int:
    """The control request, from a thread of this process; when it was sent (taken in the
    thread itself, so that waking the thread is not counted against the daemon)."""
    sent = time.monotonic_ns()
    request(sock, "flags", {"op": "set", "name": name, "value": value})
    return sent


async def measure(samples: int, pause_s: float) -> dict[str, list[float]]:
    from redis import Redis

    from supervisor.control.client import request

    directory = Path(tempfile.mkdtemp(prefix="asf-", dir="/tmp"))
    procs: list[asyncio.subprocess.Process] = []
    tasks: list[asyncio.Task[None]] = []
    inbox = Inbox(directory / "inbox.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    out: dict[str, list[float]] = {"flags set": [], "redis SET": [], "floor": [], "seed GET": []}
    try:
        notify.bind(str(directory / "notify.sock"))
        notify.setblocking(False)
        ready = asyncio.Event()
        tasks += [
            asyncio.create_task(inbox.run()),
            asyncio.create_task(pf._drain_notify(notify, ready)),
        ]
        redis_proc, url = await pf._start_redis(directory, tasks)
        procs.append(redis_proc)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        env["NOTIFY_SOCKET"] = str(directory / "notify.sock")
        with (directory / "daemon.log").open("wb") as log:
            daemon = await pf._spawn(
                PY, "-m", "supervisor", "run", "-c", str(_config(directory, url)), env=env,
                stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        procs.append(daemon)
        await pf._wait_ready(daemon, ready)
        subscriber = await pf._spawn(
            PY, str(HERE / "floor_subscriber.py"), url, FLOOR_KEY, inbox.path,
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(subscriber)
        setter_proc = await pf._spawn(
            PY, str(HERE / "operator_set.py"), url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        procs.append(setter_proc)
        setter = pf.Setter(setter_proc)
        await setter.ready()
        await inbox.until(lambda: inbox.both("2.0"), "the first push to both", 30.0)
        await inbox.until(lambda: True if inbox.floor_ready else None, "floor ready", 30.0)
        seed = Redis.from_url(url)
        sock = directory / "control.sock"
        for i in range(pf.WARMUP + samples):
            keep = i >= pf.WARMUP
            # flags set: the control request, from this process.
            value = repr(round(2 + (2 * i + 1) / 10_000, 4))
            await asyncio.sleep(pause_s)
            sent = await asyncio.to_thread(_timed, request, sock, FLAG, value)
            told = await inbox.until(lambda v=value: inbox.both(v), "flags set pushed")
            if keep:
                out["flags set"].append((told - sent) / 1e6)
            # redis SET from another process.
            value = repr(round(2 + (2 * i + 2) / 10_000, 4))
            sent, _ = await setter.set(f"flag:{FLAG}", value, pause_s)
            told = await inbox.until(lambda v=value: inbox.both(v), "redis SET pushed")
            if keep:
                out["redis SET"].append((told - sent) / 1e6)
            # the floor.
            floor_value = f"f{i}"
            sent, _ = await setter.set(FLOOR_KEY, floor_value, pause_s)
            read = await inbox.until(lambda v=floor_value: inbox.floor.get(v), "floor read")
            if keep:
                out["floor"].append((read - sent) / 1e6)
            # the seed's per-decision GET.
            await asyncio.sleep(pause_s)
            t0 = time.monotonic_ns()
            seed.get(f"flag:{FLAG}")
            if keep:
                out["seed GET"].append((time.monotonic_ns() - t0) / 1e6)
        seed.close()
        return out
    except pf.BenchError as exc:
        with contextlib.suppress(OSError):
            tail = (directory / "daemon.log").read_text(errors="replace").splitlines()[-30:]
            raise pf.BenchError(
                f"{exc}; the daemon's last log lines:\n" + "\n".join(tail)
            ) from None
        raise
    finally:
        for proc in reversed(procs):
            await pf._stop(proc, pf.STOP_GRACE_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        inbox.close()
        notify.close()
        shutil.rmtree(directory, ignore_errors=True)


def _q(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return statistics.median(s), s[min(len(s) - 1, int(len(s) * 0.99))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="20 changes of each kind")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--pause-ms", type=float, default=50.0, help="idle before each change")
    args = parser.parse_args()
    if args.agent:
        asyncio.run(agent_main())
        return 0
    samples = 20 if args.quick else args.samples
    with contextlib.suppress(KeyboardInterrupt):
        res = asyncio.run(measure(samples, args.pause_ms / 1000))
        floor_p50, _ = _q(res["floor"])
        print(f"{samples} of each, {args.pause_ms:g} ms idle before each (milliseconds)")
        print(f"{'':<44}{'p50':>8}{'p99':>8}{'p50/floor':>11}")
        rows = (
            ("flags set -> both children hold it", "flags set"),
            ("redis SET flag:... -> both children hold it", "redis SET"),
            ("floor: SET seen by a plain subscriber", "floor"),
            ("seed: GET per decision (every decision)", "seed GET"),
        )
        for label, key in rows:
            p50, p99 = _q(res[key])
            print(f"{label:<44}{p50:>8.3f}{p99:>8.3f}{p50 / floor_p50:>10.2f}x")
        return 0
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
