"""What this host keeps that Redis might forget: the epoch reservation, state.json and the
permit journal, read back as a daemon started after a crash would read them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor.arbiter.durable import (
    COMPACT_BYTES,
    RESERVE_BLOCK,
    DurableWriteError,
    EpochReservation,
    Grant,
    KnownState,
    PermitJournal,
    ToldMark,
    write_atomically,
)


def test_the_reservation_rises_by_blocks_and_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "epoch"
    r = EpochReservation(path)
    assert r.ceiling == 0
    assert not r.covers(1)
    r.reserve(1)
    assert r.ceiling == 1 + RESERVE_BLOCK
    assert r.covers(1 + RESERVE_BLOCK)
    assert not r.covers(2 + RESERVE_BLOCK)
    r.reserve(5)  # covered: no write
    assert r.ceiling == 1 + RESERVE_BLOCK
    assert EpochReservation(path).ceiling == 1 + RESERVE_BLOCK  # as the next daemon reads it
    r.reserve(5000)
    assert EpochReservation(path).ceiling == 5000 + RESERVE_BLOCK


def test_a_damaged_reservation_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "epoch"
    path.write_bytes(b"\xff\xfe")
    assert EpochReservation(path).ceiling == 0
    path.write_text("12x\n")
    assert EpochReservation(path).ceiling == 0


def test_a_write_that_fails_raises_and_leaves_the_old_value(tmp_path: Path) -> None:
    path = tmp_path / "epoch"
    r = EpochReservation(path)
    r.reserve(1)
    r.path = tmp_path / "not-a-dir" / "epoch"
    (tmp_path / "not-a-dir").write_text("a file where a directory should be")
    with pytest.raises(DurableWriteError):
        r.reserve(10_000)
    assert r.ceiling == 1 + RESERVE_BLOCK


def test_write_atomically_into_a_missing_directory_raises_a_durable_write_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(DurableWriteError):
        write_atomically(tmp_path / "missing" / "state.json", b"{}")


def test_known_state_round_trips_and_ignores_damage(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert KnownState.load(path) is None
    known = KnownState(epoch=12, seq=40, active="green", rollout={"stable": "blue"})
    write_atomically(path, known.dumps())
    assert KnownState.load(path) == known
    path.write_text("[1, 2]")
    assert KnownState.load(path) is None
    path.write_text('{"epoch": -3, "seq": "x", "active": 7}')
    assert KnownState.load(path) == KnownState(epoch=0, seq=0, active=None, rollout={})


def grant(seq: int, key: str, expires_ms: int = 10**15) -> Grant:
    return Grant(seq, key, "blue", 7, f"tok-{seq}", expires_ms)


def test_the_journal_keeps_every_grant_and_skips_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "permits.journal"
    journal = PermitJournal(path)
    journal.open()
    for n in range(1, 4):
        journal.append(grant(n, f"order-{n}"))
    journal.sync()
    journal.close()
    with path.open("ab") as f:
        f.write(b'{"s": 4, "k": "order-4"')  # the daemon died mid-line
    again = PermitJournal(path)
    assert [g.key for g in again.grants()] == ["order-1", "order-2", "order-3"]
    assert again.highest_seq() == 3
    assert next(again.grants()).record == "blue:7:tok-1"


def test_the_journal_forgets_expired_grants_when_compacted(tmp_path: Path) -> None:
    journal = PermitJournal(tmp_path / "permits.journal")
    journal.open()
    journal.append(grant(1, "old", expires_ms=1))
    journal.append(grant(2, "young"))
    assert [g.key for g in journal.grants()] == ["young"]
    assert journal.compact() == 1
    journal.append(grant(3, "after"))
    journal.close()
    assert [g.key for g in PermitJournal(tmp_path / "permits.journal").grants(0)] == [
        "young",
        "after",
    ]


def test_a_key_with_any_characters_survives_the_journal(tmp_path: Path) -> None:
    journal = PermitJournal(tmp_path / "permits.journal")
    odd = 'line\nbreak "quoted" \u00e9\u4e2d \\ tab\t'
    journal.append(grant(1, odd))
    journal.close()
    assert [g.key for g in PermitJournal(tmp_path / "permits.journal").grants()] == [odd]


def test_appends_between_the_two_halves_of_a_compaction_are_kept(tmp_path: Path) -> None:
    """The daemon compacts in a thread while permits go on being journaled on the loop."""
    journal = PermitJournal(tmp_path / "permits.journal")
    journal.open()
    journal.append(grant(1, "old", expires_ms=1))
    journal.append(grant(2, "young"))
    begun = journal.compact_begin()
    journal.append(grant(3, "meanwhile"))
    assert journal.compact_finish(*begun) == 2
    journal.append(grant(4, "after"))
    journal.close()
    again = PermitJournal(tmp_path / "permits.journal")
    assert [g.key for g in again.grants(0)] == ["young", "meanwhile", "after"]
    assert again.highest_seq() == 4


# ------------------------------------------------------------------------------ what the
# mutants of bench/mutation.py found untested


def test_a_reservation_is_on_disk_before_reserve_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut right after ``reserve()`` must not lose the ceiling: the new file's data is
    fsynced before it replaces the old one, and the directory after. A power cut cannot be
    staged here, so the real fsync is wrapped to see what it is given."""
    synced: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        synced.append(("replace", 0))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "epoch"
    EpochReservation(path).reserve(7)
    assert synced == [("file", path.stat().st_ino), ("replace", 0), ("dir", tmp_path.stat().st_ino)]


