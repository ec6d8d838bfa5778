"""The child channel: JSON lines both ways, checked by hand (this is the hot path).

Every line a child sends goes through :func:`check`, which answers ``None`` for a good
message or the *kind* of what is wrong with it, the label of
``agentsup_protocol_errors_total{color,kind}``. No pydantic here: a decision event must cost
microseconds, and the checks are a dict lookup and a few ``type()`` comparisons.
"""

from __future__ import annotations

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
ERROR_KINDS: Final = (
    E_JSON,
    E_UTF8,
    E_OVERSIZE,
    E_NOT_OBJECT,
    E_NO_TYPE,
    E_UNKNOWN_TYPE,
    E_FIELD,
    E_VALUE,
)

# Field kinds. "num" is int or float but never bool (bool is an int in Python).
_STR, _INT, _NUM, _LIST, _ANY = "str", "int", "num", "list", "any"

# type -> ((field, kind, required), ...)
_SCHEMA: Final[dict[str, tuple[tuple[str, str, bool], ...]]] = {
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


def _field_ok(value: Any, kind: str) -> bool:
    t = type(value)
    if kind == _STR:
        return t is str
    if kind == _NUM:
        return t is float or t is int
    if kind == _INT:
        return t is int
    if kind == _LIST:
        return t is list
    return True


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
    for name, kind, required in schema:
        value = msg.get(name)
        if value is None:
            if required and name not in msg:
                return E_FIELD
            if required and kind != _ANY:
                return E_FIELD
            continue
        if not _field_ok(value, kind):
            return E_FIELD
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
    }.get(kind, kind)
