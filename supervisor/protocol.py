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

import sys
from typing import Any, Final

PROTOCOL_VERSION: Final = 1
MAX_LINE: Final = 1 << 20  # 1 MiB, the contract's limit for one line

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
    ("escrow", "due_at"): (0.0, 1e10),  # unix seconds, up to the year 2286 (not milliseconds)
    ("escrow", "gap_s"): (_TINY, 1e7),  # above 0, up to about 116 days
    ("context", "volatility"): (0.0, _FLOAT_MAX),  # finite, not negative
    ("context", "disputes_open"): (0, 10**9),
}

# type -> ((field, kind, required), ...)
_FIELDS: Final[dict[str, tuple[tuple[str, str, bool], ...]]] = {
    "hello": (
        ("version", _STR, True),
        ("pid", _INT, True),
        ("protocol", _INT, True),
        ("capabilities", _LIST, False),
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
    "snapshot": (("request_id", _STR, True), ("schema", _ANY, True), ("state", _ANY, True)),
    "restored": (("request_id", _STR, True), ("digest", _STR, True)),
    "mirror_result": (("request_id", _STR, True), ("output", _ANY, True)),
    "permit": (("request_id", _STR, True), ("key", _STR, True)),
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
