"""The flags' truth as the daemon keeps it: the last good value of every flag key, the
effective values per color, their changes and their history.

Redis holds the flags (keys.py); operators change them with ``agentsup flags set`` or
straight with ``redis-cli SET flag:game dice``. Both end here: a change through the book is
written and logged in one Lua call; a change made behind its back is found by :meth:`refresh`
(woken by a keyspace notification, or by the timer), judged against the schema, logged with
``who=redis``, and pushed. A raw value that does not fit is never pushed: the children stay on
the last good value, and the bad one is counted, logged and alerted on until it is fixed.

A Redis that comes back as another server (its ``run_id`` changed: restarted empty, or from an
older dump) does not turn a kill switch back on: every flag key is put back as it was last
read, from memory or from ``state_dir/flags.json`` (kept.py), logged ``who=supervisor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from supervisor.alerts import Alert
from supervisor.arbiter.lane import Lane
from supervisor.config import Color, Config, FlagSpec, FlagValue
from supervisor.errors import Refused
from supervisor.flags.codec import FlagValueError, decode, encode, parse_cli
from supervisor.flags.kept import KeptFlags
from supervisor.flags.keys import FlagKeys
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics

log = get_logger("flags")

# Entries kept in {ns}:flags:log (approximately: MAXLEN ~).
LOG_MAXLEN = 10_000
# How much of a refused raw value is shown (log, status, alert): it may be anything.
SHOWN_CHARS = 200
# How many of the latest history entries ``history NAME`` looks through.
HISTORY_SCAN = 1000

# Old value read, new one written (or the key deleted), the change logged: one call, so the
# history never misses nor invents a write of ours. KEYS: the flag key, the log stream.
# ARGV: op (set|unset), new, name, color, who, reason, at, maxlen.
_WRITE = """
local old = redis.call('GET', KEYS[1])
if ARGV[1] == 'set' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*',
  'name', ARGV[3], 'op', ARGV[1], 'old', old or '', 'new', ARGV[2], 'color', ARGV[4],
  'who', ARGV[5], 'reason', ARGV[6], 'at', ARGV[7])
