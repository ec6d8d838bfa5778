"""The comparator: which fields of a live decision's output and a mirrored one differ.

An output is flattened into fields named by their dotted path (``{"bet": {"side": "over"}}``
has the field ``bet.side``); an output that is not an object is one field, ``output``. A
list is one field, compared element by element. Two values are the same when they are equal
as JSON, or when both are numbers within the kind's tolerances: ``|a - b| <= absolute`` or
``|a - b| <= relative * max(|a|, |b|)`` (Diffy's defaults, 0.03 and 20 %). A field present
on one side only differs. ``fields`` (if not empty) lists the only fields compared, ``ignore``
the fields never compared; a name covers the fields under it (``bet`` covers ``bet.side``).

>>> c = Comparator(ComparatorSpec(ignore=["note"]))
>>> c.diverging({"target": 2.0, "stake": 1.0, "note": "a"}, {"target": 3.0, "stake": 1.1})
[Divergence(field='target', live=2.0, shadow=3.0, size=0.3333333333333333)]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from supervisor.config import ComparatorSpec, ShadowSection

ROOT: Final = "output"  # the field name of an output that is not an object
MAX_DEPTH: Final = 32  # deeper than this, a value is compared whole
_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class Divergence:
    """One field that differs: both values (None for a side that lacks it) and its size, the
    relative difference for numbers (1.0 for anything else), by which the report ranks."""

    field: str
    live: Any
    shadow: Any
    size: float


def _is_number(x: Any) -> bool:
    return type(x) in (int, float)


def flatten(output: Any) -> dict[str, Any]:
    """``output``'s fields by dotted path.

    >>> flatten({"a": 1, "b": {"c": [1, 2]}})
    {'a': 1, 'b.c': [1, 2]}
    >>> flatten(3)
    {'output': 3}
    """
    if not isinstance(output, dict) or not output:
        return {ROOT: output}
    out: dict[str, Any] = {}
    for path, value in _walk(output, "", 0):
        out[path] = value
    return out


def _walk(value: dict[str, Any], prefix: str, depth: int) -> Iterator[tuple[str, Any]]:
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, dict) and item and depth < MAX_DEPTH:
            yield from _walk(item, path + ".", depth + 1)
        else:
            yield path, item


class Comparator:
    """One decision kind's rule (a :class:`~supervisor.config.ComparatorSpec`)."""

    __slots__ = ("absolute", "fields", "ignore", "relative")

    def __init__(self, spec: ComparatorSpec) -> None:
        self.fields = tuple(spec.fields)
        self.ignore = tuple(spec.ignore)
        self.relative = spec.relative
        self.absolute = spec.absolute

    def compared(self, field: str) -> bool:
        """Whether ``field`` is compared at all."""
        if self.fields and not any(_covers(name, field) for name in self.fields):
            return False
        return not any(_covers(name, field) for name in self.ignore)

    def diverging(self, live: Any, shadow: Any) -> list[Divergence]:
        """The compared fields whose values differ, in the live output's order."""
        a, b = flatten(live), flatten(shadow)
        out = []
        for field in {**a, **b}:
            if not self.compared(field):
                continue
            x, y = a.get(field, _MISSING), b.get(field, _MISSING)
            size = self.difference(x, y)
            if size is not None:
                out.append(
                    Divergence(
                        field,
                        None if x is _MISSING else x,
                        None if y is _MISSING else y,
                        size,
                    )
                )
        return out

    def difference(self, x: Any, y: Any) -> float | None:
        """None when ``x`` and ``y`` are the same under the tolerances; else the size."""
        if _is_number(x) and _is_number(y):
            gap = abs(x - y)
            scale = max(abs(x), abs(y))
            if gap <= self.absolute or gap <= self.relative * scale:
                return None
            return gap / scale if scale > 0 else 1.0
        if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            sizes = [self.difference(i, j) for i, j in zip(x, y, strict=True)]
            found = [s for s in sizes if s is not None]
            return max(found) if found else None
        if type(x) is type(y) and x == y:
            return None
        return 1.0


def _covers(name: str, field: str) -> bool:
    return field == name or field.startswith(name + ".")


class Comparators:
    """The comparator of each kind: ``[shadow.kinds.NAME]``, else the agent's own (declared in
    its hello), else ``[shadow] comparator``."""

    def __init__(
        self, section: ShadowSection, declared: Mapping[str, ComparatorSpec] | None = None
    ) -> None:
        self._default = Comparator(section.comparator)
        self._kinds = {k: Comparator(s) for k, s in (declared or {}).items()}
        self._kinds.update((k, Comparator(s)) for k, s in section.kinds.items())

    def of(self, kind: str) -> Comparator:
        return self._kinds.get(kind, self._default)


def declared_by(hello: Mapping[str, Any] | None) -> tuple[dict[str, ComparatorSpec], list[str]]:
    """The comparators an agent declared in its hello (``comparators``: kind → spec), and
    what was wrong with the ones refused (each is ignored, the rest kept)."""
    raw = (hello or {}).get("comparators")
    if not isinstance(raw, dict):
        return {}, [] if raw is None else ["comparators is not an object"]
    found: dict[str, ComparatorSpec] = {}
    problems = []
    for kind, spec in list(raw.items())[:1000]:
        try:
            found[str(kind)[:200]] = ComparatorSpec.model_validate(spec)
        except ValueError as exc:
            problems.append(f"{str(kind)[:50]}: {str(exc).splitlines()[0][:200]}")
    return found, problems
