"""One record of the decision log: its fields, how it is encoded, and how records chain.

A record is one JSON object on one line (orjson: UTF-8, no spaces, fields in this order)::

    {"v":1,"seq":42,"id":"5f0c2a9e11d3-42","timestamp":1767225600.123,"kind":"decision",
     "color":"green","epoch":8,"role":"active","agent_version":"2.0.0",
     "decision_type":"crash_cashout","decision_id":"d-17",
     "inputs":{"current_multiplier":1.87,"target":2.0,"bet":5.0},"output":{"action":"hold"},
     "reasoning":"multiplier below target, EV still positive to hold","latency_ms":1.9,
     "flags":"44136fa355b3678a","config":"9c1d0e2b7f3a5c61","prev":"3b4c…(64 hex)"}

- ``v`` the schema (:data:`SCHEMA`); ``seq`` 1, 2, 3… with no hole, across rotations and
  restarts; ``id`` the event's id (this daemon run's id and the seq: unique across
  runs and hosts, the CloudEvents ``id``); ``timestamp`` when the daemon recorded it (unix
  seconds, the seed's field); ``kind`` what happened (:data:`KINDS`, and what other features
  record).
- ``color``, ``epoch``, ``role``, ``agent_version``: who, under which fence, which version
  (null when the record is about no color).
- the kind's own fields: for a ``decision`` the seed's ``decision_type``, ``inputs``,
  ``output``, ``reasoning`` (``""`` when the agent gave none, as the seed's default), plus
  ``decision_id`` and ``latency_ms``; see :func:`decision` and its siblings.
- ``flags``: the hash of the flags in force for that color (:func:`flags_hash`; the hash of
  no flags until flags exist), ``config``: the hash of the daemon's effective config.
- ``prev``: the SHA-256 (hex) of the previous record's line, without its newline;
  :data:`GENESIS` for the very first. That is the chain: changing, removing, inserting or
  reordering a line breaks it at that point, which :mod:`supervisor.decisions.verify` names.

``prev`` is always the last field, so that a reader can take it from the line's end without
parsing the whole line (verify does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

SCHEMA: Final = 1
GENESIS: Final = "0" * 64
# The kinds the daemon itself writes; other features add theirs through DecisionLog.record.
DECISION: Final = "decision"
EXECUTION: Final = "execution"
OUTCOME: Final = "outcome"
ERROR: Final = "error"
FLIP: Final = "flip"
CONFIRM: Final = "confirm"
START: Final = "start"
STOP: Final = "stop"
GAP: Final = "gap"
RETENTION: Final = "retention"
KINDS: Final = (DECISION, EXECUTION, OUTCOME, ERROR, FLIP, CONFIRM, START, STOP, GAP, RETENTION)
# The message types the pipeline hands the log (the child → supervisor events it records).
LOGGED_TYPES: Final = (DECISION, EXECUTION, OUTCOME, ERROR)
# Fields every record has, in order (``prev`` last); a caller's fields cannot replace them.
HEAD_FIELDS: Final = ("v", "seq", "id", "timestamp", "kind", "color", "epoch", "role")
TAIL_FIELDS: Final = ("flags", "config", "prev")
RESERVED: Final = frozenset((*HEAD_FIELDS, "agent_version", *TAIL_FIELDS))
# The seed's fields (section 9), present in every decision record.
SEED_FIELDS: Final = (
    "agent_version",
    "timestamp",
    "decision_type",
    "inputs",
    "output",
    "reasoning",
)
# How long the flags and config hashes are (hex digits of a SHA-256): names, not seals.
SHORT_HASH: Final = 16
# The bytes a line ends with: ``,"prev":"<64 hex>"}``.
PREV_SUFFIX_LEN: Final = len(',"prev":"') + 64 + len('"}')


def canonical(value: Any) -> bytes:
    """JSON with keys sorted, no spaces, UTF-8 (DESIGN.md's canonical encoding).

    >>> canonical({"b": 1, "a": [True, None]})
    b'{"a":[true,null],"b":1}'
    """
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def short_hash(value: Any) -> str:
    """The first :data:`SHORT_HASH` hex digits of the SHA-256 of ``value``'s canonical JSON."""
    return hashlib.sha256(canonical(value)).hexdigest()[:SHORT_HASH]


def flags_hash(values: Mapping[str, Any]) -> str:
    """The ``flags`` field for a color whose effective flags are ``values``.

    >>> flags_hash({})
    '44136fa355b3678a'
    """
    return short_hash(dict(values))


def config_hash(effective: Mapping[str, Any]) -> str:
    """The ``config`` field: the hash of the effective config (``config.effective``)."""
    return short_hash(dict(effective))


def line_hash(line: bytes) -> str:
    """What the next record's ``prev`` holds: the SHA-256 of this line (no newline), in hex."""
    return hashlib.sha256(line).hexdigest()


def prev_of(line: bytes) -> str | None:
    """A line's ``prev`` read from its end, or None when the line does not end that way
    (a line this writer did not write: the caller parses it instead).

    >>> prev_of(b'{"v":1,"prev":"' + b"ab" * 32 + b'"}')
    'abababababababababababababababababababababababababababababababab'
    >>> prev_of(b'{"v":1}') is None
    True
    """
    if len(line) < PREV_SUFFIX_LEN or not line.endswith(b'"}'):
        return None
    tail = line[-PREV_SUFFIX_LEN:]
    if not tail.startswith(b',"prev":"'):
        return None
    return tail[9:73].decode("ascii", errors="replace")


def seq_of(line: bytes) -> int | None:
    """A line's ``seq`` read from its start (``{"v":1,"seq":N,``), or None when it does not
    start that way.

    >>> seq_of(b'{"v":1,"seq":42,"id":"x"}')
    42
    """
    if not line.startswith(b'{"v":1,"seq":'):
        return None
    end = line.find(b",", 13)
    digits = line[13:end]
    if end < 0 or not digits.isdigit():
        return None
    return int(digits)


def decision(msg: dict[str, Any]) -> dict[str, Any]:
    """A ``decision`` message's fields in the record (the seed's names)."""
    return {
        "decision_type": msg["kind"],
        "decision_id": msg["id"],
        "inputs": msg["inputs"],
        "output": msg["output"],
        "reasoning": msg.get("reasoning") or "",
        "latency_ms": msg["latency_ms"],
    }


def execution(msg: dict[str, Any]) -> dict[str, Any]:
    return {"key": msg["key"], "decision_id": msg["decision_id"], "amount": msg["amount"]}


def outcome(msg: dict[str, Any]) -> dict[str, Any]:
    return {"pnl": msg["pnl"], "decision_id": msg.get("decision_id")}


def error(msg: dict[str, Any]) -> dict[str, Any]:
    return {
        "error_kind": msg["kind"],
        "message": msg["message"],
        "traceback": msg.get("traceback"),
    }


# How each logged message type becomes the record's own fields.
FIELDS_OF: Final = {DECISION: decision, EXECUTION: execution, OUTCOME: outcome, ERROR: error}


def unrecordable(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` with every field orjson cannot encode (nested deeper than it goes, a value of
    no JSON type) replaced by null and named in ``unrecordable``, before ``prev``.

    >>> deep: list[object] = []
    >>> for _ in range(300):
    ...     deep = [deep]
    >>> unrecordable({"v": 1, "inputs": deep, "prev": "0"})
    {'v': 1, 'inputs': None, 'unrecordable': ['inputs'], 'prev': '0'}
    """
    out: dict[str, Any] = {}
    bad = []
    for name, value in rec.items():
        try:
            orjson.dumps(value)
        except (orjson.JSONEncodeError, TypeError):
            bad.append(name)
            value = None
        out[name] = value
    prev = out.pop("prev")
    out["unrecordable"] = bad
    out["prev"] = prev
    return out
