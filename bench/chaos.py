"""The chaos run: the fence tried as an adversary would, against the real thing.

    python bench/chaos.py --seed 1 --schedules 1000   # the README's figure, in the background
    python bench/chaos.py --quick                     # CI: 13 short schedules, every fault kind
    python bench/chaos.py --seed 1 --start 417 --schedules 1   # schedule 417 again, fresh world
    python bench/chaos.py --only redis_lost_mid_restore,switch --schedules 60   # one fault kind

The world, built once and reused by every schedule: a real redis-server on a Unix socket in a
temporary directory (append-only or not, chosen per run; no save points, ``SAVE`` on demand
for the dumps a later fault restores), a real daemon (``python -m supervisor run -c FILE``,
exactly as ``agentsup run`` runs; lease TTL 3 s, reconciled every 0.2 s) and its two children,
bench/chaos_agent.py, SDK agents that ask for permits all the time on one shared sequence of
keys and write every answer and every role push they hear to a log of their own.

A schedule is a few faults in a row with short random pauses, the agents asking all along:

- ``kill9_daemon``: kill -9 at any moment, also a few ms after a ``switch`` or ``rollback`` was
  sent (mid-flip) or while it is starting again; while it is down Redis may be restored or
  emptied, the operator may ``SET`` the active key or ``INCRBY`` the epoch; then it starts
  again over the same state_dir.
- ``sigstop_daemon`` for 0.2-5 s (past the lease TTL too), Redis changed meanwhile or not.
- ``sigstop_child`` for 0.2-5 s, ``kill9_child``.
- ``redis_restart_empty``, ``redis_restore_dump`` (killed, then started from a dump taken with
  ``SAVE`` at a random earlier point, maybe many schedules ago), ``redis_down`` for 0.5-4 s
  (the daemon may be killed and started again meanwhile), ``redis_lost_mid_restore`` (Redis
  goes back in time, and again while the daemon is putting its journal back: the daemon is
  stopped a few ms after it logs ``redis_regressed``, Redis restarted, the daemon continued).
- ``second_daemon``: another daemon on the same namespace (another state_dir and socket),
  once the lease in Redis names the running daemon or right after Redis lost it (restarted
  empty or from a dump): it must refuse, exit 1, and start no child.
- ``operator_race``: a raw ``SET agent:active_version COLOR`` racing a ``switch`` and a
  ``rollback``; ``incrby_epoch``; ``garbage_lines`` from a child; ``switch`` (plain flips).

After each schedule the world must recover by itself (Redis up, lease held, a color in charge,
both children speaking, and a new permit granted), then the checker reads the evidence: the
agents' logs, the daemon's permit journal, its logs, and the flips stream in Redis. It counts
violations of DESIGN.md's invariants:

1. one color per epoch: no epoch has grants to both colors; and grants respect real time: no
   grant asked after another grant was answered carries a lower epoch.
2. the epoch only rises: within every child process; from one daemon start to the next (every
   epoch a new daemon tells is above all its predecessors told); in the flips stream (as far
   as it goes: a Redis restored from a dump lost its tail, legitimately).
3. no idempotency key granted twice, across colors, processes, daemons and schedules, in the
   agents' answers and in the daemon's journal; every ``ok`` an agent heard is journaled.
5. recovery: after every schedule the deployment acts again by itself.
6. the daemon never dies or logs an internal failure unless a fault killed it; a clean stop
   exits 0.
8. a second daemon refuses (exit 1) without starting a child.
And the issue's stall rule: a pause of the daemon itself never rolls back a candidate for
silence.

Reproducible: schedule ``i`` of seed ``s`` draws every choice from ``Random(s, i)`` (timings
are the machine's, and the world a schedule meets is what the ones before it left). The code
under test is copied at start, so that every daemon of a long run runs the same version.
``--permits direct`` has the agents call the permit script themselves (``child_access =
"permit"``) instead of asking through the daemon.

Every process is started with a parent-death signal and stopped on every way out; the
temporary directory goes too (``--keep`` keeps it, with every violation in violations.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import ctypes
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.control.client import request  # noqa: E402
from supervisor.errors import ControlUnreachable, Refused  # noqa: E402

PY = sys.executable
AGENT = ROOT / "bench" / "chaos_agent.py"
REDIS_SERVER = shutil.which("redis-server")
NAMESPACE = "chaos"
ACTIVE_KEY = "agent:active_version"
COLORS = ("blue", "green")
LEASE_TTL_S = 3.0
SLOT_MS = 25
START_TIMEOUT_S = 30.0  # a daemon start, a recovery: far above normal, far below "hung"
LIVENESS_TIMEOUT_S = 20.0
SCHEDULE_TIMEOUT_S = 240.0
SECOND_DAEMON_TIMEOUT_S = 30.0
KEEP_SNAPSHOTS = 6

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_us() -> None:
    # Between fork and exec: if the chaos run dies, so does this process (and the daemon's
    # children die with the daemon).
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _loguniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


class HarnessError(RuntimeError):
    """The world could not be put together (not a finding about the supervisor)."""


# ------------------------------------------------------------------------------------- Redis


class RedisProc:
    """One redis-server on a Unix socket; killed, emptied, restored and started again."""

    def __init__(self, directory: Path, appendonly: bool) -> None:
        directory.mkdir()
        self.dir = directory
        self.socket = directory / "redis.sock"
        self.appendonly = appendonly
        self.proc: asyncio.subprocess.Process | None = None
        self.snapshots: list[Path] = []
        self._taken = 0

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self, timeout: float = 2.0) -> Redis:
        return Redis(
            unix_socket_path=str(self.socket),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, *, appendonly: bool | None = None) -> None:
        aof = self.appendonly if appendonly is None else appendonly
        assert REDIS_SERVER is not None
        self.proc = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            *("--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"),
            *("--dir", str(self.dir), "--save", "", "--daemonize", "no"),
            *("--appendonly", "yes" if aof else "no", "--appendfsync", "everysec"),
            *("--logfile", str(self.dir / "redis.log")),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_us,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        async with self.client(0.5) as c:
            while True:
                with contextlib.suppress(RedisError, OSError):
                    if await c.ping():  # LOADING while a dump is read: an error until done
                        break
                if self.proc.returncode is not None or time.monotonic() > deadline:
                    raise HarnessError(f"redis-server did not start (see {self.dir}/redis.log)")
                await asyncio.sleep(0.01)
            if self.appendonly and not aof:
                await c.config_set("appendonly", "yes")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    async def shutdown(self) -> None:
        """A clean stop that keeps the data (the AOF, or a dump written on the way out)."""
        if not self.running:
            return
        assert self.proc is not None
        with contextlib.suppress(RedisError, OSError):
            async with self.client() as c:
                await c.shutdown(save=not self.appendonly, nosave=self.appendonly)
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def wipe(self, snapshot: Path | None = None) -> None:
        """Forget everything on disk; then put ``snapshot`` in place as the dump to load."""
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "dump.rdb").unlink()
        shutil.rmtree(self.dir / "appendonlydir", ignore_errors=True)
        if snapshot is not None:
            shutil.copyfile(snapshot, self.dir / "dump.rdb")

    async def snapshot(self) -> Path:
        """``SAVE`` now and keep the dump aside, for a later restore."""
        async with self.client(10.0) as c:
            await c.save()
        self._taken += 1
        kept = self.dir / f"snap-{self._taken}.rdb"
        os.replace(self.dir / "dump.rdb", kept)
        self.snapshots.append(kept)
        if len(self.snapshots) > KEEP_SNAPSHOTS:
            self.snapshots.pop(random.randrange(len(self.snapshots) - 1)).unlink()
        return kept


# ------------------------------------------------------------------------------------ daemon


class DaemonProc:
    """One ``python -m supervisor run -c FILE`` process, its log in a file of its own."""

    def __init__(self, directory: Path, n: int, config: Path, second: bool = False) -> None:
        self.n = n
        self.config = config
        self.second = second
        self.log_path = directory / f"daemon-{n}.log"
        self.err_path = directory / f"daemon-{n}.err"
        self.proc: asyncio.subprocess.Process | None = None
        self.expected: int | None = None  # the exit code a fault caused; None: must not exit
        self.ready = False
        self.spawned = 0
        self.checked_exit = False
        self._offset = 0

    @property
    def name(self) -> str:
        """What its children write as DAEMON in their evidence."""
        return f"d{self.n}"

    async def start(self, env: dict[str, str], code: Path) -> None:
        env = {**env, "CHAOS_DAEMON": self.name}  # passed on to its children
        with self.log_path.open("ab") as out, self.err_path.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *(PY, "-m", "supervisor", "run", "-c", str(self.config)),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=code,  # python -m finds the package here first
                env=env,
                preexec_fn=_die_with_us,
                start_new_session=True,  # a Ctrl-C of the run is ours to pass on, not theirs
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def new_records(self) -> list[dict[str, Any]]:
        """The log lines written since the last call (whole lines only)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        records = []
        for line in data[:end].splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = {"event": "_unparsed", "line": line.decode(errors="replace")[:500]}
            if isinstance(record, dict):
                records.append(record)
        return records

    def stderr_tail(self, n: int = 1500) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""


