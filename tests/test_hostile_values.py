"""Hostile values: a child's schema-valid but absurd numbers are refused at the protocol check
and counted (kind ``range``); a good line whose handling raises is counted (kind ``handler``);
either way the channel goes on reading and the daemon stays up.

The property test drives generated messages of every type, with extreme numbers, very long
strings, unicode and deep nesting, through the channel and the pipeline of a real daemon
(constructed, not started, as ``bench/bench.py`` does; its Redis is a real redis-server) and
checks each line against the documented ranges of ``docs/protocol.md``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from supervisor import config, logs, protocol
from supervisor.children.channel import ChannelProtocol
from supervisor.config import Color
from supervisor.daemon import Daemon
from tests.harness import PY, agent, running_daemon
from tests.redis_server import RedisServer, running_redis, short_tempdir

HUGE = b"1.7976931348623157e308"  # the largest double: valid JSON, and two of them overflow

# docs/protocol.md, the ranges under "Framing": (type, field) -> (int only, lowest, highest).
DOCUMENTED: dict[tuple[str, str], tuple[bool, float, float]] = {
    ("hello", "pid"): (True, 1, 2**22),
    ("hello", "protocol"): (True, 1, 1000),
    ("decision", "latency_ms"): (False, 0, 1e9),
    ("execution", "amount"): (False, -1e12, 1e12),
    ("outcome", "pnl"): (False, -1e12, 1e12),
    ("escrow", "due_at"): (False, 0, 1e10),
    ("escrow", "gap_s"): (False, math.ulp(0.0), 1e7),  # above 0
    ("context", "volatility"): (False, 0, sys.float_info.max),
    ("context", "disputes_open"): (True, 0, 10**9),
}


# -- the reproduction, through a real daemon -------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    raise AssertionError(f"{prefix!r} not in the scrape")


async def test_the_stable_color_sending_absurd_pnl_is_refused_and_keeps_its_channel(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Today's failure: the stable color's rounds feed the baseline, whose sums overflow
    # (OverflowError in math.fsum) once its ring wraps; the exception left data_received and
    # closed the channel: nothing more from blue was read while status said RUNNING. A small
    # ring makes it wrap after a few rounds instead of 2,000.
    hostile = tmp_path / "hostile"
    hostile.write_bytes(
        b"".join(b'{"type": "outcome", "pnl": ' + HUGE + b"}\n" for _ in range(6))
        + b'{"type": "outcome", "pnl": -1e999}\n'  # parses as infinity: refused by the parser
        + b'{"type": "outcome", "pnl": 2.5, "decision_id": "d-1"}\n'
    )
    raw = [PY, "tests/agents/raw_agent.py"]
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(raw, "1.0.0", env={"RAW_AFTER_HELLO": str(hostile), "RAW_PERMIT_KEY": "k-1"}),
        green=agent(raw, "2.0.0"),
        sections={"triggers.pnl_sigma": {"min_baseline": 2, "baseline_rounds": 3}},
    ) as d:
        # The valid round after the hostile ones is counted, and nothing else is.
        st_ = await d.wait_status(lambda s: s["children"]["blue"]["rounds"] >= 1)
        assert (st_["children"]["blue"]["rounds"], st_["children"]["blue"]["pnl"]) == (1, 2.5)
        # Later lines from blue are still read: its permit request (sent after the role push
        # that followed its hello) is answered.
        await d.wait_log(
            "child_output",
            color="blue",
            where=lambda r: '"permit_result"' in r["line"],
            timeout=20,
        )
        port = int(d.find("metrics_listening")[0]["address"].rsplit(":", 1)[1])
        text = scrape(port)
        assert metric(text, "agentsup_protocol_errors_total", color="blue", kind="range") == 7
        assert metric(text, "agentsup_protocol_errors_total", color="blue", kind="handler") == 0
        assert metric(text, "agentsup_protocol_errors_total", color="green", kind="range") == 0
        logged = d.find("protocol_error", color="blue", kind="range")
        assert len(logged) == 1  # once per burst
        st_ = await d.status()
        assert st_["children"]["blue"]["state"] == "RUNNING"
        assert st_["children"]["blue"]["restarts"] == 0
        assert d.proc is not None
        assert d.proc.returncode is None  # the daemon is still up


async def test_a_hello_whose_logging_would_fail_is_still_taken(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Schema-valid (capabilities is a list) but nested deeper than the JSON log renderer
    # goes: logging it raised inside the hello handler, which ended the channel.
    deep = "[" * 400 + "]" * 400
    hello = tmp_path / "hello"
    hello.write_bytes(
        b'{"type": "hello", "version": "1.0.0", "pid": 1, "protocol": 1, "capabilities": '
        + deep.encode()
        + b"}\n"
    )
    raw = [PY, "tests/agents/raw_agent.py"]
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(raw, "1.0.0", env={"RAW_SEND": str(hello), "RAW_PERMIT_KEY": "k-1"}),
        green=agent(raw, "2.0.0"),
    ) as d:
        await d.wait_log(
            "child_output", color="blue", where=lambda r: '"permit_result"' in r["line"]
        )
        port = int(d.find("metrics_listening")[0]["address"].rsplit(":", 1)[1])
        assert (
            metric(scrape(port), "agentsup_protocol_errors_total", color="blue", kind="handler")
            == 0
        )


# -- the property: every line is either handled or counted, nothing escapes ------------------


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@contextlib.contextmanager
def json_logs() -> Iterator[io.StringIO]:
    """The daemon's own log renderer (JSON via orjson): it is part of the handler chain."""
    saved = structlog.get_config()
    sink = io.StringIO()
    logs.configure("debug", json=True, sink=sink)
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield sink
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved)


