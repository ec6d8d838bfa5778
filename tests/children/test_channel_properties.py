"""Properties of the channel framing and the protocol checks, over generated input."""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import protocol
from supervisor.children.channel import ChannelProtocol

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.one_of(
    st.builds(lambda n: {"type": "heartbeat", "n": n}, st.integers(-(2**53), 2**53)),
    st.builds(
        lambda pnl: {"type": "outcome", "pnl": pnl},
        st.floats(allow_nan=False, allow_infinity=False),
    ),
    st.dictionaries(st.sampled_from(["type", "id", "kind", "pnl", "key"]), json_values, max_size=5),
)
garbage = st.binary(max_size=40).filter(lambda b: b"\n" not in b)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def proto(self) -> ChannelProtocol:
        return ChannelProtocol(
            lambda m: self.events.append(("msg", m)),
            lambda k, d: self.events.append(("err", k)),
            lambda: None,
            max_line=200,
        )


def feed(stream: bytes, cuts: list[int]) -> list[tuple[str, Any]]:
    rec = Recorder()
    proto = rec.proto()
    last = 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts):
        proto.data_received(stream[last:cut])
        last = cut
    proto.data_received(stream[last:])
    return rec.events


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(messages.map(orjson.dumps), garbage, st.just(b"x" * 300)), max_size=12),
    st.lists(st.integers(0, 10_000), max_size=8),
)
def test_how_bytes_are_chunked_never_changes_what_is_read(
    lines: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    whole = feed(stream, [])
    assert feed(stream, cuts) == whole
    # Every line is accounted for exactly once: a message, or an error, or a blank line.
    assert len(whole) == sum(1 for line in lines if line.strip())


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_check_never_raises_and_answers_a_known_kind(value: Any) -> None:
    kind = protocol.check(value)
    assert kind is None or kind in protocol.ERROR_KINDS


# One valid message of each type that carries numbers, to put one number at a time into.
WITH_NUMBERS: dict[str, dict[str, Any]] = {
    "hello": {"type": "hello", "version": "1", "pid": 1, "protocol": 1},
    "decision": {
        "type": "decision",
        "id": "d",
        "kind": "k",
        "inputs": {},
        "output": {},
        "latency_ms": 1.0,
    },
    "execution": {"type": "execution", "decision_id": "d", "key": "k", "amount": 1.0},
    "outcome": {"type": "outcome", "pnl": 0.0},
    "escrow": {"type": "escrow", "id": "e", "op": "watch"},
    "context": {"type": "context"},
    "snapshot": {"type": "snapshot", "request_id": "s", "schema": "s/1", "state": {}},
    "snapshot_chunk": {
        "type": "snapshot_chunk",
        "request_id": "s",
        "index": 0,
        "total": 1,
        "data": "",
    },
    "permit": {"type": "permit", "request_id": "r", "key": "k"},
    "mirror_scored": {"type": "mirror_scored", "request_id": "m", "pnl": 0.0},
}
INT_ONLY = {
    ("hello", "pid"),
    ("hello", "protocol"),
    ("context", "disputes_open"),
    ("snapshot_chunk", "index"),
    ("snapshot_chunk", "total"),
}


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(sorted(protocol.RANGES)),
    st.one_of(
        st.floats(),  # NaN and both infinities included
        st.integers(),
        st.sampled_from([0, -0.0, 1, 5e-324, 1e12, 1e12 + 1, 2**22, 2**22 + 1, 2**63, 2**64]),
    ),
)
def test_a_number_is_taken_only_when_finite_and_inside_its_range(
    where: tuple[str, str], value: float
) -> None:
    mtype, field = where
    assert protocol.check(WITH_NUMBERS[mtype]) is None
    kind = protocol.check({**WITH_NUMBERS[mtype], field: value})
    lowest, highest = protocol.RANGES[where]
    if where in INT_ONLY and type(value) is not int:
        assert kind == protocol.E_FIELD
    elif math.isfinite(value) and lowest <= value <= highest:
        assert kind is None
    else:
        assert kind == protocol.E_RANGE
    if kind is None:
        assert math.isfinite(value)  # nothing infinite or NaN ever reaches an evaluator
