"""double_spend: an idempotency key executed twice, by one color or by both.

Blue executed ``order-7`` at epoch 7; the operator switched to green; green executes
``order-7`` at epoch 8. The permit script refuses a second permit for a key, so an agent that
asks for permits cannot get here; an agent that executes without asking, or despite a
``duplicate``, can. Each ``execution`` event is looked up in memory, and the second execution of
a key is a critical verdict against the color that made it, whichever that is: the daemon rolls
back when it is the acting candidate, and alerts in every case.

Memory remembers the last ``memory_keys`` keys (an insertion-ordered dict, with a deque of the
same keys in order so that evicting the oldest is O(1): ``next(iter(dict))`` would rescan every
slot already deleted at the front). Each key holds one packed int (first executor, its epoch,
when, and which colors have already been reported): 150 bytes a key with a 16-character key,
190 once evictions have churned the dict's table, so 7.5-9.5 MB at the default 50,000 (plus a
byte a character for longer keys; ``tests/guard/test_double_spend.py`` measures it). A key longer
than ``MAX_KEY_CHARS`` is remembered by its 128-bit BLAKE2b digest, so a child cannot grow memory
by sending long keys.

Memory forgets: once it has evicted a key (or when the daemon started over a Redis that already
held permits, ``fresh=False``), a key it does not know may still have been executed before.
Then :meth:`DoubleSpend.might_have_forgotten` says so, and the daemon reads the durable record,
the permit ``{ns}:permit:{key}`` (``color:epoch:token``), and hands it to
:meth:`DoubleSpend.from_permit_record`. When Redis holds no permit either (it went back in
time, the permit expired, the agent never asks for one), the decision log's execution records
are the last durable memory: an earlier execution found there goes to
:meth:`DoubleSpend.from_log_record`.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict, deque
from typing import Any, Final

from supervisor.config import Color, DoubleSpendTrigger
from supervisor.guard.evaluator import Context, Evaluator, Sender, TriggerState
from supervisor.guard.verdict import Action, Severity, Verdict

TRIGGER: Final = "double_spend"
# Keys longer than this are remembered by digest (a key is usually an order id, ~10-40 chars).
MAX_KEY_CHARS: Final = 128
# How much of a key goes into a message.
SHOWN_KEY_CHARS: Final = 80
# Channel permits granted and not yet reported executed, remembered with their epoch (bounded:
# an agent that never reports costs nothing).
MAX_PENDING_GRANTS: Final = 100_000


class DoubleSpendState(TriggerState):
    trigger: str
    enabled: bool
    threshold: None
    fired: int
    last_fired_ago_s: float | None
    last_key: str | None
    keys_remembered: int
    memory_keys: int
    evicted: int
    memory_complete: bool


# The packed record of one key, low bits first: 1 bit first executor (1 = green), 1 bit each
# "already reported against blue / green", 40 bits epoch + 1 (0: unknown), then the time of the
# first execution in milliseconds (any sign, unbounded: Python ints shift arithmetically).
_GREEN: Final = 1
_REPORTED: Final = {Color.BLUE: 2, Color.GREEN: 4}
_FLAG_BITS: Final = 3
_EPOCH_BITS: Final = 40
_EPOCH_MASK: Final = (1 << _EPOCH_BITS) - 1
_AT_SHIFT: Final = _FLAG_BITS + _EPOCH_BITS


def _pack(color: Color, epoch: int | None, now: float) -> int:
    e = 0 if epoch is None or epoch < 0 or epoch >= _EPOCH_MASK else epoch + 1
    return (int(now * 1000.0) << _AT_SHIFT) | (e << _FLAG_BITS) | (color is Color.GREEN)


def _unpack(code: int) -> tuple[Color, int | None, float]:
    """(first executor, its epoch or None, when in the clock of ``now``)."""
    e = (code >> _FLAG_BITS) & _EPOCH_MASK
    return (
        Color.GREEN if code & _GREEN else Color.BLUE,
        e - 1 if e else None,
        (code >> _AT_SHIFT) / 1000.0,
    )


def memory_key(key: str) -> str:
    """The form a key is remembered in: itself, or a digest when it is longer than
    ``MAX_KEY_CHARS`` (the prefix keeps a digest from passing for a short key by chance)."""
    if len(key) <= MAX_KEY_CHARS:
        return key
    return "\x00b2:" + hashlib.blake2b(key.encode(errors="replace"), digest_size=16).hexdigest()


def _show(key: str) -> str:
    return repr(key if len(key) <= SHOWN_KEY_CHARS else key[:SHOWN_KEY_CHARS] + "…")


def _epoch(epoch: int | None) -> str:
    return "an unknown epoch" if epoch is None else f"epoch {epoch}"


def parse_permit(record: str | bytes) -> tuple[str, int | None, str] | None:
    """``color:epoch:token`` as the permit script writes it, or None when it is not that.

    >>> parse_permit("blue:7:3f2a:1")
    ('blue', 7, '3f2a:1')
    """
    if isinstance(record, bytes):
        record = record.decode(errors="replace")
    parts = record.split(":", 2)
    if len(parts) != 3 or parts[0] not in ("blue", "green"):
        return None
    try:
        epoch: int | None = int(parts[1])
    except ValueError:
        epoch = None
    return parts[0], epoch, parts[2]


class DoubleSpend:
    """The double_spend evaluator.

    >>> from supervisor.config import DoubleSpendTrigger
    >>> guard = DoubleSpend(DoubleSpendTrigger())
    >>> guard.execution(Color.BLUE, "order-7", 7, now=100.0) is None
    True
    >>> verdict = guard.execution(Color.GREEN, "order-7", 8, now=112.5)
    >>> verdict.color, verdict.action
    (<Color.GREEN: 'green'>, <Action.ROLLBACK: 'rollback'>)
    >>> verdict.message
    "key 'order-7' executed twice: by blue at epoch 7, 12.5 s ago, and now by green at epoch 8"
    """

    def __init__(self, config: DoubleSpendTrigger, *, fresh: bool = True) -> None:
        """``fresh=False`` when keys may have been executed before this evaluator existed (the
        daemon restarted over a Redis that holds permits): memory is then incomplete from the
        start, and every key it does not know is worth a look at its permit."""
        self.config = config
        self._enabled = config.enabled
        self._cap = config.memory_keys
        self._seen: dict[str, int] = {}
        self._order: deque[str] = deque()
        self.evicted = 0
        self._complete = fresh
        # The key most recently remembered while memory was already incomplete: lets
        # might_have_forgotten answer the same right after execution() as right before it.
        self._unsure: str | None = None
        self.fired = dict.fromkeys(Color, 0)
        self.last_fired: dict[Color, float] = {}
        self.last_key: dict[Color, str] = {}

    # -- the hot path -----------------------------------------------------------------------

    def execution(self, color: Color, key: str, epoch: int | None, now: float) -> Verdict | None:
        """An ``execution`` event: ``color`` moved money under idempotency ``key`` while it held
        ``epoch`` (None when unknown). The second execution of a key is a verdict."""
        if not self._enabled:
            return None
        mkey = key if len(key) <= MAX_KEY_CHARS else memory_key(key)
        seen = self._seen
        code = seen.get(mkey)
        if code is None:
            # Not in memory: new, unless memory was already incomplete when it came.
            self._unsure = None if self._complete else mkey
            seen[mkey] = _pack(color, epoch, now)
            order = self._order
            order.append(mkey)
            if len(order) > self._cap:
                del seen[order.popleft()]
                self.evicted += 1
                self._complete = False
            return None
        self._unsure = None  # memory knows this key: nothing to look up
        flag = _REPORTED[color]
        if code & flag:
            return None  # this color was already reported for this key: one verdict is enough
        seen[mkey] = code | flag
        first, first_epoch, at = _unpack(code)
        return self._verdict(
            color,
            key,
            now,
            f"key {_show(key)} executed twice: by {first.value} at {_epoch(first_epoch)}, "
            f"{max(0.0, now - at):.1f} s ago, and now by {color.value} at {_epoch(epoch)}",
        )

    # -- when memory has forgotten --------------------------------------------------------------

    def might_have_forgotten(self, key: str) -> bool:
        """True when memory cannot vouch that ``key`` is new: it does not hold the key (or took
        it just now, in the ``execution`` call for this event) and it has forgotten keys before.
        Only then is the permit in Redis worth reading (see :meth:`from_permit_record`)."""
        if not self._enabled or self._complete:
            return False
        mkey = key if len(key) <= MAX_KEY_CHARS else memory_key(key)
        return mkey == self._unsure or mkey not in self._seen

    def from_permit_record(
        self,
        color: Color,
        key: str,
        record: str | bytes | None,
        epoch: int | None,
        *,
        now: float | None = None,
        token: str | None = None,
    ) -> Verdict | None:
        """Judge an execution by ``color`` at ``epoch`` against the value of ``{ns}:permit:{key}``.

        - no permit (None): nothing to compare (it expired, or the agent never asks): None;
        - a permit of the other color: the key was executed before, by that color: a verdict;
        - a permit of this color at an older epoch: executed before, by this color: a verdict;
        - this color at this epoch (or a newer one: ``epoch`` lags the permit when a flip came
          between the permit and this report): the execution's own permit, None; with ``token``
          given (when the agent reports the token it asked with), a different token is a verdict.
        """
        if not self._enabled or record is None:
            return None
        parsed = parse_permit(record)
        if parsed is None:
            return None
        owner, owner_epoch, owner_token = parsed
        if owner == color.value:
            if epoch is None or owner_epoch is None or owner_epoch >= epoch:
                if token is None or token == owner_token:
                    return None
                why = f"at {_epoch(owner_epoch)} with another token"
            else:
                why = f"at {_epoch(owner_epoch)}"
        else:
            why = f"at {_epoch(owner_epoch)}"
        code = self._seen.get(memory_key(key))
        flag = _REPORTED[color]
        if code is not None:
            if code & flag:
                return None
            self._seen[memory_key(key)] = code | flag
        return self._verdict(
            color,
            key,
            now,
            f"key {_show(key)} executed twice: its permit went to {owner} {why}, and now "
            f"{color.value} executed it at {_epoch(epoch)} (from the permit in Redis)",
        )

    def from_log_record(
        self,
        color: Color,
        key: str,
        first: str,
        first_epoch: int | None,
        epoch: int | None,
        *,
        now: float | None = None,
    ) -> Verdict | None:
        """Judge an execution by ``color`` at ``epoch`` of a key that the decision log says
        ``first`` executed before, at ``first_epoch``: two execution records of one key are a
        double spend, whoever made them (the log's lookup never finds the execution judged).

        >>> from supervisor.config import DoubleSpendTrigger
        >>> guard = DoubleSpend(DoubleSpendTrigger())
        >>> guard.execution(Color.GREEN, "order-7", 9, now=1.0) is None  # new to memory
        True
        >>> verdict = guard.from_log_record(Color.GREEN, "order-7", "blue", 7, 9)
        >>> verdict.color, "by blue at epoch 7 (in the decision log)" in verdict.message
        (<Color.GREEN: 'green'>, True)
        >>> guard.from_log_record(Color.GREEN, "order-7", "blue", 7, 9) is None  # reported once
        True
        """
        if not self._enabled:
            return None
        mkey = memory_key(key)
        code = self._seen.get(mkey)
        flag = _REPORTED[color]
        if code is not None:
            if code & flag:
                return None  # already reported against this color
            self._seen[mkey] = code | flag
        return self._verdict(
            color,
            key,
            now,
            f"key {_show(key)} executed twice: by {first} at {_epoch(first_epoch)} (in the "
            f"decision log), and now by {color.value} at {_epoch(epoch)}",
        )

    # -- verdicts and reporting ---------------------------------------------------------------

    def _verdict(self, color: Color, key: str, now: float | None, message: str) -> Verdict:
        self.fired[color] += 1
        if now is not None:
            self.last_fired[color] = now
        self.last_key[color] = key[:SHOWN_KEY_CHARS]
        return Verdict(
            trigger=TRIGGER,
            severity=Severity.CRITICAL,
            action=Action.ROLLBACK,
            color=color,
            message=message,
            value=2.0,  # executions of the key
            threshold=1.0,  # executions a key may have
        )

    def __len__(self) -> int:
        return len(self._seen)

    def state(self, color: Color, now: float | None = None) -> DoubleSpendState:
        """What ``agentsup triggers`` shows for ``color`` (times on the clock of ``now``)."""
        last = self.last_fired.get(color)
        return {
            "trigger": TRIGGER,
            "enabled": self._enabled,
            "state": "fired" if self.fired[color] else "ok",
            "value": self.fired[color],
            "threshold": None,
            "fired": self.fired[color],
            "last_fired": last,
            "last_fired_ago_s": None if last is None or now is None else round(now - last, 3),
            "last_key": self.last_key.get(color),
            "keys_remembered": len(self._seen),
            "memory_keys": self._cap,
            "evicted": self.evicted,
            "memory_complete": self._complete,
        }


class DoubleSpendEvaluator(Evaluator):
    """The double_spend trigger on the pipeline: every ``execution`` judged by
    :class:`DoubleSpend`, at the epoch its permit was granted at when the daemon granted it
    on the channel (:meth:`granted`), else at the current epoch; a key memory may have
    forgotten is handed to ``lookup`` (its permit in Redis is the durable record)."""

    name = TRIGGER
    severity = Severity.CRITICAL
    listens = ("execution",)

    def __init__(self, ctx: Context) -> None:
        config = ctx.triggers.double_spend
        # Not fresh: keys executed before this daemon started are only in Redis's permits.
        self.judge = DoubleSpend(config, fresh=False)
        self.enabled = config.enabled
        self.threshold: float | None = None
        self._roles = ctx.roles
        self._lookup = ctx.lookup
        self._grants: OrderedDict[str, tuple[Color, int]] = OrderedDict()

    def granted(self, color: Color, key: str, epoch: int) -> None:
        """The daemon granted ``key`` to ``color`` at ``epoch`` (a channel permit)."""
        self._grants[key] = (color, epoch)
        if len(self._grants) > MAX_PENDING_GRANTS:
            self._grants.popitem(last=False)

    def on_event(self, child: Sender, msg: dict[str, Any]) -> Verdict | None:
        color = child.color
        key = msg["key"]
        # Judged at the epoch its permit was granted at: a flip between the permit and this
        # report must not make one execution look like two.
        granted = self._grants.pop(key, None)
        epoch = granted[1] if granted and granted[0] is color else self._roles.state.epoch
        verdict = self.judge.execution(color, key, epoch, time.monotonic())
        if verdict is None and self.judge.might_have_forgotten(key):
            self._lookup(color, key, epoch)
        return verdict

    def state(self, color: Color, now: float) -> DoubleSpendState:
        return self.judge.state(color, now)
