"""The writer (supervisor.decisions.writer) on its own: what a record holds, the chain across
restarts and torn tails, the fsync policies, records no encoder can take, other features'
records, one writer per file, a full disk survived with a gap record, and the double-spend
trigger's lookups."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from supervisor.config import Color, DoubleSpendTrigger
from supervisor.decisions import record
from supervisor.decisions.lookup import Query, find_earlier
from supervisor.decisions.verify import verify
from supervisor.guard.double_spend import DoubleSpend
from supervisor.rollout import Change
from tests.decisions.support import children, decision, feed, new_log, records, write_log
from tests.test_fence import fill, tiny_disk


def sample(log, name: str) -> float:  # type: ignore[no-untyped-def]
    value = log.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else float(value)


async def test_every_decision_record_has_the_seeds_fields_and_the_fence(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 30)
    decisions = [r for r in records(path) if r["kind"] == "decision"]
    assert len(decisions) == 30
    for r in decisions:
        for name in record.SEED_FIELDS:
            assert name in r, name
        assert r["agent_version"] == "1.0.0"
        assert isinstance(r["timestamp"], float)
        assert r["decision_type"] == "dice"
        assert r["inputs"]["round"] == int(r["decision_id"][2:])
        assert r["output"]["bet"] == "roll_under"
        assert isinstance(r["reasoning"], str)  # "" when the agent gave none, as the seed's
        assert (r["color"], r["epoch"], r["role"]) == ("blue", 3, "active")
        assert r["v"] == record.SCHEMA
        assert r["flags"] == record.flags_hash({})
        assert r["config"] == "c0ffeec0ffee0000"
        assert r["id"].endswith(f"-{r['seq']}")
        assert list(r)[-1] == "prev"


async def test_executions_outcomes_errors_and_flips_are_recorded(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    log = new_log(path)
    await log.open()
    green = children()[Color.GREEN]
    log.on_event(green, {"type": "error", "kind": "exception", "message": "KeyError: 'dice'"})
    log.change(Change("flip", Color.BLUE, Color.GREEN, 9, "exception: boom", "guard", "exception"))
    log.change(Change("confirm", Color.BLUE, Color.BLUE, 9, "probation", "probation"))
    await log.close()
    recs = {r["kind"]: r for r in records(path)}
    assert recs["error"]["color"] == "green"
    assert recs["error"]["agent_version"] == "2.0.0"
    assert recs["error"]["error_kind"] == "exception"
    assert recs["error"]["epoch"] is None  # green was never told anything
    flip = recs["flip"]
    assert (flip["from"], flip["to"], flip["epoch"], flip["trigger"]) == (
        "green",
        "blue",
        9,
        "exception",
    )
    assert flip["reason"] == "exception: boom"
    assert recs["confirm"]["stable"] == "blue"


async def test_other_features_record_through_record(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    log = new_log(path)
    await log.open()
    seq = log.record("flag", {"name": "crash_target", "value": 2.5}, color=Color.GREEN)
    assert seq == 2  # after the start record
    with pytest.raises(ValueError, match="record's own"):
        log.record("handoff", {"seq": 1})
    with pytest.raises(ValueError, match="not a kind"):
        log.record("decision", {})  # only the daemon writes those
    with pytest.raises(ValueError, match="not a kind"):
        log.record("Bad Kind", {})
    log.set_flags(Color.GREEN, {"crash_target": 2.5})
    log.record("deploy", {"forced": True, "reason": "hotfix"}, color=Color.GREEN)
    await log.close()
    recs = records(path)
    assert recs[1]["kind"] == "flag"
    assert recs[1]["flags"] == record.flags_hash({})
    assert recs[2]["flags"] == record.flags_hash({"crash_target": 2.5})
    assert verify(path).ok


async def test_a_value_too_deep_to_encode_is_recorded_as_unrecordable(log_dir: Path) -> None:
    """orjson reads 1024 levels but writes only 254: a child's inputs may be deeper than the
    log can encode. The record says so, the chain goes on, nothing raises."""
    path = log_dir / "decisions.jsonl"
    log = new_log(path)
    await log.open()
    deep: object = 1
    for _ in range(400):
        deep = [deep]
    msg = decision(1)
    msg["inputs"] = deep
    log.on_decision(children()[Color.BLUE], msg)
    await log.close()
    rec = next(r for r in records(path) if r["kind"] == "decision")
    assert rec["unrecordable"] == ["inputs"]
    assert rec["inputs"] is None
    assert rec["output"] == msg["output"]
    assert verify(path).ok


async def test_a_torn_tail_is_cut_at_the_next_start_and_named(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 5)
    torn = b'{"v":1,"seq":18,"id":"abc-12","timestamp":17672'
    with path.open("ab") as f:
        f.write(torn)
    assert verify(path).torn_tail is not None
    await write_log(path, 5)
    report = verify(path)
    assert report.ok, report.problems
    assert report.torn_tail is None
    start = [r for r in records(path) if r["kind"] == "start"][1]
    assert start["torn_tail_bytes"] == len(torn)
    assert start["seq"] == 18


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
async def test_the_fsync_policies(log_dir: Path, policy: str) -> None:
    path = log_dir / "decisions.jsonl"
    log = new_log(path, fsync=policy, fsync_interval_ms=20)
    await log.open()
    writer = asyncio.create_task(log.run())
    await feed(log, 50)
    assert await log.flush(10.0)
    if policy != "never":
        async with asyncio.timeout(10):
            while log.synced_seq < log.written_seq:
                await asyncio.sleep(0.01)
    syncs = sample(log, "agentsup_decision_log_fsync_seconds_count")
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await log.close()
    assert (syncs > 0) == (policy != "never")
    assert sample(log, "agentsup_decision_log_records_total") == log.written_seq
    assert verify(path).ok


async def test_one_writer_per_log(log_dir: Path) -> None:
    """A second daemon given the same path by mistake does not interleave a second chain: it
    cannot open the log, counts what it cannot record, and takes over once the first is gone."""
    path = log_dir / "decisions.jsonl"
    first, second = new_log(path), new_log(path, alerts := [])
    await first.open()
    await second.open()
    assert not second.opened
    assert second.failing is not None
    assert "another process" in second.failing
    assert alerts
    assert alerts[0]["trigger"] == "decision_log"
    second.on_decision(children()[Color.BLUE], decision(1))  # counted, not recorded
    writer = asyncio.create_task(second.run())
    await first.close()
    async with asyncio.timeout(10):
        while not second.opened:
            await asyncio.sleep(0.05)
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await second.close()
    recs = records(path)
    assert [r["kind"] for r in recs] == ["start", "stop", "start", "gap", "stop"]
    assert recs[3]["by_kind"] == {"decision": 1}
    assert verify(path).ok


def test_the_lookup_finds_an_earlier_execution_but_never_the_one_judged(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    asyncio.run(write_log(path, 20))
    recs = records(path)
    k7 = next(r for r in recs if r.get("key") == "k-7")
    # The execution judged is k-7's own record: nothing earlier.
    own = Query("k-7", Color.BLUE, 3, exclude=k7["seq"], upto=k7["seq"])
    assert find_earlier(path, [own]) == [None]
    # Executed again later (its own record at a later seq): the first one is found.
    again = Query("k-7", Color.GREEN, 4, exclude=recs[-1]["seq"] + 5, upto=recs[-1]["seq"])
    hit, none = find_earlier(path, [again, Query("k-999", Color.BLUE, 3, None, 10**9)])
    assert none is None
    assert hit is not None
    assert (hit.color, hit.epoch, hit.seq) == ("blue", 3, k7["seq"])
    # Two questions on one key in one batch are answered each for itself.
    assert find_earlier(path, [own, again]) == [None, hit]
    # Nothing recorded after `upto` counts.
    early = Query("k-7", Color.BLUE, 3, exclude=None, upto=k7["seq"] - 1)
    assert find_earlier(path, [early]) == [None]


def test_the_double_spend_hook_judges_what_the_log_found() -> None:
    guard = DoubleSpend(DoubleSpendTrigger(memory_keys=1), fresh=False)
    assert guard.execution(Color.GREEN, "k-7", 4, now=10.0) is None
    assert guard.might_have_forgotten("k-7")  # memory cannot vouch: the log is asked
    verdict = guard.from_log_record(Color.GREEN, "k-7", "blue", 3, 4, now=11.0)
    assert verdict is not None
    assert verdict.trigger == "double_spend"
    assert verdict.color is Color.GREEN
    assert "by blue at epoch 3 (in the decision log)" in verdict.message
    assert guard.from_log_record(Color.GREEN, "k-7", "blue", 3, 4, now=12.0) is None  # once
    assert guard.state(Color.GREEN)["fired"] == 1
    off = DoubleSpend(DoubleSpendTrigger(enabled=False))
    assert off.from_log_record(Color.GREEN, "k-7", "blue", 3, 4) is None


async def test_lookups_answer_in_batches_through_the_running_log(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    log = new_log(path)
    await log.open()
    writer = asyncio.create_task(log.run())
    blue = children()[Color.BLUE]
    found: list[tuple[str, int]] = []
    answering = asyncio.create_task(
        log.lookups.run(lambda q, e: found.append((q.key, e.seq)), horizon_s=3600)
    )
    log.on_event(blue, {"type": "execution", "decision_id": "d-1", "key": "order-1", "amount": 1})
    first = log.mark("order-1")
    assert first is not None
    assert first[0] == log.seq
    log.lookups.ask(Query("order-1", Color.BLUE, 3, *first))
    log.on_event(blue, {"type": "execution", "decision_id": "d-2", "key": "order-1", "amount": 1})
    second = log.mark("order-1")
    assert second is not None
    log.lookups.ask(Query("order-1", Color.BLUE, 3, *second))
    async with asyncio.timeout(10):
        while not found:
            await asyncio.sleep(0.02)
    answering.cancel()
    writer.cancel()
    await asyncio.gather(answering, writer, return_exceptions=True)
    await log.close()
    assert found == [("order-1", first[0])]


async def test_a_full_disk_is_survived_with_a_gap_record(log_dir: Path) -> None:
    """ENOSPC: the records wait in memory, then (past max_buffer_bytes) are counted; the
    failure is counted and alerted; when the disk takes writes again the backlog goes out,
    then one gap record with the count, and the chain verifies."""
    with tiny_disk() as disk:
        path = disk / "log" / "decisions.jsonl"
        alerts: list[dict[str, object]] = []
        log = new_log(path, alerts, max_buffer_bytes=64 << 10, fsync="always")
        await log.open()
        writer = asyncio.create_task(log.run())
        await feed(log, 20, flush_every=10)
        filler = fill(disk)
        await feed(log, 400, start=21)  # far more than 64 KiB of records
        async with asyncio.timeout(10):
            while log.failing is None:
                await asyncio.sleep(0.02)
        assert sample(log, "agentsup_decision_log_failing") == 1
        assert log.dropped_total + sum(log._dropped.values()) > 0
        assert any("cannot write" in str(a["message"]) for a in alerts)
        file_size = path.stat().st_size
        assert file_size == log._file.size  # nothing torn left behind by a failed write
        filler.unlink()
        async with asyncio.timeout(20):
            while log.failing is not None or log.gaps == 0:
                await asyncio.sleep(0.05)
        assert await log.flush(10.0)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await log.close()
        failures = sum(
            s.value
            for m in log.metrics.registry.collect()
            if m.name == "agentsup_decision_log_write_failures"
            for s in m.samples
            if s.name.endswith("_total")
        )
        assert failures >= 1
        assert sample(log, "agentsup_decision_log_gaps_total") == 1
        assert sample(log, "agentsup_decision_log_failing") == 0
        report = verify(path)
        assert report.ok, report.problems
        assert len(report.gaps) == 1
        lost = report.gaps[0]["count"]
        assert lost == log.dropped_total > 0
        kept = [r for r in records(path) if r["kind"] == "decision"]
        assert len(kept) + report.gaps[0]["by_kind"].get("decision", 0) == 420
        assert orjson.loads(orjson.dumps(report.gaps[0]))["by_kind"]


async def test_a_disabled_log_records_nothing_and_writes_no_file(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    log = new_log(path, enabled=False)
    await log.open()
    await log.run()  # returns at once: nothing to write
    log.on_decision(children()[Color.BLUE], decision(1))
    assert log.record("flag", {"name": "x"}) is None
    assert log.mark("k-1") is None
    await log.close()
    assert not path.exists()
    assert log.describe()["enabled"] is False
