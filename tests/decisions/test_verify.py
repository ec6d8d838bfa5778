"""``decisions verify`` on logs written by the real writer, then tampered with: each kind of
tampering is found and the record it touched is named; a torn tail is not tampering; the
chain holds across rotated (gzipped) files, restarts and retention."""

from __future__ import annotations

import gzip
import itertools
import os
import subprocess
import sys
from pathlib import Path

import orjson

from supervisor.decisions.files import rotated_files
from supervisor.decisions.verify import verify
from tests.decisions.support import lines, new_log, records, write_log


def kinds(report) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.kind for p in report.problems]


async def test_an_untouched_log_is_intact(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 40)
    report = verify(path)
    assert report.ok, report.problems
    recs = records(path)
    # start, 40 x (decision, execution, outcome), stop: seq 1.. with no hole.
    assert [r["seq"] for r in recs] == list(range(1, 40 * 3 + 3))
    assert report.records == len(recs)
    assert report.first_seq == 1
    assert report.last_seq == len(recs)
    assert recs[0]["kind"] == "start"
    assert recs[-1]["kind"] == "stop"
    assert report.torn_tail is None


async def test_a_changed_field_is_found_and_the_record_named(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 20)
    data = lines(path)
    target = orjson.loads(data[9])  # seq 10
    assert target["seq"] == 10
    target["output"] = {"bet": "roll_over"}  # what the agent decided, changed afterwards
    data[9] = orjson.dumps(target) + b"\n"
    path.write_bytes(b"".join(data))
    report = verify(path)
    assert not report.ok
    assert kinds(report) == ["changed"]
    assert report.problems[0].seq == 10
    assert report.problems[0].line == 10
    assert "seq 10" in report.problems[0].message


async def test_a_removed_line_is_found(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 20)
    data = lines(path)
    del data[14]  # seq 15
    path.write_bytes(b"".join(data))
    report = verify(path)
    assert kinds(report) == ["removed"]
    assert report.problems[0].seq == 15
    assert "seq 15 removed" in report.problems[0].message


async def test_a_removed_run_of_lines_is_found(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 20)
    data = lines(path)
    del data[14:19]  # seqs 15..19
    path.write_bytes(b"".join(data))
    report = verify(path)
    assert kinds(report) == ["removed"]
    assert "seqs 15..19 removed" in report.problems[0].message


async def test_a_reordered_pair_is_found(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 20)
    data = lines(path)
    data[20], data[21] = data[21], data[20]  # seqs 21 and 22 swapped
    path.write_bytes(b"".join(data))
    report = verify(path)
    assert kinds(report) == ["reordered"]
    assert report.problems[0].seq == 21
    assert "seq 21" in report.problems[0].message
    assert "seq 22" in report.problems[0].message


async def test_an_inserted_record_is_found_even_with_a_right_prev_and_seq(log_dir: Path) -> None:
    """A forger who copies the prev of the record it goes after and takes its place's seq:
    nothing after it points at it."""
    path = log_dir / "decisions.jsonl"
    await write_log(path, 20)
    data = lines(path)
    before = orjson.loads(data[29])  # seq 30
    forged = orjson.loads(data[30])  # seq 31, as a template
    forged["output"] = {"bet": "roll_over", "stake": 1000.0}
    import hashlib

    forged["prev"] = hashlib.sha256(data[29].rstrip(b"\n")).hexdigest()
    assert forged["seq"] == before["seq"] + 1
    data.insert(30, orjson.dumps(forged) + b"\n")
    path.write_bytes(b"".join(data))
    report = verify(path)
    assert kinds(report) == ["inserted"]
    assert report.problems[0].line == 31


async def test_an_inserted_record_with_a_wrong_prev_is_found(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 20)
    data = lines(path)
    forged = orjson.loads(data[30])
    forged["prev"] = "ab" * 32
    data.insert(30, orjson.dumps(forged) + b"\n")
    path.write_bytes(b"".join(data))
    report = verify(path)
    assert kinds(report) == ["inserted"]
    assert report.problems[0].line == 31


async def test_a_line_that_is_no_record_is_unreadable(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 5)
    data = lines(path)
    data[3] = b"garbage\n"
    path.write_bytes(b"".join(data))
    report = verify(path)
    assert "unreadable" in kinds(report)


async def test_a_torn_last_line_is_a_torn_tail_not_tampering(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 10)
    data = path.read_bytes()
    path.write_bytes(data + b'{"v":1,"seq":33,"id":"x","timest')  # a write cut short
    report = verify(path)
    assert report.ok, report.problems
    assert report.torn_tail is not None
    assert report.torn_tail["after_seq"] == 32
    assert report.last_seq == 32