def test_writes_leave_no_descriptor_open(tmp_path: Path) -> None:
    """The daemon writes state.json after every change for months: a descriptor lost per
    write would end in EMFILE."""
    before = len(os.listdir("/proc/self/fd"))
    for n in range(50):
        write_atomically(tmp_path / "state.json", b"{}")
        EpochReservation(tmp_path / "epoch").reserve(n * RESERVE_BLOCK * 2 + 1)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_write_that_fails_halfway_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "epoch"
    path.mkdir()  # the rename onto it fails, after the temporary file was written
    (path / "keep").write_text("so that the directory is not empty")
    with pytest.raises(DurableWriteError):
        write_atomically(path, b"12\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch"]


def test_reserving_up_to_the_ceiling_itself_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "epoch"
    r = EpochReservation(path)
    r.reserve(1)
    written = path.stat()
    r.reserve(r.ceiling)
    assert r.ceiling == 1 + RESERVE_BLOCK
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


def test_the_journal_syncs_what_was_appended_and_only_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's group commit calls ``sync()`` every 100 ms: one fdatasync when lines were
    appended since the last, none otherwise; ``close()`` syncs the last lines of a clean stop.
    (A crash of the host cannot be staged here: the real fdatasync is wrapped to count.)"""
    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    journal = PermitJournal(tmp_path / "state" / "permits.journal")  # the directory is new
    journal.sync()  # never opened: nothing to sync, nothing raised
    journal.open()
    journal.sync()
    assert synced == []
    journal.append(grant(1, "order-1"))
    journal.sync()
    assert len(synced) == 1
    journal.sync()
    assert len(synced) == 1
    journal.append(grant(2, "order-2"))
    journal.append(grant(3, "order-3"))
    journal.sync()
    assert len(synced) == 2
    journal.append(grant(4, "order-4"))
    journal.close()
    assert len(synced) == 3
    journal.close()  # twice: nothing happens
    assert len(synced) == 3
    assert [g.key for g in PermitJournal(journal.path).grants()] == [
        f"order-{n}" for n in (1, 2, 3, 4)
    ]


def test_the_journal_holds_one_descriptor_while_open_and_none_after(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for n in range(20):
        journal = PermitJournal(tmp_path / "permits.journal")
        journal.open()
        for k in range(5):
            journal.append(grant(n * 5 + k, f"order-{n}-{k}"))
        assert len(os.listdir("/proc/self/fd")) == before + 1
        journal.close()
    assert len(os.listdir("/proc/self/fd")) == before
    assert PermitJournal(tmp_path / "permits.journal").highest_seq() == 99


def test_a_journal_on_a_full_disk_refuses_and_a_failed_sync_is_tried_again() -> None:
    """/dev/full: every write fails with ENOSPC, every fdatasync with EINVAL."""
    journal = PermitJournal(Path("/dev/full"))
    journal.open()
    try:
        with pytest.raises(DurableWriteError, match="No space left"):
            journal.append(grant(1, "order-1"))
        assert not journal.dirty  # nothing was written
        journal.dirty = True  # as if lines were appended before the disk went bad
        with pytest.raises(DurableWriteError):
            journal.sync()
        assert journal.dirty  # the next round tries again
    finally:
        journal.close()


_SHORT_WRITES = """
import resource, signal, sys
from pathlib import Path
from supervisor.arbiter.durable import DurableWriteError, Grant, PermitJournal

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit: EFBIG, not death
journal = PermitJournal(Path(sys.argv[1]))
journal.open()
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
for n in range(1, 4):
    try:
        journal.append(Grant(n, f"order-{n}", "blue", 7, f"tok-{n}", 10**15))
        print("ok", journal.size)
    except DurableWriteError as exc:
        print(str(exc).split(": ", 1)[1], journal.size)
