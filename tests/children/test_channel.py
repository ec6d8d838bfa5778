"""The channel: every kind of bad line is counted and skipped, and the channel goes on."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from supervisor import protocol
from supervisor.children.channel import ChannelProtocol
from tests.harness import PY, agent, running_daemon
from tests.redis_server import RedisServer

HELLO = {"type": "hello", "version": "1", "pid": 1, "protocol": 1}

# (bytes sent, the error kind it must be counted as)
BAD_LINES: list[tuple[bytes, str]] = [
    (b"{not json\n", protocol.E_JSON),
    (b'{"type": "heartbeat"\xff\xfe}\n', protocol.E_UTF8),
    (b"[1, 2, 3]\n", protocol.E_NOT_OBJECT),
    (b'{"no_type": 1}\n', protocol.E_NO_TYPE),
    (b'{"type": 7}\n', protocol.E_NO_TYPE),
    (b'{"type": "teleport"}\n', protocol.E_UNKNOWN_TYPE),
    (
        b'{"type": "decision", "id": "d1", "kind": "bet", "inputs": {}, "output": {}}\n',
        protocol.E_FIELD,
    ),  # latency_ms missing
    (
        b'{"type": "decision", "id": "d1", "kind": "bet", "inputs": {}, "output": {}, '
        b'"latency_ms": "fast"}\n',
        protocol.E_FIELD,
    ),
    (b'{"type": "outcome", "pnl": true}\n', protocol.E_FIELD),  # a bool is not a number
    (b'{"type": "error", "kind": "meltdown", "message": "x"}\n', protocol.E_VALUE),
    (b'{"type": "escrow", "id": "e1", "op": "steal"}\n', protocol.E_VALUE),
    # Numbers of the right type, but absurd: refused before any evaluator sees them.
    (b'{"type": "outcome", "pnl": 1.7976931348623157e308}\n', protocol.E_RANGE),
    (b'{"type": "outcome", "pnl": -1e999}\n', protocol.E_RANGE),  # orjson: infinite, refused
    (
        b'{"type": "decision", "id": "d1", "kind": "bet", "inputs": {}, "output": {}, '
        b'"latency_ms": -1}\n',
        protocol.E_RANGE,
    ),
    (b'{"type": "escrow", "id": "e1", "op": "watch", "gap_s": 0}\n', protocol.E_RANGE),
    (
        b'{"type": "hello", "version": "1", "pid": 18446744073709551615, "protocol": 1}\n',
        protocol.E_RANGE,
    ),
]


class Collector:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.closed = asyncio.Event()
        self.changed = asyncio.Event()

    def message(self, msg: dict[str, Any]) -> None:
        self.messages.append(msg)
        self.changed.set()

    def error(self, kind: str, detail: str) -> None:
        self.errors.append(kind)
        self.changed.set()

    async def until(self, n_messages: int) -> None:
        async with asyncio.timeout(5):
            while len(self.messages) < n_messages:
                self.changed.clear()
                await self.changed.wait()


async def channel_pair(
    max_line: int = protocol.MAX_LINE,
) -> tuple[Collector, ChannelProtocol, socket.socket]:
    ours, theirs = socket.socketpair()
    c = Collector()
    loop = asyncio.get_running_loop()
    _, proto = await loop.connect_accepted_socket(
        lambda: ChannelProtocol(c.message, c.error, c.closed.set, max_line=max_line), ours
    )
    return c, proto, theirs


async def test_every_bad_line_is_counted_and_the_next_good_one_still_arrives() -> None:
    c, proto, theirs = await channel_pair()
    for data, _ in BAD_LINES:
        theirs.sendall(data)
    theirs.sendall(orjson.dumps(HELLO) + b"\n")
    await c.until(1)
    assert c.errors == [kind for _, kind in BAD_LINES]
    assert c.messages == [HELLO]
    # The child was told, but only once per burst (not once per bad line).
    theirs.setblocking(False)
    told = theirs.recv(65536).splitlines()
    assert len(told) == 1
    assert orjson.loads(told[0])["type"] == "error"
    proto.close()
    theirs.close()


async def test_a_handler_that_raises_costs_one_event_not_the_channel() -> None:
    ours, theirs = socket.socketpair()
    seen: list[dict[str, Any]] = []
    errors: list[tuple[str, str]] = []
    closed = asyncio.Event()
    arrived = asyncio.Event()

    def on_message(msg: dict[str, Any]) -> None:
        if msg["type"] == "outcome":
            raise OverflowError("intermediate overflow in fsum")
        seen.append(msg)
        arrived.set()

    loop = asyncio.get_running_loop()
    _, proto = await loop.connect_accepted_socket(
        lambda: ChannelProtocol(on_message, lambda k, d: errors.append((k, d)), closed.set), ours
    )
    outcome = orjson.dumps({"type": "outcome", "pnl": 1.0}) + b"\n"
    theirs.sendall(outcome * 3 + orjson.dumps(HELLO) + b"\n")
    async with asyncio.timeout(5):
        await arrived.wait()
    assert seen == [HELLO]
    assert [k for k, _ in errors] == [protocol.E_HANDLER] * 3
    # What failed and where, for the log: the message type, the exception, its last frame.
    assert errors[0][1].startswith("outcome: OverflowError: intermediate overflow in fsum (")
    assert "test_channel.py:" in errors[0][1]
    assert not closed.is_set()
    # Told once per burst, like any other bad line.
    theirs.setblocking(False)
    told = theirs.recv(65536).splitlines()
    assert len(told) == 1
    assert orjson.loads(told[0])["kind"] == protocol.E_HANDLER
    proto.close()
    theirs.close()


async def test_oversized_line_is_skipped_to_the_next_newline() -> None:
    c, proto, theirs = await channel_pair(max_line=1000)
    # An oversized line arriving in pieces, with no newline for a long while.
    for _ in range(5):
        theirs.sendall(b"x" * 700)
    theirs.sendall(b"tail of the monster\n" + orjson.dumps(HELLO) + b"\n")
    await c.until(1)
    assert c.errors == [protocol.E_OVERSIZE]
    assert c.messages == [HELLO]
    # And one that arrives whole.
    theirs.sendall(b"y" * 1500 + b"\n" + orjson.dumps({"type": "heartbeat"}) + b"\n")
    await c.until(2)
    assert c.errors == [protocol.E_OVERSIZE, protocol.E_OVERSIZE]
    proto.close()
    theirs.close()


async def test_a_message_split_across_reads_is_put_back_together() -> None:
    c, proto, theirs = await channel_pair()
    data = orjson.dumps(HELLO) + b"\n" + orjson.dumps({"type": "heartbeat"}) + b"\n"
    for i in range(len(data)):
        theirs.sendall(data[i : i + 1])
    await c.until(2)
    assert [m["type"] for m in c.messages] == ["hello", "heartbeat"]
    assert c.errors == []
    proto.close()
    theirs.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    raise AssertionError(f"{prefix!r} not in the scrape")


async def test_daemon_counts_garbage_from_a_child_and_keeps_its_channel(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(
        b"".join(data for data, _ in BAD_LINES) + b"z" * (protocol.MAX_LINE + 10) + b"\n"
    )
    blue = agent(
        [PY, "tests/agents/raw_agent.py"],
        "1.0.0",
        env={"RAW_AFTER_HELLO": str(garbage), "RAW_PERMIT_KEY": "order-1"},
    )
    async with running_daemon(
        redis_url=redis_server.url,
        blue=blue,
        green=agent([PY, "tests/agents/raw_agent.py"], "2.0.0"),
    ) as d:
        # After all that garbage the child still gets pushes and its permit is answered.
        await d.wait_log(
            "child_output",
            color="blue",
            where=lambda r: (
                '"permit_result"' in r["line"]
                and '"granted": true' in r["line"].replace('":true', '": true')
            ),
        )
        port = int(d.find("metrics_listening")[0]["address"].rsplit(":", 1)[1])
        text = scrape(port)
        for kind in {k for _, k in BAD_LINES} | {protocol.E_OVERSIZE}:
            expected = sum(1 for _, k in BAD_LINES if k == kind) or 1
            assert (
                metric(text, "agentsup_protocol_errors_total", color="blue", kind=kind) == expected
            ), kind
        assert metric(text, "agentsup_protocol_errors_total", color="green", kind="json") == 0
        # Logged once per burst, not once per line.
        assert len(d.find("protocol_error", color="blue")) == 1
        st = await d.status()
        assert st["children"]["blue"]["state"] == "RUNNING"
        assert st["children"]["blue"]["restarts"] == 0


@pytest.mark.parametrize(
    "msg",
    [
        {"type": "heartbeat", "extra": [1, 2]},  # unknown fields are how the protocol grows
        {"type": "outcome", "pnl": -1},
        {
            "type": "decision",
            "id": "x",
            "kind": "k",
            "inputs": None,
            "output": 3,
            "latency_ms": 2.5,
        },
    ],
)
def test_valid_messages_pass(msg: dict[str, Any]) -> None:
    assert protocol.check(msg) is None


async def test_a_scrape_passes_promtool_check_metrics(redis_server: RedisServer) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    raw = [PY, "tests/agents/raw_agent.py"]
    async with running_daemon(
        redis_url=redis_server.url, blue=agent(raw, "1.0.0"), green=agent(raw, "2.0.0")
    ) as d:
        await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))
        port = int(d.find("metrics_listening")[0]["address"].rsplit(":", 1)[1])
        text = scrape(port)
        done = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "agentsup_active_epoch" in text