# Every field is generated as the JSON text a child would write: numbers such as 1e999 have no
# Python float to dump from, and orjson.dumps stops at a depth the parser still accepts.
def number_token(value: float | int) -> bytes:
    return repr(value).encode() if isinstance(value, float) else str(value).encode()


numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(number_token),
    st.integers(-(2**70), 2**70).map(number_token),
    st.integers(-3, 3).map(lambda k: number_token(2**63 + k)),
    st.integers(-3, 3).map(lambda k: number_token(2**64 + k)),
    st.sampled_from(  # infinite as a double, the largest finite, the edges of the ranges
        [
            b"1e999",
            b"-1e999",
            b"1E400",
            HUGE,
            b"-" + HUGE,
            b"1e-400",
            b"-0.0",
            b"0",
            b"4.9e-324",
            b"1e12",
            b"1000000000001",
            b"1e10",
            b"10000000000.5",
            b"4194304",
            b"4194305",
            b"1000000000",
        ]
    ),
)
texts = st.one_of(
    st.text(max_size=30),
    st.tuples(st.characters(codec="utf-8"), st.integers(1000, 120_000)).map(
        lambda cn: cn[0] * cn[1]
    ),
).map(orjson.dumps)


def nested(depth: int, leaf: str, as_dict: bool) -> bytes:
    """``depth`` levels of lists or objects around ``leaf`` (the parser takes 1024 levels)."""
    if as_dict:
        return b'{"k":' * depth + orjson.dumps(leaf) + b"}" * depth
    return b"[" * depth + orjson.dumps(leaf) + b"]" * depth


# Around orjson.dumps' limit (254 levels, which the log renderer meets) and up to the parser's.
depths = st.one_of(st.integers(0, 3), st.sampled_from([253, 254, 255, 256, 600, 1000, 1022]))


def json_list(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


anything = st.one_of(
    st.sampled_from([b"null", b"true", b"false", HUGE, b"-" + HUGE, b"1e-400", b"-0.0"]),
    texts,
    st.integers(-(2**70), 2**70).map(number_token),
    st.floats(allow_nan=False, allow_infinity=False).map(number_token),
    st.builds(nested, depths, st.text(max_size=5), st.booleans()),
    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5).map(orjson.dumps),
)

