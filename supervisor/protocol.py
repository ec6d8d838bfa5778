"""The child channel: JSON lines both ways, checked by hand (this is the hot path).

Every line a child sends goes through :func:`check`, which answers ``None`` for a good
message or the *kind* of what is wrong with it, the label of
``agentsup_protocol_errors_total{color,kind}``. No pydantic here: a decision event must cost
microseconds, and the checks are a dict lookup, a few ``type()`` comparisons and, for numbers,
one chained comparison against the field's range.

Why ranges: a number of the right type can still be absurd. ``pnl = 1.7976931348623157e308``
is a valid JSON float, and two of them overflow every sum the evaluators keep (``math.fsum``
raises). Refusing absurd values at the edge keeps every number the evaluators see finite and
far from overflow, so their arithmetic needs no guard of its own. orjson already refuses
literals that parse as infinity (``1e999``: counted as :data:`E_RANGE` by the channel) and
JSON has no NaN, but :func:`check` also takes dicts built in Python, so non-finite values are
refused here too (every comparison with NaN is false, so NaN fails any range).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import sys
from collections.abc import Iterator
from typing import Any, Final

import orjson

PROTOCOL_VERSION: Final = 1
MAX_LINE: Final = 1 << 20  # 1 MiB, the contract's limit for one line
# A state too large for one line goes as chunks (``snapshot_chunk`` up, ``restore_chunk``
# down): this many bytes of its JSON each, base64 in ``data`` (about 683 KiB on the line).
CHUNK_BYTES: Final = 512 << 10
MAX_CHUNKS: Final = 1 << 14  # 8 GiB of chunks: far above any cap a receiver sets

# Kinds of protocol error (label values, a closed set).
E_JSON: Final = "json"  # not JSON
E_UTF8: Final = "utf8"  # not UTF-8
E_OVERSIZE: Final = "oversize"  # longer than MAX_LINE
E_NOT_OBJECT: Final = "not_object"  # JSON, but not an object
E_NO_TYPE: Final = "no_type"  # an object without a string "type"
E_UNKNOWN_TYPE: Final = "unknown_type"  # a type this supervisor does not know
E_FIELD: Final = "field"  # a required field missing or of the wrong type
E_VALUE: Final = "value"  # a field of the right type with a value out of its set
E_RANGE: Final = "range"  # a number not finite, or outside its field's range (RANGES)
E_HANDLER: Final = "handler"  # a valid message whose handling raised (a supervisor bug)
ERROR_KINDS: Final = (
    E_JSON,
    E_UTF8,
    E_OVERSIZE,
    E_NOT_OBJECT,
    E_NO_TYPE,
    E_UNKNOWN_TYPE,
    E_FIELD,
    E_VALUE,
    E_RANGE,
    E_HANDLER,
)

# Field kinds. "num" is int or float but never bool (bool is an int in Python).
_STR, _INT, _NUM, _LIST, _ANY = "str", "int", "num", "list", "any"
# The exact types each kind accepts (compared with ``type(value) in``, so no subclass: no bool).
_TYPES: Final[dict[str, tuple[type, ...] | None]] = {
    _STR: (str,),
    _INT: (int,),
    _NUM: (float, int),
    _LIST: (list,),
    _ANY: None,
}

MAX_MONEY: Final = 1e12  # |pnl|, |amount|: a trillion units of anything is a bug, not a round
_FLOAT_MAX: Final = sys.float_info.max
_TINY: Final = 5e-324  # the smallest positive float: ``_TINY <= x`` is ``x > 0`` for any number
# (type, field) -> (lowest, highest), both included: every number a child sends has one.
RANGES: Final[dict[tuple[str, str], tuple[float, float]]] = {
    ("hello", "pid"): (1, 1 << 22),  # Linux's largest pid_max
    ("hello", "protocol"): (1, 1000),
    ("decision", "latency_ms"): (0.0, 1e9),  # up to about 11.6 days
    ("execution", "amount"): (-MAX_MONEY, MAX_MONEY),
    ("outcome", "pnl"): (-MAX_MONEY, MAX_MONEY),
    # Not above 0 here: a stake of 0 or less is the permit script's to refuse (amount_required)
    # with an answer, where a protocol error would leave the agent waiting for one.
    ("permit", "amount"): (-MAX_MONEY, MAX_MONEY),
    ("escrow", "due_at"): (0.0, 1e10),  # unix seconds, up to the year 2286 (not milliseconds)
    ("escrow", "gap_s"): (_TINY, 1e7),  # above 0, up to about 116 days
    ("context", "volatility"): (0.0, _FLOAT_MAX),  # finite, not negative
    ("context", "disputes_open"): (0, 10**9),
    ("snapshot", "taken_at"): (0.0, 1e10),  # unix seconds, like escrow.due_at
    ("snapshot_chunk", "index"): (0, MAX_CHUNKS - 1),
    ("snapshot_chunk", "total"): (1, MAX_CHUNKS),
    ("mirror_scored", "pnl"): (-MAX_MONEY, MAX_MONEY),
}

# type -> ((field, kind, required), ...)
_FIELDS: Final[dict[str, tuple[tuple[str, str, bool], ...]]] = {
    "hello": (
        ("version", _STR, True),
        ("pid", _INT, True),
        ("protocol", _INT, True),
        ("capabilities", _LIST, False),
        ("schema", _STR, False),  # the schema of this version's state (the handoff)
        ("reads", _LIST, False),  # every schema it can restore from (its migrations)
    ),
    "heartbeat": (),
    "decision": (
        ("id", _STR, True),
        ("kind", _STR, True),
        ("inputs", _ANY, True),
        ("output", _ANY, True),
        ("latency_ms", _NUM, True),
        ("reasoning", _STR, False),
    ),
    "execution": (("decision_id", _STR, True), ("key", _STR, True), ("amount", _NUM, True)),
    "outcome": (("pnl", _NUM, True), ("decision_id", _STR, False)),
    "error": (("kind", _STR, True), ("message", _STR, True), ("traceback", _STR, False)),
    "escrow": (
        ("id", _STR, True),
        ("op", _STR, True),
        ("due_at", _NUM, False),
        ("gap_s", _NUM, False),
    ),
    "context": (
        ("volatility", _NUM, False),
        ("disputes_open", _INT, False),
        ("auto_releases", _LIST, False),
    ),
    "snapshot": (
        ("request_id", _STR, True),
        ("schema", _ANY, True),
        ("state", _ANY, True),
        ("taken_at", _NUM, False),
        ("error", _STR, False),  # the snapshot could not be taken: why (schema, state null)
    ),
    "snapshot_chunk": (
        ("request_id", _STR, True),
        ("index", _INT, True),
        ("total", _INT, True),
        ("data", _STR, True),
    ),
    "restored": (("request_id", _STR, True), ("digest", _STR, True), ("error", _STR, False)),
    "quiesced": (("request_id", _STR, True), ("error", _STR, False)),
    "mirror_result": (("request_id", _STR, True), ("output", _ANY, True)),
    # The shadow's would-be PnL of its own decision on a live outcome (reply to mirror_outcome);
    # pnl null with an error when it could not score it.
    "mirror_scored": (("request_id", _STR, True), ("pnl", _NUM, False), ("error", _STR, False)),
    # amount: the stake, required in a canary (the fence counts it against the allocation).
    "permit": (("request_id", _STR, True), ("key", _STR, True), ("amount", _NUM, False)),
}

# Fields whose value must come from a closed set.
_CHOICES: Final[dict[str, tuple[str, frozenset[str]]]] = {
    "error": ("kind", frozenset({"exception", "auth", "other"})),
    "escrow": ("op", frozenset({"watch", "check", "unwatch"})),
}


# What check() walks per field: (name, accepted types or None for any, required, range or
# None), built once from _FIELDS and RANGES so that a check is one loop without calls.
_Rule = tuple[str, tuple[type, ...] | None, bool, tuple[float, float] | None]
_SCHEMA: Final[dict[str, tuple[_Rule, ...]]] = {
    mtype: tuple(
        (name, _TYPES[kind], required, RANGES.get((mtype, name))) for name, kind, required in fields
    )
    for mtype, fields in _FIELDS.items()
}


def check(msg: Any) -> str | None:
    """Return None when ``msg`` (already parsed JSON) is a valid child message, else its error
    kind. Fields not in the schema are allowed: they are how the protocol grows."""
    if type(msg) is not dict:
        return E_NOT_OBJECT
    mtype = msg.get("type")
    if type(mtype) is not str:
        return E_NO_TYPE
    schema = _SCHEMA.get(mtype)
    if schema is None:
        return E_UNKNOWN_TYPE
    for name, types, required, bounds in schema:
        value = msg.get(name)
        if value is None:
            if required and (types is not None or name not in msg):
                return E_FIELD
            continue
        if types is not None and type(value) not in types:
            return E_FIELD
        # NaN compares false with everything, so it fails here like an infinity does.
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            return E_RANGE
    choice = _CHOICES.get(mtype)
    if choice is not None and msg[choice[0]] not in choice[1]:
        return E_VALUE
    return None


def describe(kind: str) -> str:
    """A sentence for the child (sent back in an ``error`` message) and for the log."""
    return {
        E_JSON: "line is not valid JSON",
        E_UTF8: "line is not valid UTF-8",
        E_OVERSIZE: f"line is longer than {MAX_LINE} bytes; skipped to the next newline",
        E_NOT_OBJECT: "line is not a JSON object",
        E_NO_TYPE: 'object has no string "type" field',
        E_UNKNOWN_TYPE: "unknown message type; ignored",
        E_FIELD: "a required field is missing or has the wrong type",
        E_VALUE: "a field's value is not one of those allowed",
        E_RANGE: "a number is not finite or is outside its field's range; see docs/protocol.md",
        E_HANDLER: "the supervisor failed handling this message; it was dropped and counted",
    }.get(kind, kind)


# -- the state of a handoff: its canonical encoding and chunked frames ------------------------


def canonical(state: Any) -> bytes:
    """The canonical encoding of a snapshot's state, over which its digest is taken: JSON,
    keys sorted, separators ``,`` and ``:``, UTF-8, no ASCII escaping (orjson, as the SDK
    writes it). Numbers are written in their shortest round-trip form; the one difference
    from Python's ``json.dumps(..., sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` is that an exponent is not zero-padded (``1e-7``, as JavaScript
    writes it, where Python writes ``1e-07``). Raises ``TypeError`` for what JSON cannot hold
    (a non-string key, an integer over 64 bits).

    >>> canonical({"b": [1.0, 2], "a": "é"})
    b'{"a":"\xc3\xa9","b":[1.0,2]}'
    """
    try:
        return orjson.dumps(state, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"not JSON: {exc}") from None


def digest(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data`` (a :func:`canonical` encoding).

    >>> digest(canonical({}))[:16]
    '44136fa355b3678a'
    """
    return hashlib.sha256(data).hexdigest()