"""


def test_a_short_write_is_cut_off_so_the_journal_stays_whole_lines(tmp_path: Path) -> None:
    """A file size limit (RLIMIT_FSIZE, in a child process of its own) makes the kernel write
    part of a line: the part is cut off again and the append refused."""
    path = tmp_path / "permits.journal"
    line = len(grant(1, "order-1").line())
    done = subprocess.run(
        [sys.executable, "-c", _SHORT_WRITES, str(path), str(line + line // 2)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    said = done.stdout.splitlines()
    assert said[0] == f"ok {line}"
    assert said[1:] == [f"short write ({line // 2} of {line} bytes) {line}"] * 2, said
    assert path.stat().st_size == line
    assert [g.key for g in PermitJournal(path).grants()] == ["order-1"]


def test_a_grant_is_dead_from_the_millisecond_it_expires(tmp_path: Path) -> None:
    """Restoring one that expires this very millisecond would ask Redis for a TTL of 0 ms,
    which it refuses."""
    journal = PermitJournal(tmp_path / "permits.journal")
    journal.append(grant(1, "order-1", expires_ms=5_000))
    assert [g.key for g in journal.grants(now_ms=4_999)] == ["order-1"]
    assert list(journal.grants(now_ms=5_000)) == []
    journal.close()


def test_the_journal_is_compacted_only_past_its_threshold(tmp_path: Path) -> None:
    journal = PermitJournal(tmp_path / "permits.journal")
    journal.append(grant(1, "order-1"))
    assert not journal.needs_compaction()
    journal.size = COMPACT_BYTES
    assert not journal.needs_compaction()
    journal.size = COMPACT_BYTES + 1
    assert journal.needs_compaction()
    journal.close()


def test_a_compacted_journal_is_on_disk_before_it_replaces_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both halves fsync the new file with everything written to it, before the rename; the
    journal then appends to the new file, and knows its size (or it would compact again)."""
    path = tmp_path / "permits.journal"
    journal = PermitJournal(path)
    journal.open()
    journal.append(grant(1, "old", expires_ms=1))
    journal.append(grant(2, "young"))
    synced: list[int] = []  # the size of the file each fsync was given
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    before = len(os.listdir("/proc/self/fd"))
    tmp, upto, kept = journal.compact_begin()
    journal.append(grant(3, "meanwhile"))
    journal.compact_finish(tmp, upto, kept)
    young, meanwhile = (len(grant(n, k).line()) for n, k in ((2, "young"), (3, "meanwhile")))
    assert synced == [young, young + meanwhile]
    assert journal.size == path.stat().st_size == young + meanwhile
    assert not journal.needs_compaction()
    assert len(os.listdir("/proc/self/fd")) == before  # the old file's descriptor is closed
    journal.append(grant(4, "after"))
    journal.close()
    assert [g.key for g in PermitJournal(path).grants(0)] == ["young", "meanwhile", "after"]


def test_a_compaction_that_fails_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "permits.journal"
    journal = PermitJournal(path)
    journal.append(grant(1, "order-1"))
    begun = journal.compact_begin()
    path.unlink()
    path.mkdir()  # the journal cannot be read any more
    with pytest.raises(DurableWriteError):
        journal.compact_finish(*begun)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["permits.journal"]
    journal.close()


_COMPACT_PAST_LIMIT = """
import resource, signal, sys
from pathlib import Path
from supervisor.arbiter.durable import DurableWriteError, Grant, PermitJournal

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
journal = PermitJournal(Path(sys.argv[1]))
for n in range(1, 201):
    journal.append(Grant(n, f"order-{n}", "blue", 7, f"tok-{n}", 10**15))
resource.setrlimit(resource.RLIMIT_FSIZE, (journal.size // 2, resource.RLIM_INFINITY))
try:
    journal.compact_begin()
except DurableWriteError:
    print("refused")
"""


def test_a_compaction_cut_short_leaves_no_temporary_file(tmp_path: Path) -> None:
    """The copy cannot be written whole (a file size limit, in a child process of its own):
    refused, the half-written copy removed, the journal untouched."""
    path = tmp_path / "permits.journal"
    done = subprocess.run(
        [sys.executable, "-c", _COMPACT_PAST_LIMIT, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["refused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["permits.journal"]
    assert PermitJournal(path).highest_seq() == 200


def test_the_told_mark_only_rises_and_is_read_back(tmp_path: Path) -> None:
    """The next daemon compares Redis with it: a mark that went down would hide a Redis
    restored from an older dump."""
    path = tmp_path / "epoch.told"
    mark = ToldMark(path)
    assert mark.value == 0
    mark.write(10)
    mark.write(5)
    mark.write(10)
    assert ToldMark(path).value == 10
    mark.write(12)
    assert ToldMark(path).value == 12
    mark.close()
    broken = ToldMark(tmp_path / "missing" / "epoch.told")
    with pytest.raises(DurableWriteError):
        broken.write(3)
    assert broken.value == 0


def test_the_told_mark_holds_one_descriptor_and_lets_it_go(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for n in range(20):
        mark = ToldMark(tmp_path / "epoch.told")
        for k in range(1, 6):
            mark.write(n * 5 + k)
        assert len(os.listdir("/proc/self/fd")) == before + 1
        mark.close()
        mark.close()  # twice: nothing happens
    assert len(os.listdir("/proc/self/fd")) == before
    assert ToldMark(tmp_path / "epoch.told").value == 100