# ----------------------------------------------------------------------------------- checker


@dataclass
class Grant:
    t_ask: int
    t_ans: int
    epoch: int
    color: str
    key: str
    pid: str  # the agent process: PID.START_NS (pids are reused in a long run)


@dataclass
class Checker:
    """Reads the evidence and counts violations; see the module docstring for the rules."""

    agents_dir: Path
    journal_path: Path
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    reasons: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    grants: list[Grant] = field(default_factory=list)
    ok_keys: dict[str, Grant] = field(default_factory=dict)
    epoch_color: dict[int, Grant] = field(default_factory=dict)
    last_told: dict[str, int] = field(default_factory=dict)  # agent process -> epoch
    told_range: dict[str, list[int]] = field(default_factory=dict)  # daemon -> [min, max]
    daemon_order: list[str] = field(default_factory=list)  # primary daemons, by start
    journal_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    journal_epoch_color: dict[int, str] = field(default_factory=dict)
    unjournaled: list[Grant] = field(default_factory=list)  # oks not yet found in the journal
    schedule_starts: list[int] = field(default_factory=list)
    schedule_ids: list[int] = field(default_factory=list)
    last_grant_ns: int = 0
    _offsets: dict[Path, int] = field(default_factory=dict)
    _journal_offset: int = 0

    # attribution -----------------------------------------------------------------------
    def begin(self, schedule: int, t_ns: int) -> None:
        self.schedule_starts.append(t_ns)
        self.schedule_ids.append(schedule)

    def schedule_at(self, t_ns: int | None) -> int | None:
        if t_ns is None or not self.schedule_starts:
            return self.schedule_ids[-1] if self.schedule_ids else None
        i = bisect.bisect_right(self.schedule_starts, t_ns) - 1
        return self.schedule_ids[max(i, 0)]

    def violation(self, invariant: str, t_ns: int | None, text: str) -> None:
        self.violations[invariant].append(f"schedule {self.schedule_at(t_ns)}: {text}")

    # the agents' logs --------------------------------------------------------------------
    def ingest_agents(self) -> None:
        for path in sorted(self.agents_dir.glob("*.log")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._offsets[path] = offset + end
            for line in data[:end].decode(errors="replace").splitlines():
                self._agent_line(line)

    def _agent_line(self, line: str) -> None:
        words = line.split()
        if len(words) != 9:
            self.events["torn_line"] += 1
            return
        t_ask, t, pid, daemon = int(words[0]), int(words[1]), words[2], words[3]
        color, event, key, reason, epoch = words[4], words[5], words[6], words[7], int(words[8])
        self.events[f"agent_{event}"] += 1
        if event == "role" and epoch >= 0:
            last = self.last_told.get(pid, -1)
            if epoch < last:
                self.violation(
                    "2 epoch only rises (within a child)",
                    t,
                    f"{color} pid {pid} was told epoch {last}, then {epoch} ({reason})",
                )
            self.last_told[pid] = max(last, epoch)
            span = self.told_range.setdefault(daemon, [epoch, epoch])
            span[0], span[1] = min(span[0], epoch), max(span[1], epoch)
        elif event == "permit":
            self.reasons[reason] += 1
            if reason == "ok":
                self._grant(Grant(t_ask, t, epoch, color, key, pid))

    def _grant(self, g: Grant) -> None:
        self.grants.append(g)
        self.unjournaled.append(g)
        self.last_grant_ns = max(self.last_grant_ns, g.t_ans)
        first = self.ok_keys.get(g.key)
        if first is not None:
            self.violation(
                "3 no key granted twice",
                g.t_ask,
                f"{g.key}: ok to {first.color} pid {first.pid} at epoch {first.epoch}, "
                f"then ok to {g.color} pid {g.pid} at epoch {g.epoch}",
            )
        else:
            self.ok_keys[g.key] = g
        owner = self.epoch_color.setdefault(g.epoch, g)
        if owner.color != g.color:
            self.violation(
                "1 one color per epoch",
                g.t_ask,
                f"epoch {g.epoch}: {owner.key} granted to {owner.color} pid {owner.pid}, "
                f"{g.key} to {g.color} pid {g.pid}",
            )

    # the daemon's journal ----------------------------------------------------------------
    def ingest_journal(self) -> None:
        try:
            with self.journal_path.open("rb") as f:
                f.seek(self._journal_offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1
        self._journal_offset += end
        for line in data[:end].splitlines():
            try:
                d = orjson.loads(line)
                key, color, epoch = str(d["k"]), str(d["c"]), int(d["e"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                self.events["journal_torn_line"] += 1
                continue
            first = self.journal_keys.get(key)
            if first is not None and _same_grant(first, d):
                self.events["journal_rerecorded"] += 1  # the same grant written down again
                continue
            self.events["journal_grants"] += 1
            if first is not None:
                self.violation(
                    "3 no key granted twice",
                    None,
                    f"journal: {key} granted to {first['c']} at epoch {first['e']} (seq "
                    f"{first['s']}), then to {color} at epoch {epoch} (seq {d.get('s')})",
                )
            else:
                self.journal_keys[key] = d
            owner = self.journal_epoch_color.setdefault(epoch, color)
            if owner != color:
                self.violation(
                    "1 one color per epoch",
                    None,
                    f"journal: epoch {epoch} granted to {owner} and to {color} ({key})",
                )
        still = []
        for g in self.unjournaled:
            d = self.journal_keys.get(g.key)
            if d is None:
                still.append(g)
            elif (str(d["c"]), int(d["e"])) != (g.color, g.epoch):
                self.violation(
                    "3 no key granted twice",
                    g.t_ask,
                    f"{g.key}: ok to {g.color} at epoch {g.epoch}, journal says {d['c']} at "
                    f"epoch {d['e']}",
                )
        self.unjournaled = still

    def check_unjournaled(self) -> None:
        """After a full read of both: an ok the agent heard must be in the journal (it is
        written before the answer is sent)."""
        for g in self.unjournaled:
            self.violation(
                "3 every ok is journaled",
                g.t_ask,
                f"{g.key}: ok to {g.color} pid {g.pid} at epoch {g.epoch}, not in the journal",
            )
        self.unjournaled = []

    # the flips stream --------------------------------------------------------------------
    def check_flips(self, entries: list[tuple[str, dict[str, str]]], t_ns: int) -> None:
        last: tuple[str, int] | None = None
        for entry_id, fields in entries:
            try:
                epoch = int(fields["epoch"])
            except (KeyError, ValueError):
                self.violation("2 epoch only rises (flips stream)", t_ns, f"bad entry {fields}")
                continue
            if last is not None and epoch <= last[1]:
                self.violation(
                    "2 epoch only rises (flips stream)",
                    t_ns,
                    f"{last[0]} epoch {last[1]}, then {entry_id} epoch {epoch} ({fields})",
                )
            last = (entry_id, epoch)
        self.events["flips_in_stream"] = len(entries)

    # once everything is read ---------------------------------------------------------------
    def final(self) -> None:
        self._check_grant_order()
        self._check_daemon_epochs()

    def _check_grant_order(self) -> None:
        """A grant answered before another was asked bounds that one's epoch from below."""
        by_answer = sorted(self.grants, key=lambda g: g.t_ans)
        best: Grant | None = None
        i = 0
        for g in sorted(self.grants, key=lambda g: g.t_ask):
            while i < len(by_answer) and by_answer[i].t_ans < g.t_ask:
                if best is None or by_answer[i].epoch > best.epoch:
                    best = by_answer[i]
                i += 1
            if best is not None and best.epoch > g.epoch:
                self.violation(
                    "1 one color per epoch (grants in real-time order)",
                    g.t_ask,
                    f"{best.key} granted to {best.color} at epoch {best.epoch}; asked after "
                    f"that, {g.key} granted to {g.color} pid {g.pid} at epoch {g.epoch}",
                )

    def _check_daemon_epochs(self) -> None:
        """Every epoch a daemon tells its children is above all its predecessors told."""
        highest: tuple[int, str] | None = None  # (epoch, daemon)
        for daemon in self.daemon_order:
            span = self.told_range.get(daemon)
            if span is None:
                continue
            if highest is not None and span[0] <= highest[0]:
                self.violation(
                    "2 epoch only rises (across daemon restarts)",
                    None,
                    f"daemon {highest[1]}'s children were told epoch {highest[0]}; a later "
                    f"daemon's ({daemon}) were told {span[0]}",
                )
            if highest is None or span[1] > highest[0]:
                highest = (span[1], daemon)


def _same_grant(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two journal lines of one grant (the daemon may write a grant down again, e.g. when it
    imports what Redis holds): same key, color, epoch and token."""
    return all(str(a.get(f)) == str(b.get(f)) for f in ("k", "c", "e", "t"))


# ------------------------------------------------------------------------------------- world


@dataclass(frozen=True)
class Settings:
    seed: int
    schedules: int
    start: int
    quick: bool
    appendonly: bool
    max_s: float
    keep: bool
    verbose: bool
    permits: str = "channel"  # or "direct": the SDK calls the permit script itself
    only: tuple[str, ...] = ()  # fault kinds to draw from (all when empty)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


class World:
    """Redis, the daemon, its children and the evidence, kept across schedules."""

    def __init__(self, settings: Settings) -> None:
        if REDIS_SERVER is None:
            raise HarnessError("redis-server is not on PATH (apt-get install redis-server)")
        self.settings = settings
        self.scale = 0.4 if settings.quick else 1.0  # quick runs pause for shorter
        self.dir = Path(tempfile.mkdtemp(prefix="as-chaos-", dir="/tmp"))
        self.agents_dir = self.dir / "agents"
        self.agents_dir.mkdir()
        # The code under test, frozen for the run: the daemons it starts again and again must
        # all run the same version, whatever is edited in the working tree meanwhile.
        self.code = self.dir / "code"
        shutil.copytree(
            ROOT / "supervisor",
            self.code / "supervisor",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        shutil.copy(AGENT, self.code / AGENT.name)
        digest = hashlib.sha256()
        for path in sorted(self.code.rglob("*.py")):
            digest.update(path.read_bytes())
        self.code_digest = digest.hexdigest()[:12]
        self.redis = RedisProc(self.dir / "redis", settings.appendonly)
        self.t0_ns = time.monotonic_ns()
        self.config = self._write_config("primary")
        self.config2 = self._write_config("second")
        self.env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(self.code)})
        self.client = self.redis.client()
        self.daemon: DaemonProc | None = None
        self.daemons: list[DaemonProc] = []
        self.checker = Checker(self.agents_dir, self.dir / "primary" / "state" / "permits.journal")
        self.faults: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()
        self.stopped: set[int] = set()  # pids we SIGSTOPped and have not continued yet
        self.child_disturbed = 0.0  # wall time a child was last stopped or killed
        self.stall_windows: list[tuple[float, float]] = []  # wall times after a daemon pause

    def _write_config(self, name: str) -> Path:
        home = self.dir / name
        home.mkdir()
        agent_env = {
            "CHAOS_DIR": str(self.agents_dir),
            "CHAOS_T0_NS": str(self.t0_ns),
            "CHAOS_SLOT_MS": str(SLOT_MS),
            "CHAOS_INTERVAL_MS": "5",
            "PYTHONPATH": str(self.code),
        }
        tables: dict[str, dict[str, Any]] = {
            "supervisor": {
                "name": f"chaos-{name}",
                "namespace": NAMESPACE,
                "state_dir": str(home / "state"),
                "control_socket": str(home / "control.sock"),
                "lease_ttl_s": LEASE_TTL_S,
                "shutdown_timeout_s": 30.0,
            },
            "redis": {
                "url": self.redis.url,
                "active_key": ACTIVE_KEY,
                "reconcile_interval_s": 0.2,
                "health_interval_s": 0.1,
                "socket_timeout_s": 0.5,
                "child_access": "permit" if self.settings.permits == "direct" else "read",
            },
            "metrics": {"listen": ""},
            "rollout": {"probation_s": 5.0},
            "triggers.heartbeat": {"timeout_s": 3.0},
        }
        for color, version in (("blue", "1.0.0"), ("green", "2.0.0")):
            tables[f"agents.{color}"] = {
                "command": [PY, str(self.code / AGENT.name)],
                "version": version,
                "env": agent_env,
                "stop_timeout_s": 5.0,
            }
            tables[f"agents.{color}.restart"] = {
                "max_restarts": 100_000,
                "period_s": 60.0,
                "backoff_initial_s": 0.1,
                "backoff_max_s": 1.0,
            }
        lines = []
        for table, values in tables.items():
            lines.append(f"[{table}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
            lines.append("")
        path = home / "agentsup.toml"
        path.write_text("\n".join(lines))
        return path

    # the daemon ------------------------------------------------------------------------
    async def start_daemon(self) -> DaemonProc:
        d = DaemonProc(self.dir, len(self.daemons), self.config)
        await d.start(self.env, self.code)
        self.daemons.append(d)
        self.daemon = d
        self.checker.daemon_order.append(d.name)
        self.actions["daemon_start"] += 1
        return d

    def drain(self, d: DaemonProc) -> list[dict[str, Any]]:
        """Read what ``d`` logged since last time, judge it, return it."""
        records = d.new_records()
        for r in records:
            event = r.get("event")
            if event == "ready":
                d.ready = True
            elif event == "child_spawned":
                d.spawned += 1
            elif event == "child_output" and "Traceback" in str(r.get("line", "")):
                self.actions["agent_traceback"] += 1
            elif event == "flip":
                self.actions[f"flip:{str(r.get('reason', '?')).split(':')[0]}"] += 1
                if r.get("trigger") == "heartbeat":
                    self._judge_heartbeat_rollback(r)
            elif event == "loop_stalled":
                self.actions["loop_stalled"] += 1
            if event in ("internal_task_failed", "task_failed") or "exception" in r:
                self.checker.violation(
                    "6 the daemon never fails inside",
                    None,
                    f"daemon {d.pid}: {orjson.dumps(r).decode()[:1500]}",
                )
        return records

    def _judge_heartbeat_rollback(self, record: dict[str, Any]) -> None:
        try:
            at = datetime.fromisoformat(str(record["timestamp"])).timestamp()
        except (KeyError, ValueError):
            return
        for start, end in self.stall_windows:
            if start <= at <= end and self.child_disturbed < start - 10.0:
                self.checker.violation(
                    "stall: a daemon pause rolls back no one",
                    None,
                    f"a heartbeat rollback {at - start:.2f} s after the daemon was continued, "
                    f"no child stopped: {orjson.dumps(record).decode()[:800]}",
                )

    def check_exit(self, d: DaemonProc) -> None:
        """A daemon that exited with another code than the fault that stopped it caused."""
        if d.proc is None or d.proc.returncode is None or d.checked_exit:
            return
        d.checked_exit = True
        self.drain(d)
        if d.proc.returncode != d.expected:
            self.checker.violation(
                "6 the daemon never dies unless killed",
                None,
                f"daemon {d.pid} exited with {d.proc.returncode} (expected "
                f"{'to keep running' if d.expected is None else d.expected}); stderr: "
                f"{d.stderr_tail()!r}",
            )

    async def wait_ready(self, d: DaemonProc, timeout: float = START_TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.drain(d)
            if d.ready:
                return True
            if not d.alive or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)

    async def ensure_daemon(self) -> DaemonProc:
        """The daemon, running and READY; started again when it is not running (a death no
        fault caused is counted by check_exit)."""
        for _ in range(3):
            d = self.daemon
            if d is not None and not d.alive:
                self.check_exit(d)
            if d is None or not d.alive:
                d = await self.start_daemon()
            if await self.wait_ready(d):
                return d
            self.check_exit(d)
            if d.alive:
                self.checker.violation(
                    "5 recovers by itself",
                    None,
                    f"daemon {d.pid} not READY within {START_TIMEOUT_S} s",
                )
                await self.kill_daemon(d)
        raise HarnessError("the daemon could not be started three times in a row")

    async def kill_daemon(self, d: DaemonProc | None = None) -> None:
        d = d or self.daemon
        if d is None or not d.alive:
            return
        d.expected = -signal.SIGKILL
        _signal(d.pid, signal.SIGKILL)
        assert d.proc is not None
        await d.proc.wait()
        self.stopped.discard(d.pid)
        self.check_exit(d)

    async def control(
        self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10
    ) -> str:
        """One control command, as the CLI sends it; its outcome, counted."""
        socket_path = self.config.parent / "control.sock"
        try:
            await asyncio.to_thread(request, socket_path, cmd, args, timeout)
            outcome = "ok"
        except Refused as exc:
            outcome = f"refused:{exc.code}"
        except ControlUnreachable:
            outcome = "unreachable"
        self.actions[f"{cmd} {outcome}"] += 1
        return outcome

    async def status(self) -> dict[str, Any] | None:
        try:
            socket_path = self.config.parent / "control.sock"
            st: dict[str, Any] = await asyncio.to_thread(request, socket_path, "status", None, 5)
        except (Refused, ControlUnreachable):
            return None
        return st

    async def child_pid(self, color: str) -> int | None:
        st = await self.status()
        if st is None:
            return None
        pid = st["children"][color]["pid"]
        return pid if isinstance(pid, int) else None

    # Redis -------------------------------------------------------------------------------
    async def redis_do(self, what: str, fn: Callable[[Redis], Awaitable[Any]]) -> Any:
        try:
            result = await fn(self.client)
        except (RedisError, OSError) as exc:
            self.actions[f"{what} failed"] += 1
            return exc
        self.actions[what] += 1
        return result

    async def snapshot(self) -> None:
        if self.redis.running:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.snapshot()
                self.actions["dump_taken"] += 1

    # recovery and evidence -----------------------------------------------------------------
    async def settle(self) -> None:
        """Wait for the deployment to act again by itself; a violation when it does not."""
        for pid in list(self.stopped):
            _signal(pid, signal.SIGCONT)
        self.stopped.clear()
        if not self.redis.running:
            await self.redis.start()
        d = await self.ensure_daemon()
        deadline = time.monotonic() + START_TIMEOUT_S
        st: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            st = await self.status()
            if st is not None and _healthy(st):
                break
            if not d.alive:
                self.check_exit(d)
                d = await self.ensure_daemon()
            await asyncio.sleep(0.05)
        else:
            self.checker.violation(
                "5 recovers by itself",
                None,
                f"not healthy within {START_TIMEOUT_S} s: {_brief_status(st)}",
            )
            await self.kill_daemon(d)
            await self.ensure_daemon()
            return
        settled = time.monotonic_ns()
        deadline = time.monotonic() + LIVENESS_TIMEOUT_S
        while self.checker.last_grant_ns < settled:
            if time.monotonic() > deadline:
                self.checker.violation(
                    "5 recovers by itself",
                    settled,
                    f"healthy but no permit granted within {LIVENESS_TIMEOUT_S} s: "
                    f"{_brief_status(await self.status())}",
                )
                break
            await asyncio.sleep(0.05)
            self.checker.ingest_agents()

    async def collect(self) -> None:
        """Read all the evidence there is now."""
        for d in self.daemons:
            if not d.checked_exit:
                self.drain(d)
        self.checker.ingest_agents()
        self.checker.ingest_journal()
        entries = await self.redis_do("xrange", lambda c: c.xrange(f"{NAMESPACE}:flips"))
        if isinstance(entries, list):
            self.checker.check_flips(entries, time.monotonic_ns())

    async def close(self) -> None:
        """Stop everything: the daemon cleanly (it must exit 0), then Redis."""
        for pid in list(self.stopped):
            _signal(pid, signal.SIGCONT)
        d = self.daemon
        try:
            if d is not None and d.alive and self.redis.running:
                d.expected = 0
                _signal(d.pid, signal.SIGTERM)
                assert d.proc is not None
                try:
                    await asyncio.wait_for(d.proc.wait(), 60)
                except TimeoutError:
                    d.expected = None  # so that check_exit reports it
                    d.proc.kill()
                    await d.proc.wait()
                self.check_exit(d)
                await self.collect()
                self.checker.check_unjournaled()
        finally:
            for each in self.daemons:
                if each.alive:
                    assert each.proc is not None
                    each.proc.kill()
                    await each.proc.wait()
            with contextlib.suppress(Exception):
                await self.client.aclose()
            await self.redis.kill()
            if not self.settings.keep:
                shutil.rmtree(self.dir, ignore_errors=True)


def _healthy(st: dict[str, Any]) -> bool:
    return (
        st.get("redis") == "up"
        and st.get("lease") == "held"
        and st.get("active") in COLORS
        and all(c["state"] == "RUNNING" and c["protocol"] for c in st["children"].values())
    )


def _brief_status(st: dict[str, Any] | None) -> str:
    if st is None:
        return "no status (control socket unreachable)"
    children = {c: (v["state"], v["protocol"], v["told_epoch"]) for c, v in st["children"].items()}
    keys = ("active", "epoch", "stable", "candidate", "redis", "lease", "rejected")
    return str({**{k: st.get(k) for k in keys}, "children": children})


# ------------------------------------------------------------------------------------ faults


# Each fault counts itself in ``w.faults`` when it runs (nested in another fault too); one the
# world did not let run (no child to stop) is counted among the actions as skipped.
Fault = Callable[[World, random.Random], Awaitable[None]]


async def kill9_daemon(w: World, rng: random.Random) -> None:
    d = await w.ensure_daemon()
    variant = rng.choice(["plain", "mid_switch", "mid_rollback", "mid_start"])
    w.faults["kill9_daemon"] += 1
    w.actions[f"kill9_daemon {variant}"] += 1
    pending = None
    if variant == "mid_switch":
        st = await w.status()
        other = "green" if st is not None and st["active"] == "blue" else "blue"
        pending = asyncio.create_task(w.control("switch", {"color": other}))
    elif variant == "mid_rollback":
        pending = asyncio.create_task(w.control("rollback", {"reason": "chaos"}))
    if pending is not None:
        await asyncio.sleep(rng.uniform(0, 0.02))
    await w.kill_daemon(d)
    if pending is not None:
        await pending
    # While it is down, the world moves on without it.
    draw = rng.random()
    if draw < 0.15:
        await redis_restore_dump(w, rng)
    elif draw < 0.25:
        await redis_restart_empty(w, rng)
    if rng.random() < 0.2:
        await operator_set(w, rng.choice(COLORS))
    if rng.random() < 0.1:
        await incrby_epoch(w, rng)
    await asyncio.sleep(rng.uniform(0, 0.3) * w.scale)
    d = await w.start_daemon()
    if variant == "mid_start":
        await asyncio.sleep(rng.uniform(0.05, 1.5))
        await w.kill_daemon(d)
        await w.start_daemon()


async def sigstop_daemon(w: World, rng: random.Random) -> None:
    d = await w.ensure_daemon()
    w.faults["sigstop_daemon"] += 1
    total = _loguniform(rng, 0.2, 5.0 if not w.settings.quick else 2.0)
    _signal(d.pid, signal.SIGSTOP)
    w.stopped.add(d.pid)
    try:
        await asyncio.sleep(total * rng.uniform(0.1, 0.6))
        if rng.random() < 0.35:  # the case: an operator's SET while nobody adopts it
            await operator_set(w, rng.choice(COLORS))
        if rng.random() < 0.15:
            await incrby_epoch(w, rng)
        draw = rng.random()
        if draw < 0.1:
            await redis_restore_dump(w, rng)
        elif draw < 0.15:
            await redis_restart_empty(w, rng)
        await asyncio.sleep(total * rng.uniform(0.1, 0.6))
    finally:
        _signal(d.pid, signal.SIGCONT)
        w.stopped.discard(d.pid)
    now = time.time()
    w.stall_windows.append((now, now + 3.0))


async def sigstop_child(w: World, rng: random.Random) -> None:
    await w.ensure_daemon()
    pid = await w.child_pid(rng.choice(COLORS))
    if pid is None:
        w.actions["sigstop_child skipped"] += 1
        return
    w.faults["sigstop_child"] += 1
    w.child_disturbed = time.time()
    _signal(pid, signal.SIGSTOP)
    w.stopped.add(pid)
    try:
        await asyncio.sleep(_loguniform(rng, 0.2, 5.0 if not w.settings.quick else 2.0))
    finally:
        _signal(pid, signal.SIGCONT)
        w.stopped.discard(pid)
        w.child_disturbed = time.time()


async def kill9_child(w: World, rng: random.Random) -> None:
    await w.ensure_daemon()
    pid = await w.child_pid(rng.choice(COLORS))
    if pid is None or not _signal(pid, signal.SIGKILL):
        w.actions["kill9_child skipped"] += 1
        return
    w.faults["kill9_child"] += 1
    w.child_disturbed = time.time()


async def redis_restart_empty(w: World, rng: random.Random) -> None:
    w.faults["redis_restart_empty"] += 1
    await w.redis.kill()
    w.redis.wipe()
    await asyncio.sleep(rng.uniform(0, 0.3) * w.scale)
    await w.redis.start()


async def redis_restore_dump(w: World, rng: random.Random) -> None:
    w.faults["redis_restore_dump"] += 1
    if not w.redis.snapshots:
        await w.snapshot()
    # Mostly a recent dump, sometimes one from long ago.
    snaps = w.redis.snapshots
    snap = snaps[-1] if rng.random() < 0.5 else snaps[rng.randrange(len(snaps))]
    await w.redis.kill()
    w.redis.wipe(snap)
    await asyncio.sleep(rng.uniform(0, 0.3) * w.scale)
    await w.redis.start(appendonly=False)  # load the dump; append-only again right after


async def redis_lost_mid_restore(w: World, rng: random.Random) -> None:
    """Redis goes back in time twice in a row: the second time while the daemon is putting
    its journal back into the first (stopped the moment it says so)."""
    d = await w.ensure_daemon()
    w.drain(d)
    await redis_restart_empty(w, rng)  # surely behind the daemon: a dump might not be
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any(r.get("event") == "redis_regressed" for r in w.drain(d)):
            break
        await asyncio.sleep(0.002)
    else:
        w.actions["redis_lost_mid_restore skipped"] += 1
        return
    w.faults["redis_lost_mid_restore"] += 1
    await asyncio.sleep(rng.uniform(0, 0.05))  # putting back thousands of keys takes that long
    _signal(d.pid, signal.SIGSTOP)
    w.stopped.add(d.pid)
    try:
        await (redis_restore_dump if rng.random() < 0.5 else redis_restart_empty)(w, rng)
    finally:
        _signal(d.pid, signal.SIGCONT)
        w.stopped.discard(d.pid)


async def redis_down(w: World, rng: random.Random) -> None:
    w.faults["redis_down"] += 1
    down = _loguniform(rng, 0.5, 4.0 if not w.settings.quick else 1.5)
    await w.redis.shutdown()
    started = time.monotonic()
    try:
        if rng.random() < 0.3:  # a daemon that starts while Redis is away waits for it
            w.faults["kill9_daemon"] += 1
            w.actions["kill9_daemon while redis down"] += 1
            await w.kill_daemon()
            await w.start_daemon()
        if rng.random() < 0.3 and w.daemon is not None and w.daemon.ready:
            await w.control("switch", {"color": rng.choice(COLORS)}, timeout=5)
        await asyncio.sleep(max(0.0, down - (time.monotonic() - started)))
    finally:
        await w.redis.start()


async def second_daemon(w: World, rng: random.Random) -> None:
    """Another daemon on the namespace, by mistake, while the first one runs: it must refuse.

    Either once the lease in Redis names the running daemon, or right after Redis lost it
    (restarted empty or from a dump) while the running daemon was busy (stopped for less than
    the lease TTL, as a long restore of the journal keeps it): it holds the namespace all the
    same, and will say so within the TTL."""
    d = await w.ensure_daemon()
    variant = rng.choice(["lease_in_redis", "lease_in_redis", "redis_just_lost_it"])
    paused = 0.0
    if variant == "redis_just_lost_it":
        paused = rng.uniform(0.5, LEASE_TTL_S * 0.8)
        _signal(d.pid, signal.SIGSTOP)
        w.stopped.add(d.pid)
        await (redis_restore_dump if rng.random() < 0.5 else redis_restart_empty)(w, rng)
    else:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            raw = await w.redis_do("lease_read", lambda c: c.get(f"{NAMESPACE}:lease"))
            with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError):
                if orjson.loads(raw)["pid"] == d.pid:
                    break
            await asyncio.sleep(0.05)
        else:
            w.actions["second_daemon skipped"] += 1
            return
    w.faults["second_daemon"] += 1
    w.actions[f"second_daemon {variant}"] += 1
    shutil.rmtree(w.config2.parent / "state", ignore_errors=True)
    second = DaemonProc(w.dir, len(w.daemons), w.config2, second=True)
    w.daemons.append(second)
    second.expected = 1
    started = time.monotonic()
    await second.start(w.env, w.code)
    try:
        while second.alive and time.monotonic() - started < SECOND_DAEMON_TIMEOUT_S:
            if d.pid in w.stopped and time.monotonic() - started > paused:
                _signal(d.pid, signal.SIGCONT)
                w.stopped.discard(d.pid)
            w.drain(second)
            if second.spawned:
                w.checker.violation(
                    "8 a second daemon refuses",
                    None,
                    f"daemon {second.pid} ({variant}) started children on a namespace held by "
                    f"daemon {d.pid}",
                )
                break
            await asyncio.sleep(0.05)
    finally:
        if d.pid in w.stopped:
            _signal(d.pid, signal.SIGCONT)
            w.stopped.discard(d.pid)
        if second.alive:  # it acts (counted above) or hangs (check_exit counts it)
            assert second.proc is not None
            second.proc.kill()
            await second.proc.wait()
            if second.spawned:
                second.expected = second.proc.returncode
    w.check_exit(second)
    if "supervised by another daemon" not in second.stderr_tail(4000):
        w.actions["second_daemon unexpected message"] += 1


async def operator_set(w: World, color: str) -> None:
    """The seed's operator command: ``redis-cli SET agent:active_version COLOR``."""
    await w.redis_do("operator_set", lambda c: c.set(ACTIVE_KEY, color))


async def operator_race(w: World, rng: random.Random) -> None:
    await w.ensure_daemon()
    w.faults["operator_race"] += 1
    set_to, switch_to = rng.choice(COLORS), rng.choice(COLORS)

    async def after(delay: float, op: Awaitable[Any]) -> Any:
        await asyncio.sleep(delay)
        return await op

    await asyncio.gather(
        after(rng.uniform(0, 0.01), operator_set(w, set_to)),
        after(rng.uniform(0, 0.01), w.control("switch", {"color": switch_to})),
        after(rng.uniform(0, 0.01), w.control("rollback", {"reason": "chaos race"})),
    )


async def incrby_epoch(w: World, rng: random.Random) -> None:
    w.faults["incrby_epoch"] += 1
    step = rng.randint(1, 100)
    await w.redis_do("operator_incrby", lambda c: c.incrby(f"{NAMESPACE}:epoch", step))


async def garbage_lines(w: World, rng: random.Random) -> None:
    await w.ensure_daemon()
    sent = False
    for color in rng.sample(COLORS, k=rng.randint(1, 2)):
        pid = await w.child_pid(color)
        if pid is not None and _signal(pid, signal.SIGUSR1):
            sent = True
    if sent:
        w.faults["garbage_lines"] += 1
    else:
        w.actions["garbage_lines skipped"] += 1


async def switch(w: World, rng: random.Random) -> None:
    await w.ensure_daemon()
    w.faults["switch"] += 1
    st = await w.status()
    draw = rng.random()
    if draw < 0.6 and st is not None:
        other = "green" if st["active"] == "blue" else "blue"
        await w.control("switch", {"color": other})
    elif draw < 0.85:
        await w.control("rollback", {"reason": "chaos"})
    else:
        await w.control("confirm")


# Each kind with its weight in the random choice.
FAULTS: dict[str, tuple[Fault, float]] = {
    "kill9_daemon": (kill9_daemon, 3.0),
    "sigstop_daemon": (sigstop_daemon, 2.0),
    "sigstop_child": (sigstop_child, 1.5),
    "kill9_child": (kill9_child, 1.0),
    "redis_restart_empty": (redis_restart_empty, 1.5),
    "redis_restore_dump": (redis_restore_dump, 2.0),
    "redis_down": (redis_down, 1.5),
    "redis_lost_mid_restore": (redis_lost_mid_restore, 1.0),
    "second_daemon": (second_daemon, 1.0),
    "operator_race": (operator_race, 2.0),
    "incrby_epoch": (incrby_epoch, 1.0),
    "garbage_lines": (garbage_lines, 1.0),
    "switch": (switch, 3.0),
}


def plan(
    seed: int, index: int, quick: bool, only: tuple[str, ...] = ()
) -> tuple[random.Random, list[str]]:
    """Schedule ``index`` of ``seed``: its random source and its faults (plus ``save_dump``
    steps, which take a dump for a later restore). In quick runs the first fault of the
    schedules walks through every kind, so a dozen schedules try them all."""
    rng = random.Random(seed * 1_000_003 + index)
    names = list(only or FAULTS)
    steps = rng.choices(names, weights=[FAULTS[n][1] for n in names], k=rng.randint(1, 3))
    if quick:
        order = names[:]
        random.Random(seed).shuffle(order)
        steps[0] = order[index % len(order)]
        del steps[2:]
    if rng.random() < 0.5:
        steps.insert(rng.randint(0, len(steps)), "save_dump")
    return rng, steps


async def run_schedule(w: World, index: int) -> list[str]:
    rng, steps = plan(w.settings.seed, index, w.settings.quick, w.settings.only)
    w.checker.begin(index, time.monotonic_ns())
    for step in steps:
        if step == "save_dump":
            await w.snapshot()
        else:
            await FAULTS[step][0](w, rng)
        await asyncio.sleep(rng.uniform(0.05, 0.5) * w.scale)
    await w.settle()
    await w.collect()
    return steps


# -------------------------------------------------------------------------------------- main


async def chaos(settings: Settings) -> int:
    began = time.monotonic()
    # SIGTERM and Ctrl-C cancel the run; the processes are stopped and the report printed.
    me = asyncio.current_task()
    assert me is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, me.cancel)
    w = World(settings)
    done = 0
    harness_error: str | None = None
    try:
        await w.redis.start()
        await w.ensure_daemon()
        for index in range(settings.start, settings.start + settings.schedules):
            if time.monotonic() - began > settings.max_s:
                print(f"chaos: time is up after {done} schedules", flush=True)
                break
            t = time.monotonic()
            try:
                steps = await asyncio.wait_for(run_schedule(w, index), SCHEDULE_TIMEOUT_S)
            except TimeoutError:
                w.checker.violation(
                    "5 recovers by itself",
                    None,
                    f"schedule {index} did not finish within {SCHEDULE_TIMEOUT_S} s",
                )
                steps = ["(timed out)"]
                await w.settle()
            done += 1
            if settings.verbose:
                print(
                    f"schedule {index}: {' '.join(steps)} ({time.monotonic() - t:.1f} s)",
                    flush=True,
                )
            elif done % 50 == 0:
                found = sum(len(v) for v in w.checker.violations.values())
                print(
                    f"chaos: {done} schedules, {time.monotonic() - began:.0f} s, "
                    f"{found} violations",
                    flush=True,
                )
    except HarnessError as exc:
        harness_error = str(exc)
    except asyncio.CancelledError:
        me.uncancel()  # the way out below still awaits: stop the processes, read the evidence
        harness_error = "interrupted"
    finally:
        await w.close()
        w.checker.final()
    report(settings, w, done, time.monotonic() - began, harness_error)
    if harness_error is not None:
        return 2
    return 1 if w.checker.violations else 0


def report(settings: Settings, w: World, done: int, wall: float, error: str | None) -> None:
    c = w.checker
    per = wall / done if done else 0.0
    print(
        f"chaos: seed {settings.seed}, schedules run {done} (from {settings.start}), "
        f"appendonly {'yes' if settings.appendonly else 'no'}, {settings.permits} permits, "
        f"wall {wall:.0f} s ({per:.1f} s per schedule), code {w.code_digest}"
    )
    print("faults injected:", _counts(w.faults, zeros=True))
    print("operator and world actions:", _counts(w.actions))
    print(
        "permits:",
        _counts(c.reasons),
        f"| keys granted {len(c.ok_keys)}, journal grants {c.events['journal_grants']} "
        f"(and {c.events['journal_rerecorded']} written down again), "
        f"epochs with grants {len(c.epoch_color)}",
    )
    print(
        "evidence:",
        f"agent processes {c.events['agent_start']}, role pushes {c.events['agent_role']}, "
        f"garbage bursts {c.events['agent_garbage']}, daemons started "
        f"{len(c.daemon_order)}, torn lines {c.events['torn_line']}",
    )
    names = [
        "1 one color per epoch",
        "1 one color per epoch (grants in real-time order)",
        "2 epoch only rises (within a child)",
        "2 epoch only rises (across daemon restarts)",
        "2 epoch only rises (flips stream)",
        "3 no key granted twice",
        "3 every ok is journaled",
        "5 recovers by itself",
        "6 the daemon never dies unless killed",
        "6 the daemon never fails inside",
        "8 a second daemon refuses",
        "stall: a daemon pause rolls back no one",
    ]
    names += [n for n in c.violations if n not in names]
    total = sum(len(v) for v in c.violations.values())
    print(f"violations: {total} (target 0)")
    for name in names:
        found = c.violations.get(name, [])
        print(f"  {len(found):5d}  {name}")
        for text in found[:5]:
            print(f"         {text}")
    if error is not None:
        print(f"harness error (not a finding): {error}")
    if settings.keep:
        with (w.dir / "violations.txt").open("w") as f:
            for name, found in c.violations.items():
                f.writelines(f"{name}: {text}\n" for text in found)
        print(f"evidence kept in {w.dir} (every violation in violations.txt)")
    sys.stdout.flush()


def _counts(counter: Counter[str], zeros: bool = False) -> str:
    items = (
        sorted(counter.items())
        if not zeros
        else sorted({**dict.fromkeys(FAULTS, 0), **counter}.items())
    )
    return ", ".join(f"{k} {v}" for k, v in items) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--schedules", type=int, default=None)
    parser.add_argument("--start", type=int, default=0, help="index of the first schedule")
    parser.add_argument("--quick", action="store_true", help="CI: 13 short schedules")
    parser.add_argument(
        "--appendonly", choices=("yes", "no", "seed"), default="seed", help="Redis persistence"
    )
    parser.add_argument("--max-minutes", type=float, default=90.0, help="stop after this long")
    parser.add_argument("--keep", action="store_true", help="keep the evidence directory")
    parser.add_argument("--only", default="", help="comma-separated fault kinds to draw from")
    parser.add_argument(
        "--permits",
        choices=("channel", "direct"),
        default="channel",
        help="how the agents ask: through the daemon (default) or the script directly",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per schedule")
    args = parser.parse_args(argv)
    schedules = args.schedules if args.schedules is not None else (13 if args.quick else 100)
    appendonly = (
        random.Random(args.seed).random() < 0.5
        if args.appendonly == "seed"
        else args.appendonly == "yes"
    )
    settings = Settings(
        seed=args.seed,
        schedules=schedules,
        start=args.start,
        quick=args.quick,
        appendonly=appendonly,
        max_s=args.max_minutes * 60,
        keep=args.keep,
        verbose=args.verbose,
        permits=args.permits,
        only=tuple(k for k in args.only.split(",") if k),
    )
    if unknown := set(settings.only) - set(FAULTS):
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")

    try:
        return asyncio.run(chaos(settings))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
