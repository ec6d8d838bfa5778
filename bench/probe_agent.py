"""The benchmark's agent: reports, over a datagram socket ($BENCH_SOCKET), the moment it
learns each new role, and (with $BENCH_PERMITS=N) times N permits through the SDK, N through
the channel and N plain Redis GETs (the seed's is_active check) once it is made active.

With $BENCH_CONTROL=DIR it also takes commands on the datagram socket DIR/COLOR.ctl, for the
benchmark that runs the daemon as its own process and so cannot call its pipeline directly:
``error PAUSE_S`` sleeps PAUSE_S, takes CLOCK_MONOTONIC, reports an unhandled exception through
the SDK (a candidate in charge is rolled back for it), then reports ``sent COLOR T_NS WALL_NS``
(the wall clock too, to place the send against the daemon's log)."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import time

import orjson
from redis.asyncio import Redis

from supervisor.agent import Agent


def quantiles(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {
        "p50": statistics.median(samples),
        "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
    }


async def obey(
    control: socket.socket, agent: Agent, color: str, out: socket.socket, target: str
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        command, _, arg = (await loop.sock_recv(control, 256)).decode().partition(" ")
        if command == "error":
            await asyncio.sleep(float(arg))
            # Taken first: the report is not part of the latency.
            sent, wall = time.monotonic_ns(), time.time_ns()
            agent.error("exception", "bench: a planted exception")
            out.sendto(f"sent {color} {sent} {wall}".encode(), target)


async def main() -> None:
    out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    target = os.environ["BENCH_SOCKET"]
    color = os.environ["AGENTSUP_COLOR"]
    permits = int(os.environ.get("BENCH_PERMITS", "0"))
    control: socket.socket | None = None
    if os.environ.get("BENCH_CONTROL"):
        # Bound before the first role is reported: the benchmark may command it from then on.
        control = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        control.bind(os.path.join(os.environ["BENCH_CONTROL"], f"{color}.ctl"))
        control.setblocking(False)

    def told(role: str, epoch: int | None, allocation: float) -> None:
        now = time.monotonic()  # taken first: the send is not part of the latency
        out.sendto(f"role {color} {role} {epoch} {now!r}".encode(), target)

    async with Agent.connect() as agent:
        agent.on_role(told)
        commands = None
        if control is not None:
            commands = asyncio.create_task(obey(control, agent, color, out, target))
        if permits:
            await agent.wait_role("active")
            plain = Redis.from_url(
                os.environ["AGENTSUP_REDIS_URL"],
                username=os.environ.get("AGENTSUP_REDIS_USERNAME") or None,
                password=os.environ.get("AGENTSUP_REDIS_PASSWORD") or None,
            )
            result: dict[str, dict[str, float]] = {}
            for name, call in (
                ("sdk", lambda i: agent.permit(f"bench-sdk-{os.getpid()}-{i}")),
                ("channel", lambda i: agent.permit_via_channel(f"bench-ch-{os.getpid()}-{i}")),
                ("get", lambda i: plain.get(os.environ["AGENTSUP_ACTIVE_KEY"])),
            ):
                for i in range(200):  # warm up
                    await call(-i - 1)
                samples = []
                for i in range(permits):
                    t0 = time.perf_counter()
                    await call(i)
                    samples.append((time.perf_counter() - t0) * 1000)
                result[name] = quantiles(samples)
            await plain.aclose()
            out.sendto(b"permits " + orjson.dumps(result), target)
        await agent.lost.wait()
        if commands is not None:
            commands.cancel()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