return old
"""

Source = str  # "color" (a per-color value), "global", "default"
Effective = dict[Color, tuple[dict[str, FlagValue], dict[str, Source]]]


class FlagBook:
    """Every flag of the ``[flags]`` schema, for one deployment."""

    def __init__(
        self,
        config: Config,
        redis: Redis,
        metrics: Metrics,
        *,
        on_change: Callable[[], None],
        record: Callable[[str, Mapping[str, Any], Color | None], object],
        alert: Callable[[Alert], None],
        lane: Lane | None = None,
    ) -> None:
        self.schema: dict[str, FlagSpec] = dict(config.flags)
        self.keys = FlagKeys(config.supervisor.namespace, config.redis.flags_prefix)
        self.redis = redis
        self.metrics = metrics
        self._name = config.supervisor.name
        self._interval = config.redis.reconcile_interval_s
        self._on_change = on_change
        self._record = record
        self._alert = alert
        self._write = redis.register_script(_WRITE)
        self._lane = lane  # the raw connection the reads take when Redis is a plain one
        # Every key we read, and whose flag (and color, None for the global one) it holds.
        self._where: dict[str, tuple[str, Color | None]] = {}
        for name, spec in self.schema.items():
            self._where[self.keys.global_(name)] = (name, None)
            if not spec.kill_switch:
                for color in Color:
                    self._where[self.keys.color(name, color)] = (name, color)
        self._raw: dict[str, str | None] = {}  # the text last seen at each key
        self._good: dict[str, FlagValue] = {}  # the last value that fit (absent: none set)
        self._bad: dict[str, str] = {}  # keys holding text that does not fit, and the text
        self._why: dict[str, str] = {}
        self._loaded = False
        # The server the keys were last read from, and what it held (kept.py).
        self._run_id: str | None = None
        self._kept = KeptFlags(config.supervisor.state_dir / "flags.json")
        self._lock = asyncio.Lock()
        self._hint = asyncio.Event()
        self._effective: Effective = self._compute()
        for name in self.schema:
            self.metrics.flag_invalid.labels(name).set(0)

    # -- what is in force -------------------------------------------------------------------
    def values(self, color: Color) -> dict[str, FlagValue]:
        """``color``'s effective values: its own over the global ones over the defaults."""
        return dict(self._effective[color][0])

    def sources(self, color: Color) -> dict[str, Source]:
        """Where each of ``color``'s values comes from: color, global or default."""
        return dict(self._effective[color][1])

    def message(self, color: Color) -> dict[str, Any]:
        """The ``flags`` push for ``color`` (``sources`` beside the contract's ``values``)."""
        values, sources = self._effective[color]
        return {"type": "flags", "values": dict(values), "sources": dict(sources)}

    def describe(self) -> dict[str, Any]:
        """For ``status``: each color's values, and any raw value refused."""
        return {
            "values": {c.value: self.values(c) for c in Color},
            "invalid": {key: raw[:SHOWN_CHARS] for key, raw in self._bad.items()},
        }

    def _compute(self) -> Effective:
        out: Effective = {}
        for color in Color:
            values: dict[str, FlagValue] = {}
            sources: dict[str, Source] = {}
            for name, spec in self.schema.items():
                own = self.keys.color(name, color)
                glob = self.keys.global_(name)
                if not spec.kill_switch and own in self._good:
                    values[name], sources[name] = self._good[own], "color"
                elif glob in self._good:
                    values[name], sources[name] = self._good[glob], "global"
                else:
                    values[name], sources[name] = spec.default, "default"
            out[color] = (values, sources)
        return out

    def _publish(self) -> None:
        effective = self._compute()
        if effective == self._effective and self._loaded:
            return
        self._effective = effective
        self._on_change()

    # -- reading what is in Redis -----------------------------------------------------------
    def hint(self) -> None:
        """Something may have changed (a notification, a reconnect): re-read soon."""
        self._hint.set()

    async def run(self) -> None:
        """Re-read on every hint and at least every reconcile interval; never raises for
        Redis (the health loop reports it)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._hint.wait()
            self._hint.clear()
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                log.debug("flags_read_failed", error=str(exc))

    async def refresh(self) -> None:
        """Read every flag key once; take in what changed, refuse what does not fit."""
        if not self._where:
            self._loaded = True
            return
        async with self._lock:
            keys = list(self._where)
            if not self._loaded:
                await asyncio.to_thread(self._kept.load)
            run_id, raws = await self._read(keys)
            raws = await self._put_back(keys, raws, run_id)
            changes: list[tuple[str, Color | None, str | None, str | None]] = []
            for key, got in zip(keys, raws, strict=True):
                raw = _text(got) if got is not None else None
                if self._loaded and raw == self._raw.get(key):
                    continue
                before = self._raw.get(key)
                self._raw[key] = raw
                name, color = self._where[key]
                if raw is None:
                    self._clear_bad(key, name)
                    if self._good.pop(key, None) is None:
                        continue
                else:
                    try:
                        value = decode(self.schema[name], raw)
                    except FlagValueError as exc:
                        self._invalid(key, name, color, raw, str(exc))
                        continue
                    self._clear_bad(key, name)
                    if key in self._good and _same(self._good[key], value):
                        continue
                    self._good[key] = value
                if self._loaded:
                    changes.append((name, color, before, raw))
            if not self._loaded:
                log.info("flags_loaded", values={c.value: self.values(c) for c in Color})
            self._run_id = run_id
            # Pushed first, recorded after: the file and the history are not on the clock.
            self._publish()
            self._loaded = True
            await asyncio.to_thread(self._kept.save, run_id, self._raw)
            for name, color, old, new in changes:
                await self._log_external(name, color, old, new)

    async def _read(self, keys: list[str]) -> tuple[str, list[Any]]:
        """The server's run_id and the keys' values, in one round trip (on the fast lane
        when Redis is a plain one: this is on a flag change's clock)."""
        if self._lane is not None:
            info, raws = await self._lane.pipeline(["INFO", "server"], ["MGET", *keys])
            found = re.search(rb"^run_id:(\w+)", info, re.MULTILINE)
            return (found.group(1).decode() if found else ""), raws
        pipe = self.redis.pipeline(transaction=False)
        pipe.info("server")
        pipe.mget(keys)
        parsed, raws = await pipe.execute()
        return str(parsed.get("run_id", "")), raws

    async def _put_back(self, keys: list[str], raws: list[Any], run_id: str) -> list[Any]:
        """Redis is another server than the one the flags were last read from: write every
        key back as it was (and remove what was not there). Returns what Redis holds now."""
        known_run = self._run_id if self._loaded else self._kept.run_id
        if not known_run or not run_id or run_id == known_run:
            return raws
        known = self._raw if self._loaded else dict(self._kept.raw)
        now: list[Any] = []
        for key, got in zip(keys, raws, strict=True):
            raw = _text(got) if got is not None else None
            want = known.get(key)
            if raw == want:
                now.append(got)
                continue
            name, color = self._where[key]
            why = "put back: Redis came back as another server (run_id changed) without it"
            op = "unset" if want is None else "set"
            args = [op, want or "", name, color.value if color else "", "supervisor", why]
            await self._write(
                keys=[key, self.keys.log], args=[*args, repr(time.time()), LOG_MAXLEN]
            )
            log.warning("flag_put_back", key=key, was=raw, now=want, hint=why)
            self.metrics.flag_changes.labels(name, "supervisor").inc()
            now.append(want)
        return now

    async def _log_external(
        self, name: str, color: Color | None, old: str | None, new: str | None
    ) -> None:
        """A change nobody told us about (redis-cli, the seed's ``Flags.set``): into the
        history as ``who=redis``, counted, logged."""
        fields = {
            "name": name,
            "op": "set" if new is not None else "unset",
            "old": old or "",
            "new": new or "",
            "color": color.value if color else "",
            "who": "redis",
            "reason": "changed in Redis",
            "at": repr(time.time()),
        }
        with contextlib.suppress(RedisError, OSError):
            await self.redis.xadd(self.keys.log, fields, maxlen=LOG_MAXLEN, approximate=True)  # type: ignore[arg-type]
        self._changed(name, color, old, new, "redis", "changed in Redis")

    def _invalid(self, key: str, name: str, color: Color | None, raw: str, why: str) -> None:
        if self._bad.get(key) == raw:
            return
        self._bad[key] = raw
        self._why[key] = why
        self.metrics.flag_invalid_total.labels(name).inc()
        self.metrics.flag_invalid.labels(name).set(1)
        kept = self._good.get(key, self.schema[name].default)
        log.warning(
            "flag_value_invalid",
            flag=name,
            key=key,
            color=color.value if color else None,
            raw=raw[:SHOWN_CHARS],
            why=why,
            kept=kept,
            hint=f"the children keep {kept!r}; set a value that fits with agentsup flags set",
        )
        self.metrics.alerts_sent.labels("flags").inc()
        self._alert(
            {
                "trigger": "flag_value_invalid",
                "severity": "medium",
                "action": "alert",
                "color": color.value if color else None,
                "message": f"{key} holds {raw[:SHOWN_CHARS]!r}: {why}; the children keep {kept!r}",
                "at": time.time(),
                "supervisor": self._name,
            }
        )

    def _clear_bad(self, key: str, name: str) -> None:
        if self._bad.pop(key, None) is not None:
            self._why.pop(key, None)
            if not any(self._where[k][0] == name for k in self._bad):
                self.metrics.flag_invalid.labels(name).set(0)
            log.info("flag_value_fixed", flag=name, key=key)

    # -- changes through the daemon ---------------------------------------------------------
    def spec(self, name: str) -> FlagSpec:
        spec = self.schema.get(name)
        if spec is None:
            known = ", ".join(self.schema) or "none: [flags] is empty"
            raise Refused("unknown_flag", f"no flag {name!r} in [flags] (known: {known})")
        return spec

    async def set(
        self, name: str, text: str, color: Color | None, by: str, reason: str
    ) -> dict[str, Any]:
        """Write ``text`` (as the operator typed it) to ``name``, for ``color`` or for all.
        Refused: unknown_flag, bad_value, kill_switch_global, redis_unavailable."""
        spec = self.spec(name)
        if color is not None and spec.kill_switch:
            raise Refused(
                "kill_switch_global", f"{name} is a kill switch: it has no per-color value"
            )
        try:
            value = parse_cli(spec, text)
        except FlagValueError as exc:
            raise Refused("bad_value", f"{name} ({spec.type}): {exc}") from None
        raw = encode(spec, value)
        key = self.keys.color(name, color) if color else self.keys.global_(name)
        old = await self._write_key("set", key, raw, value, name, color, by, reason)
        self._publish()  # pushed first: the log line and the decision record are not urgent
        self._changed(name, color, old, raw, by, reason)
        return {"name": name, "color": color.value if color else None, "old": old, "new": raw}

    async def unset(self, name: str, color: Color | None, by: str, reason: str) -> dict[str, Any]:
        """Remove ``name``'s value for ``color`` (or its global one): the next one down
        applies (the global value, then the default)."""
        spec = self.spec(name)
        if color is not None and spec.kill_switch:
            raise Refused(
                "kill_switch_global", f"{name} is a kill switch: it has no per-color value"
            )
        key = self.keys.color(name, color) if color else self.keys.global_(name)
        old = await self._write_key("unset", key, "", None, name, color, by, reason)
        self._publish()
        if old is not None:
            self._changed(name, color, old, None, by, reason)
        return {"name": name, "color": color.value if color else None, "old": old, "new": None}

    async def _write_key(
        self,
        op: str,
        key: str,
        raw: str,
        value: FlagValue | None,
        name: str,
        color: Color | None,
        by: str,
        reason: str,
    ) -> str | None:
        args = [op, raw, name, color.value if color else "", by, reason, repr(time.time())]
        async with self._lock:
            try:
                keys = [key, self.keys.log]
                if self._lane is not None:
                    got = await self._lane.script(self._write, keys, [*args, str(LOG_MAXLEN)])
                else:
                    got = await self._write(keys=keys, args=[*args, LOG_MAXLEN])
            except (RedisError, OSError) as exc:
                raise Refused("redis_unavailable", f"cannot write {key}: {exc}") from None
            # Seen, so that the notification of our own write is not taken for another's.
            self._raw[key] = raw if op == "set" else None
            if value is None:
                self._good.pop(key, None)
            else:
                self._good[key] = value
            self._clear_bad(key, name)
        return got.decode("utf-8", "replace") if isinstance(got, bytes) else None

    def _changed(
        self, name: str, color: Color | None, old: str | None, new: str | None, who: str, why: str
    ) -> None:
        source = "redis" if who == "redis" else "control"
        self.metrics.flag_changes.labels(name, source).inc()
        log.info(
            "flag_changed",
            flag=name,
            color=color.value if color else None,
            old=old,
            new=new,
            who=who,
            reason=why,
        )
        fields = {"name": name, "old": old, "new": new, "who": who, "reason": why}
        with contextlib.suppress(ValueError):
            self._record("flag", fields, color)

    # -- reading for the operator -----------------------------------------------------------
    def listing(self) -> list[dict[str, Any]]:
        """Every flag: its schema, the values set, each color's effective value."""
        out = []
        for name, spec in self.schema.items():
            glob = self.keys.global_(name)
            entry: dict[str, Any] = {
                "name": name,
                "type": spec.type,
                "default": spec.default,
                "description": spec.description,
                "kill_switch": spec.kill_switch,
                "global": self._good.get(glob),
                "colors": {},
                "effective": {},
                "invalid": {},
            }
            if spec.type == "choice":
                entry["choices"] = spec.choices
            if spec.min is not None:
                entry["min"] = spec.min
            if spec.max is not None:
                entry["max"] = spec.max
            for color in Color:
                own = self.keys.color(name, color)
                if own in self._good:
                    entry["colors"][color.value] = self._good[own]
                values, sources = self._effective[color]
                entry["effective"][color.value] = {"value": values[name], "source": sources[name]}
            for key in (glob, *(self.keys.color(name, c) for c in Color)):
                if key in self._bad:
                    raw = self._bad[key][:SHOWN_CHARS]
                    entry["invalid"][key] = {"raw": raw, "why": self._why.get(key)}
            out.append(entry)
        return out

    def get(self, name: str) -> dict[str, Any]:
        self.spec(name)
        return next(e for e in self.listing() if e["name"] == name)

    async def history(self, name: str | None, count: int) -> list[dict[str, Any]]:
        """The latest ``count`` changes (of ``name``), newest first."""
        if name is not None:
            self.spec(name)
        try:
            entries = await self.redis.xrevrange(self.keys.log, count=HISTORY_SCAN) or []
        except (RedisError, OSError) as exc:
            raise Refused("redis_unavailable", f"cannot read {self.keys.log}: {exc}") from None
        out = []
        for entry_id, raw_fields in entries:
            fields = {_text(k): _text(v) for k, v in (raw_fields or {}).items()}
            if name is not None and fields.get("name") != name:
                continue
            out.append({"id": _text(entry_id or b""), **fields})
            if len(out) >= count:
                break
        return out


def _text(v: bytes | str) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _same(a: FlagValue, b: FlagValue) -> bool:
    return type(a) is type(b) and a == b
