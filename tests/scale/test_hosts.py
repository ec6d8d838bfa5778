"""A standby supervisor on another host takes over when the holder is cut off (issue 15).

Three hosts made by the test (tests/scale/netns.py: network namespaces on one switch, each
with a hostname of its own): B runs redis-server on its address, A runs a daemon and its two
agents, C a second daemon for the same namespace with ``on_lease_held = "wait"``, the
standby. Both daemons reach Redis by TCP (``redis://B:6390``, with a password); the lease TTL
is 2 s. The agents (bench/chaos_agent.py) ask for permits all the time on one sequence of keys
shared by every agent on both hosts, and write every answer and role push they hear, with the
time (CLOCK_MONOTONIC: one clock for the whole machine) and the epoch.

Then A's link goes down. A must fence its agents (told standby) before its lease can expire,
and no agent of A's may be granted anything it asked after the cut; C must take the lease,
start its agents and bump the epoch, and C's agents get permits. The link comes back: A
finds the lease taken and exits 1, and acts no more. Over the whole run, from the agents'
answers, both daemons' journals and Redis's own grant log: no key granted twice, the epoch
of grants only rises, at most one (host, color) granted anything per epoch. The time nobody
could act (from the cut to C's first grant) is printed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.harness import PY, DaemonProcess, agent, running_daemon
from tests.redis_server import short_tempdir
from tests.scale import netns
from tests.scale.netns import Host, NetnsRedis

pytestmark = pytest.mark.timeout(240)

CHAOS_AGENT = [PY, str(Path(__file__).resolve().parents[2] / "bench" / "chaos_agent.py")]
LEASE_TTL_S = 2.0
NAMESPACE = "t"
PASSWORD_ENV = "AGENTSUP_REDIS_PASSWORD"
# Far above what each step takes on an idle machine, far below "hung" (the machine is shared).
STEP_TIMEOUT_S = 45.0


@dataclass(frozen=True)
class Answer:
    t_ask: int
    t: int
    proc: str
    host: str
    color: str
    event: str  # permit | role | start
    key: str
    reason: str  # permit: ok, not_active, ...; role: active, standby, ...
    epoch: int


def answers(directory: Path) -> list[Answer]:
    """Every whole line the agents of both hosts wrote so far."""
    out = []
    for path in sorted(directory.glob("*.log")):
        data = path.read_bytes()
        for line in data[: data.rfind(b"\n") + 1].decode().splitlines():
            w = line.split()
            if len(w) == 9:
                out.append(
                    Answer(int(w[0]), int(w[1]), w[2], w[3], w[4], w[5], w[6], w[7], int(w[8]))
                )
    return out


def grants(directory: Path, host: str | None = None) -> list[Answer]:
    return [
        a
        for a in answers(directory)
        if a.event == "permit" and a.reason == "ok" and host in (None, a.host)
    ]


async def until(
    what: str, check: Callable[[], Any], timeout: float = STEP_TIMEOUT_S, *d: DaemonProcess
) -> Any:
    """Poll the agents' evidence (files: no event tells) until ``check`` returns something."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        await asyncio.sleep(0.05)
    tails = "\n".join(
        f"daemon {x.pid}: " + "\n  ".join(json.dumps(r)[:300] for r in x.logs[-25:]) for x in d
    )
    raise AssertionError(f"not within {timeout} s: {what}\n{tails}")


@pytest.fixture
def net() -> Iterator[dict[str, Host]]:
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(f"network-namespace hosts cannot be made here: {reason}")
    with netns.hosts("a", "b", "c") as made:
        yield made