SHAPES: dict[str, tuple[dict[str, st.SearchStrategy[bytes]], tuple[str, ...], tuple[str, ...]]] = {
    # type: ({required non-number field: strategy}, optional non-number fields, number fields
    # in the order the check walks them, so that the first one wrong is the one counted)
    "hello": ({"version": texts}, ("capabilities",), ("pid", "protocol")),
    "heartbeat": ({}, (), ()),
    "decision": (
        {"id": texts, "kind": texts, "inputs": anything, "output": anything},
        ("reasoning",),
        ("latency_ms",),
    ),
    "execution": ({"decision_id": texts, "key": texts}, (), ("amount",)),
    "outcome": ({}, ("decision_id",), ("pnl",)),
    "error": (
        {"kind": st.sampled_from([b'"exception"', b'"auth"', b'"other"']), "message": texts},
        ("traceback",),
        (),
    ),
    "escrow": (
        {"id": texts, "op": st.sampled_from([b'"watch"', b'"check"', b'"unwatch"'])},
        (),
        ("due_at", "gap_s"),
    ),
    "context": ({}, ("auto_releases",), ("volatility", "disputes_open")),
    "snapshot": ({"request_id": texts, "schema": anything, "state": anything}, (), ()),
    "restored": ({"request_id": texts, "digest": texts}, (), ()),
    "mirror_result": ({"request_id": texts, "output": anything}, (), ()),
    "permit": ({"request_id": texts, "key": texts}, (), ()),
}
OPTIONAL = {
    "capabilities": st.lists(st.one_of(texts, anything), max_size=4).map(json_list),
    "reasoning": texts,
    "decision_id": texts,
    "traceback": texts,
    "auto_releases": st.lists(anything, max_size=4).map(json_list),
}
REQUIRED_NUMBERS = {"pid", "protocol", "latency_ms", "amount", "pnl"}


def in_range(mtype: str, name: str) -> st.SearchStrategy[bytes]:
    """Numbers the documented range takes, edges included: half of what the lines carry, so
    that valid messages (a hello needs two numbers right) reach every handler."""
    int_only, lowest, highest = DOCUMENTED[(mtype, name)]
    if int_only:
        return st.integers(int(lowest), int(highest)).map(number_token)
    return st.floats(lowest, highest).map(number_token)


@st.composite
def lines(draw: st.DrawFn) -> tuple[bytes, str, list[tuple[str, bytes]]]:
    """One line: (bytes, its type, its number fields in schema order with their tokens)."""
    mtype = draw(st.sampled_from(sorted(SHAPES)))
    required, optional, number_fields = SHAPES[mtype]
    fields = [(name, draw(strategy)) for name, strategy in required.items()]
    fields += [(name, draw(OPTIONAL[name])) for name in optional if draw(st.booleans())]
    tokens = [
        (name, draw(in_range(mtype, name) if draw(st.booleans()) else numbers))
        for name in number_fields
        if name in REQUIRED_NUMBERS or draw(st.booleans())
    ]
    body = b"".join(b"," + orjson.dumps(name) + b":" + raw for name, raw in fields + tokens)
    return b'{"type":' + orjson.dumps(mtype) + body + b"}", mtype, tokens


def expected_kind(line: bytes, mtype: str, tokens: list[tuple[str, bytes]]) -> str | None:
    """What the documented rules say about this line: None (handled) or the error kind."""
    if len(line) > protocol.MAX_LINE:
        return protocol.E_OVERSIZE
    values = []
    for name, token in tokens:
        try:
            values.append((name, orjson.loads(token)))
        except orjson.JSONDecodeError:
            return protocol.E_RANGE  # a literal that is infinite as a double
    for name, value in values:
        int_only, lowest, highest = DOCUMENTED[(mtype, name)]
        if int_only and type(value) is not int:
            return protocol.E_FIELD
        if not lowest <= value <= highest:
            return protocol.E_RANGE
    return None