def state_digest(state: Any) -> str:
    """The digest of a state: ``digest(canonical(state))``, what ``restored.digest`` says."""
    return digest(canonical(state))


def chunk_frames(msg_type: str, request_id: str, payload: bytes) -> Iterator[dict[str, Any]]:
    """``payload`` (a JSON object's bytes) as ``msg_type`` frames of :data:`CHUNK_BYTES`:
    ``{"type", "request_id", "index", "total", "data"}``, ``data`` in base64.

    >>> [f["index"] for f in chunk_frames("restore_chunk", "r1", b"x" * (CHUNK_BYTES + 1))]
    [0, 1]
    """
    total = max(1, -(-len(payload) // CHUNK_BYTES))
    if total > MAX_CHUNKS:
        raise ValueError(f"{len(payload)} bytes is more than {MAX_CHUNKS} chunks")
    for index in range(total):
        piece = payload[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]
        yield {
            "type": msg_type,
            "request_id": request_id,
            "index": index,
            "total": total,
            "data": base64.b64encode(piece).decode("ascii"),
        }


class Reassembly:
    """The chunks of one payload, in order, capped at ``max_bytes``: :meth:`add` returns the
    whole payload once its last chunk came, None before; it raises ``ValueError`` for a
    chunk out of order, a total that changes, bad base64, or a payload over the cap (the
    receiver then drops the whole transfer: nothing grows past the cap).

    >>> r = Reassembly(max_bytes=10)
    >>> frames = list(chunk_frames("snapshot_chunk", "s1", b'{"a":1}'))
    >>> r.add(frames[0])
    b'{"a":1}'
    """

    __slots__ = ("_parts", "_size", "_total", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._total: int | None = None

    def add(self, frame: dict[str, Any]) -> bytes | None:
        index, total = frame["index"], frame["total"]
        if self._total is None:
            # Known from the first chunk: more than the cap allows is refused before any data.
            if (total - 1) * CHUNK_BYTES >= self.max_bytes:
                raise ValueError(f"{total} chunks are more than {self.max_bytes} bytes")
            self._total = total
        if total != self._total or index != len(self._parts):
            raise ValueError(f"chunk {index} of {total} out of order")
        try:
            piece = base64.b64decode(frame["data"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"chunk {index} is not base64") from None
        self._size += len(piece)
        if self._size > self.max_bytes:
            raise ValueError(f"over {self.max_bytes} bytes")
        self._parts.append(piece)
        if len(self._parts) < total:
            return None
        return b"".join(self._parts)