@pytest.fixture
def evidence() -> Iterator[Path]:
    directory = short_tempdir("as-hosts-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def host_agent(host: str, version: str, evidence: Path, t0_ns: int) -> dict[str, Any]:
    env = {
        "CHAOS_DIR": str(evidence),
        "CHAOS_DAEMON": host,  # which host's agent wrote a line
        "CHAOS_T0_NS": str(t0_ns),
        "CHAOS_SLOT_MS": "25",
        "CHAOS_INTERVAL_MS": "20",
    }
    return agent(CHAOS_AGENT, version, env=env)


def logged_at(record: dict[str, Any]) -> float:
    """A log record's time (wall clock, like every daemon's on this machine)."""
    return datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp()


def journal(d: DaemonProcess) -> list[dict[str, Any]]:
    path = d.state_dir / "permits.journal"
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def check_grants(all_grants: list[Answer]) -> list[str]:
    """The invariants over the agents' answers, from both hosts."""
    problems = []
    by_key: dict[str, Answer] = {}
    by_epoch: dict[int, tuple[str, str]] = {}
    for g in all_grants:
        first = by_key.setdefault(g.key, g)
        if first is not g:
            problems.append(f"{g.key} granted twice: {first} and {g}")
        actor = by_epoch.setdefault(g.epoch, (g.host, g.color))
        if actor != (g.host, g.color):
            problems.append(f"epoch {g.epoch} granted to {actor} and to {(g.host, g.color)}")
    # Real time: a grant asked after another was answered may not carry a lower epoch.
    answered = sorted(all_grants, key=lambda g: g.t)
    best: Answer | None = None
    i = 0
    for g in sorted(all_grants, key=lambda g: g.t_ask):
        while i < len(answered) and answered[i].t < g.t_ask:
            if best is None or answered[i].epoch > best.epoch:
                best = answered[i]
            i += 1
        if best is not None and best.epoch > g.epoch:
            problems.append(f"{g} asked after {best} was answered, at a lower epoch")
    return problems


def check_redis_log(redis: NetnsRedis, old_epoch: int, cut_wall: float) -> tuple[list[str], int]:
    """Redis's own grant log (``{ns}:permits:log``): each key once, epochs never going down,
    and nothing granted at the cut-off host's epochs (``<= old_epoch``) once its link was down
    (an entry's id is the time Redis ran the script, on this machine's clock)."""
    entries = json.loads(redis.cli("--json", "XRANGE", f"{NAMESPACE}:permits:log", "-", "+"))
    problems = []
    seen: dict[str, dict[str, str]] = {}
    last_epoch = -1
    for entry_id, flat in entries:
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        ran_ms = int(entry_id.split("-")[0])
        if int(fields["epoch"]) <= old_epoch and ran_ms > cut_wall * 1000:
            problems.append(
                f"granted at old epoch {fields} {ran_ms - cut_wall * 1000} ms after the cut"
            )
        if fields["key"] in seen:
            problems.append(f"Redis logged {fields['key']} twice: {seen[fields['key']]}, {fields}")
        seen[fields["key"]] = fields
        if int(fields["epoch"]) < last_epoch:
            problems.append(f"Redis logged epoch {fields['epoch']} after {last_epoch}")
        last_epoch = max(last_epoch, int(fields["epoch"]))
    return problems, len(entries)


def check_journals(*journals: list[dict[str, Any]]) -> list[str]:
    """Both daemons' journals together: a key written down twice is the same grant."""
    problems = []
    seen: dict[str, dict[str, Any]] = {}
    for line in (line for j in journals for line in j):
        first = seen.setdefault(str(line["k"]), line)
        if any(str(first.get(f)) != str(line.get(f)) for f in ("c", "e", "t")):
            problems.append(f"journals: {line['k']} granted as {first} and as {line}")
    return problems


async def test_standby_on_another_host_takes_over_when_the_holder_is_cut_off(
    net: dict[str, Host], evidence: Path, tmp_path: Path
) -> None:
    a, b, c = net["a"], net["b"], net["c"]
    password = secrets.token_hex(16)
    redis = NetnsRedis(b, tmp_path, port=6390, password=password)
    redis.start()
    t0_ns = time.monotonic_ns()
    sections: dict[str, dict[str, Any]] = {
        "supervisor": {"namespace": NAMESPACE, "lease_ttl_s": LEASE_TTL_S},
        "redis": {"password_env": PASSWORD_ENV},
    }
    standby_sections = {**sections, "supervisor": {**sections["supervisor"]}}
    standby_sections["supervisor"]["on_lease_held"] = "wait"
    env = {PASSWORD_ENV: password}
    try:
        async with running_daemon(
            redis_url=redis.url,
            blue=host_agent("A", "1.0.0", evidence, t0_ns),
            green=host_agent("A", "2.0.0", evidence, t0_ns),
            sections=sections,
            env=env,
            prefix=a.prefix,
        ) as da:
            enough = lambda: len(grants(evidence, "A")) >= 10  # noqa: E731
            await until("A's agents granted permits", enough, STEP_TIMEOUT_S, da)
            async with running_daemon(
                redis_url=redis.url,
                blue=host_agent("C", "1.0.0", evidence, t0_ns),
                green=host_agent("C", "2.0.0", evidence, t0_ns),
                sections=standby_sections,
                env=env,
                prefix=c.prefix,
                wait_ready=False,
            ) as dc:
                waiting = await dc.wait_log("lease_waiting", timeout=STEP_TIMEOUT_S)
                assert "host-a" in waiting["holder"], waiting
                assert not dc.find("child_spawned"), "the standby started a child"
                assert not [x for x in answers(evidence) if x.host == "C"]

                # --- the cut -------------------------------------------------------------
                # The link goes down somewhere between these two: the `ip` command may take a
                # while on a busy machine, and a permit asked meanwhile may rightly be granted.
                # Durations are counted from before (the longer), grants judged from after.
                t_before, t_before_wall = time.monotonic_ns(), time.time()
                a.cut()
                t_cut, t_cut_wall = time.monotonic_ns(), time.time()
                mark_a = len(da.logs)
                await da.wait_log("lease_unrenewed", since=mark_a, timeout=STEP_TIMEOUT_S)

                def a_fenced() -> bool:
                    told = [
                        x
                        for x in answers(evidence)
                        if x.host == "A" and x.event == "role" and x.t > t_before
                    ]
                    return {x.color for x in told if x.reason == "standby"} == {"blue", "green"}

                await until("A's agents told standby", a_fenced, STEP_TIMEOUT_S, da)
                t_fenced = time.monotonic_ns()

                taken = await dc.wait_log("lease_taken", timeout=STEP_TIMEOUT_S)
                await dc.wait_log("ready", timeout=STEP_TIMEOUT_S)

                def c_granted() -> list[Answer]:
                    return sorted(grants(evidence, "C"), key=lambda g: g.t)

                first_c = (await until("C's agents granted", c_granted, STEP_TIMEOUT_S, dc))[0]
                a_grants = grants(evidence, "A")
                assert a_grants
                last_a = max(a_grants, key=lambda g: g.t)
                a_epoch = max(g.epoch for g in a_grants)
                assert first_c.epoch > a_epoch
                assert first_c.color == last_a.color  # C adopted who acts from Redis
                lease = json.loads(redis.cli("GET", f"{NAMESPACE}:lease"))
                assert (lease["host"], lease["pid"]) == ("host-c", dc.pid), lease
                assert not da.find("lease_lost"), "A reached Redis while cut off"

                # --- the heal ------------------------------------------------------------
                mark_a = len(da.logs)
                da.expected_exit = 1
                a.heal()
                lost = await da.wait_log("lease_lost", since=mark_a, timeout=STEP_TIMEOUT_S)
                assert "host-c" in lost["holder"], lost
                assert await da.wait(STEP_TIMEOUT_S) == 1
                await da.wait_log("stopped", exit_code=1)
                # C goes on acting after A is gone; A never again.
                seen = len(c_granted())
                await until("C acting after the heal", lambda: len(c_granted()) >= seen + 20)
                c_journal = journal(dc)
                a_journal = journal(da)
            assert dc.proc is not None
            assert dc.proc.returncode == 0

        everything = answers(evidence)
        all_grants = grants(evidence)
        after_cut = [g for g in all_grants if g.host == "A" and g.t_ask > t_cut]
        assert not after_cut, f"A granted after the cut: {after_cut[:5]}"
        assert check_grants(all_grants) == []
        redis_problems, logged = check_redis_log(redis, a_epoch, t_cut_wall)
        assert redis_problems == []
        assert logged >= len(all_grants)  # every ok an agent heard is in Redis's log
        assert check_journals(a_journal, c_journal) == []
        assert int(redis.cli("GET", f"{NAMESPACE}:epoch")) >= first_c.epoch
        reasons: dict[str, int] = {}
        for x in everything:
            if x.event == "permit":
                reasons[f"{x.host}:{x.reason}"] = reasons.get(f"{x.host}:{x.reason}", 0) + 1
        ms = 1e-6
        print(
            f"\nstandby takeover over the network (lease TTL {LEASE_TTL_S} s):"
            f"\n  cutting the link took:          {(t_cut - t_before) * ms:.0f} ms"
            f"\n  cut -> A's agents told standby: <= {(t_fenced - t_before) * ms:.0f} ms"
            f"\n  cut -> C took the lease:        {(logged_at(taken) - t_before_wall) * 1e3:.0f} ms"
            f"\n  cut -> C's first grant:         {(first_c.t - t_before) * ms:.0f} ms"
            f" (nobody could act)"
            f"\n  A's last grant -> C's first:    {(first_c.t - last_a.t) * ms:.0f} ms"
            f"\n  epochs: A up to {last_a.epoch}, C from {first_c.epoch}"
            f"\n  answers: {dict(sorted(reasons.items()))}, {len(all_grants)} grants,"
            f" {logged} in Redis's log"
        )
    finally:
        redis.stop()


def test_the_checks_catch_a_double_grant_and_a_shared_epoch() -> None:
    """The checks above can fail: fed answers that break each rule, each is reported."""

    def ok(t: int, host: str, color: str, key: str, epoch: int) -> Answer:
        return Answer(t, t + 1, f"{host}{color}", host, color, "permit", key, "ok", epoch)

    fine = [ok(1, "A", "blue", "k-1", 1), ok(5, "C", "blue", "k-2", 2)]
    assert check_grants(fine) == []
    twice = check_grants([*fine, ok(9, "C", "blue", "k-1", 2)])
    assert len(twice) == 1
    assert "k-1 granted twice" in twice[0]
    shared = check_grants([*fine, ok(9, "A", "blue", "k-3", 2)])
    assert len(shared) == 1
    assert "epoch 2 granted to" in shared[0]
    backwards = check_grants([*fine, ok(9, "A", "blue", "k-3", 1)])
    assert any("at a lower epoch" in problem for problem in backwards)
    journal_a = [{"k": "k-1", "c": "blue", "e": 1, "t": "x"}]
    assert check_journals(journal_a, [{"k": "k-1", "c": "blue", "e": 1, "t": "x"}]) == []
    assert check_journals(journal_a, [{"k": "k-1", "c": "blue", "e": 2, "t": "y"}]) != []