async def test_a_file_cut_at_a_line_boundary_is_found_against_the_head(log_dir: Path) -> None:
    """Without an anchor a log cut at a line boundary looks whole; the head the daemon says
    it wrote (asked of it, or kept from its log line) finds it."""
    path = log_dir / "decisions.jsonl"
    log = await write_log(path, 10)
    head = (log.written_seq, log.written_hash)
    assert verify(path, head=head).ok
    data = lines(path)
    path.write_bytes(b"".join(data[:-3]))
    assert verify(path).ok  # the files alone cannot tell
    report = verify(path, head=head)
    assert kinds(report) == ["truncated"]
    assert f"up to seq {head[0]}" in report.problems[0].message


async def test_rotation_keeps_the_chain_across_gzipped_files(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 300, rotate_bytes=16 << 10)
    rotated = rotated_files(path)
    assert len(rotated) >= 3
    # Gzipped in the background: all but the latest may be, by the time the log closes.
    assert all(r.compressed for r in rotated[:-1])
    report = verify(path)
    assert report.ok, report.problems
    assert report.first_seq == 1
    assert report.records == 300 * 3 + 2
    # Each rotated file starts with the record after the previous one's last: the chain
    # goes on from file to file.
    for before, after in itertools.pairwise(rotated):
        assert after.first == before.last + 1
    with gzip.open(rotated[1].path, "rb") as f:
        first = orjson.loads(f.readline())
    with gzip.open(rotated[0].path, "rb") as f:
        last_line = f.read().splitlines()[-1]
    import hashlib

    assert first["prev"] == hashlib.sha256(last_line).hexdigest()


async def test_a_missing_rotated_file_is_found(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 300, rotate_bytes=16 << 10)
    rotated = rotated_files(path)
    rotated[1].path.unlink()
    report = verify(path)
    assert kinds(report) == ["removed"]
    assert f"seqs {rotated[1].first}..{rotated[1].last} removed" in report.problems[0].message
    assert "a whole file?" in report.problems[0].message


async def test_a_truncated_gzip_file_is_found(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 300, rotate_bytes=16 << 10)
    victim = rotated_files(path)[0].path
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    report = verify(path)
    assert "truncated" in kinds(report)


async def test_a_restart_continues_the_chain(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 10)
    await write_log(path, 10)
    report = verify(path)
    assert report.ok, report.problems
    starts = [r for r in records(path) if r["kind"] == "start"]
    assert [s["seq"] for s in starts] == [1, 33]


async def test_retention_removes_old_files_and_says_so(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 400, rotate_bytes=16 << 10, keep=2)
    await write_log(path, 1, rotate_bytes=16 << 10, keep=2)  # the next start prunes too
    rotated = rotated_files(path)
    assert len(rotated) <= 3
    report = verify(path)
    assert report.ok, report.problems
    assert report.first_seq is not None
    assert report.first_seq > 1
    assert any("older files were removed" in n for n in report.notes)
    retention = [r for r in records(path) if r["kind"] == "retention"]
    assert retention or any(r["kind"] == "retention" for f in rotated for r in _gz_records(f.path))


async def test_old_files_removed_by_hand_are_found(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 300, rotate_bytes=16 << 10)
    rotated_files(path)[0].path.unlink()
    report = verify(path)
    assert kinds(report) == ["removed"]
    assert "without a retention record" in report.problems[0].message


async def test_one_rotated_file_alone_verifies_from_its_first_record(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 300, rotate_bytes=16 << 10)
    middle = rotated_files(path)[1].path
    report = verify(middle, whole_log=False)
    assert report.ok, report.problems
    assert report.notes


async def test_gap_records_are_listed_not_problems(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    log = new_log(path)
    await log.open()
    log._drop("decision")  # counted as the writer does when the disk cannot keep up
    log._drop("decision")
    log._gap_record()
    await log.close()
    report = verify(path)
    assert report.ok, report.problems
    assert [g["count"] for g in report.gaps] == [2]


async def test_the_cli_verifies_without_a_daemon(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 10)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "AGENTSUP_SOCKET": str(log_dir / "none.sock")}
        return subprocess.run(
            [sys.executable, "-m", "supervisor", "decisions", "verify", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    ok = run(str(path))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("intact: 32 records")
    data = lines(path)
    del data[5]
    path.write_bytes(b"".join(data))
    broken = run(str(path), "--json")
    assert broken.returncode == 1
    out = orjson.loads(broken.stdout)
    assert out["ok"] is False
    assert out["problems"][0]["kind"] == "removed"
    assert out["problems"][0]["seq"] == 6


def _gz_records(path: Path) -> list[dict[str, object]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:  # type: ignore[operator]
        return [orjson.loads(line) for line in f.read().splitlines() if line]
