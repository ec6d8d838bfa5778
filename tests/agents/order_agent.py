"""An SDK agent that asks for permits on the keys a test tells it to, for the fence tests.

The test writes lines ``permit KEY`` into the FIFO ``$ORDER_DIR/$AGENTSUP_COLOR.fifo``; the
agent asks for a permit on KEY the way every SDK agent does (``agent.permit``: through the
channel by default) and prints ``permit KEY REASON EPOCH``. ``execute KEY`` reports an
execution of KEY and prints ``executed KEY``. Every role push it receives is
printed as ``role ROLE EPOCH``, so the test sees in the daemon's log exactly what this child
was told and answered, in order.
"""

from __future__ import annotations

import asyncio
import os
import sys

from supervisor.agent import Agent


def open_fifo() -> int:
    fifo = os.path.join(os.environ["ORDER_DIR"], os.environ["AGENTSUP_COLOR"] + ".fifo")
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
    # Open read-write so that the FIFO never reports end-of-file between the test's writes.
    return os.open(fifo, os.O_RDWR | os.O_NONBLOCK)


async def main() -> None:
    fd = open_fifo()
    lines: asyncio.Queue[str] = asyncio.Queue()
    buf = bytearray()

    def readable() -> None:
        try:
            buf.extend(os.read(fd, 65536))
        except BlockingIOError:
            return
        while (nl := buf.find(b"\n")) >= 0:
            lines.put_nowait(buf[:nl].decode())
            del buf[: nl + 1]

    async with Agent.connect() as agent:
        agent.on_role(lambda role, epoch, alloc: print(f"role {role} {epoch}", flush=True))
        asyncio.get_running_loop().add_reader(fd, readable)
        while not agent.lost.is_set():
            get = asyncio.ensure_future(lines.get())
            lost = asyncio.ensure_future(agent.lost.wait())
            done, _ = await asyncio.wait({get, lost}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                break
            lost.cancel()
            verb, _, key = get.result().partition(" ")
            if verb == "permit":
                p = await agent.permit(key)
                print(f"permit {key} {p.reason.value} {p.epoch}", flush=True)
            elif verb == "execute":  # report money moved under KEY (whatever the permit said)
                agent.execution(f"d-{key}", key, 1.0)
                print(f"executed {key}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    asyncio.run(main())