def daemon_config(directory: Path, redis_url: str) -> config.Config:
    never_started = agent([PY, "-c", "pass"])
    return config.parse(
        {
            "supervisor": {
                "name": "hostile",
                "namespace": "hostile",
                "state_dir": str(directory / "s"),
                "control_socket": str(directory / "control.sock"),
            },
            "redis": {"url": redis_url},
            "metrics": {"listen": ""},
            # A small baseline ring: its sums are recomputed (math.fsum) every third round.
            "triggers": {"pnl_sigma": {"min_baseline": 2, "baseline_rounds": 3}},
            "agents": {
                "blue": never_started,
                "green": agent([PY, "-c", "None"], "2.0.0"),
            },
        }
    )


async def drive(
    redis_url: str,
    color: Color,
    candidate: bool,
    batch: list[tuple[bytes, str, list[tuple[str, bytes]]]],
) -> None:
    directory = short_tempdir("as-hv-")
    daemon = Daemon(daemon_config(directory, redis_url))
    try:
        if candidate:  # green on probation and in charge: its rounds and latencies are judged
            s = daemon.deployment.rollout.state
            s.active = s.candidate = Color.GREEN
        child = daemon.deployment.children[color]
        channel = ChannelProtocol(
            lambda m: daemon.deployment.pipeline.handle(child, m),
            lambda k, d: daemon.deployment.pipeline.protocol_error(child, k, d),
            lambda: None,
        )
        stream = b"".join(line + b"\n" for line, _, _ in batch)
        # In pieces, as a socket delivers them: one bad line must not disturb its neighbours.
        for i in range(0, len(stream), 65536):
            channel.data_received(stream[i : i + 65536])

        kinds = [expected_kind(*item) for item in batch]
        handled = kinds.count(None)
        assert daemon.deployment.pipeline.events == handled
        sample = daemon.metrics.registry.get_sample_value
        for kind in protocol.ERROR_KINDS:
            counted = sample("agentsup_protocol_errors_total", {"color": color.value, "kind": kind})
            assert counted == kinds.count(kind), (kind, [k for k in kinds if k])
        tally = daemon.deployment.pipeline.tally[color]
        assert tally.rounds == sum(
            1 for (_, t, _), k in zip(batch, kinds, strict=True) if t == "outcome" and k is None
        )
        assert math.isfinite(tally.pnl)
        assert tally.decisions == sum(
            1 for (_, t, _), k in zip(batch, kinds, strict=True) if t == "decision" and k is None
        )
    finally:
        await daemon.tasks.cancel_jobs()  # the permits the property asked for
        await daemon.redis.aclose()
        shutil.rmtree(directory, ignore_errors=True)


def outcome(pnl: bytes) -> tuple[bytes, str, list[tuple[str, bytes]]]:
    return b'{"type":"outcome","pnl":' + pnl + b"}", "outcome", [("pnl", pnl)]


DEEP_HELLO = (
    b'{"type":"hello","version":"1","capabilities":['
    + nested(400, "permit", False)
    + b'],"pid":1,"protocol":1}',
    "hello",
    [("pid", b"1"), ("protocol", b"1")],
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(lines(), min_size=1, max_size=8),
    st.sampled_from([Color.BLUE, Color.GREEN]),
    st.booleans(),
)
# The reproduction (the stable color's sums overflow once its ring wraps), the largest
# finite pnl allowed, and a hello nested deeper than the JSON log renderer goes.
@example([outcome(HUGE)] * 4 + [outcome(b"1e12")] * 4, Color.BLUE, False)
@example([outcome(b"-1e999"), outcome(b"1e-400"), outcome(b"-0.0")], Color.GREEN, True)
@example([DEEP_HELLO, outcome(b"1.5")], Color.BLUE, False)
def test_every_line_is_handled_or_counted_and_nothing_escapes_the_channel(
    shared_redis: RedisServer,
    batch: list[tuple[bytes, str, list[tuple[str, bytes]]]],
    color: Color,
    candidate: bool,
) -> None:
    with json_logs():
        asyncio.run(drive(shared_redis.url, color, candidate, batch))
