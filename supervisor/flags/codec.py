"""The seed's encoding of a flag, both ways, and the schema's judgement of it.

The seed's ``Flags.set`` stores ``str(value)``: ``True``/``False`` for a bool, ``2.0`` for a
float, ``50`` for an int, the text itself for a string. Its ``Flags.get`` reads ``True`` and
``False`` back as bools, anything ``float()`` takes as a float, and the rest as text. We write
exactly that, so an agent written the seed's way reads what ``agentsup flags set`` writes,
and we read strictly (``false`` is not ``False``: the seed would read it as the text "false",
which is truthy), so a raw value the seed's agents would misread is refused, not guessed at.

>>> from supervisor.config import FlagSpec
>>> crash = FlagSpec(type="float", default=2.0, min=1.01)
>>> encode(crash, 3)
'3.0'
>>> decode(crash, "2.5")
2.5
>>> decode(crash, "1.0")
Traceback (most recent call last):
...
supervisor.flags.codec.FlagValueError: must be at least 1.01
>>> seed_decode(encode(FlagSpec(type="bool", default=True), False))
False
"""

from __future__ import annotations

import math
from typing import Any

from supervisor.config import FlagSpec, FlagValue
from supervisor.errors import SupervisorError

# What an operator may type for a bool on the command line; Redis holds only True/False.
_CLI_TRUE = frozenset({"true", "yes", "on", "1"})
_CLI_FALSE = frozenset({"false", "no", "off", "0"})


class FlagValueError(SupervisorError, ValueError):
    """A value that does not fit its flag's schema; the message says why."""


def encode(spec: FlagSpec, value: FlagValue) -> str:
    """The seed's ``str(value)``; a float flag's value always as a float (``2`` is ``2.0``)."""
    if spec.type == "float" and type(value) is int:
        value = float(value)
    return str(value)


def seed_decode(raw: str) -> Any:
    """What the seed's ``Flags.get`` returns for the stored text ``raw`` (its code, verbatim
    but for the bytes): used to show that what we write reads back the same.

    >>> seed_decode("True"), seed_decode("50"), seed_decode("dice")
    (True, 50.0, 'dice')
    """
    if raw in ("True", "False"):
        return raw == "True"
    try:
        return float(raw)
    except ValueError:
        return raw


def decode(spec: FlagSpec, raw: str) -> FlagValue:
    """The typed value of the stored text ``raw``; raises :class:`FlagValueError` when it does
    not fit (not the seed's encoding of this type, out of bounds, not a choice)."""
    value: FlagValue
    if spec.type == "bool":
        if raw not in ("True", "False"):
            raise FlagValueError(
                f"{_show(raw)} is not True or False (the seed's encoding of a bool)"
            )
        value = raw == "True"
    elif spec.type == "int":
        value = _integer(raw)
    elif spec.type == "float":
        value = _number(raw)
    else:
        value = raw
    why = spec.problem(value)
    if why is not None:
        raise FlagValueError(why)
    return value


def parse_cli(spec: FlagSpec, text: str) -> FlagValue:
    """The typed value an operator typed; a bool also as true/false, yes/no, on/off, 1/0.

    >>> from supervisor.config import FlagSpec
    >>> parse_cli(FlagSpec(type="bool", default=True), "false")
    False
    """
    if spec.type == "bool":
        lowered = text.strip().lower()
        if lowered in _CLI_TRUE:
            return True
        if lowered in _CLI_FALSE:
            return False
        raise FlagValueError(f"{_show(text)} is not a bool (true or false)")
    return decode(spec, text)


def _show(text: str) -> str:
    """``text`` for a message: quoted, and cut (a raw value may be anything, of any size)."""
    return repr(text if len(text) <= 60 else text[:60] + "...")


def _integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        pass
    # The seed reads every number back as a float, so `Flags.set(k, Flags.get(k))` stores
    # "50.0" for an int: a whole float is that int.
    number = _number(raw)
    if not number.is_integer():
        raise FlagValueError(f"{_show(raw)} is not an integer")
    return int(number)


def _number(raw: str) -> float:
    try:
        number = float(raw)
    except ValueError:
        raise FlagValueError(f"{_show(raw)} is not a number") from None
    if not math.isfinite(number):
        raise FlagValueError(f"{_show(raw)} is not a finite number")
    return number
