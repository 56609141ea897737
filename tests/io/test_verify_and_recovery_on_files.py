"""Damage a real data directory by hand and watch ``craton verify`` and recovery react.

- a flipped byte inside a committed record: verify exits 1 naming file, offset and record;
  recovery refuses to open when the record lies after the latest checkpoint (which it checks
  in full), and a read of it is refused with the location when it lies before (recovery
  trusts the sealed prefix; reads always verify) — it is never dropped or served;
- the segment cut mid-record at the tail after a crash: verify warns but passes, recovery
  cuts the torn tail, and verify then passes clean on what remains;
- the tail cut inside a record that a checkpoint certified: recovery refuses to open;
- a replica's directory (one with a witness file): a log cut short of the witness's mark, at
  a record boundary or inside a record, and a whole record that does not check out at its
  tail, are DAMAGED with file and offset, as the node judges them, not a harmless torn tail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from craton.core import record
from craton.core.log import WITNESS_PATH, WITNESS_SLOT, encode_witness
from craton.io.local import LocalLog, LogHalted, LogRefused

RECORDS = 40


def run_verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "craton", "verify", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def segment(data_dir: Path) -> Path:
    return data_dir / "log" / "0000000000.seg"


def record_offsets(data: bytes) -> list[int]:
    offsets, at = [], 0
    while at < len(data):
        offsets.append(at)
        at += record.decode_header(data[at : at + record.HEADER_SIZE]).size
    return offsets


def fill(data_dir: Path, *, clean_close: bool) -> list[bytes]:
    """Append RECORDS records one by one; without a clean close, as if the process died."""
    bodies = [f"event {n} ".encode() * (n % 7 + 1) for n in range(RECORDS)]
    log = LocalLog(data_dir)
    for body in bodies:
        log.append(body)
    if clean_close:
        log.close()
    else:
        log.disk.close()  # no final checkpoint: what a kill -9 after the last ack leaves
    return bodies


def flip_in_record(data_dir: Path, position: int) -> int:
    data = bytearray(segment(data_dir).read_bytes())
    target = record_offsets(bytes(data))[position]
    data[target + record.HEADER_SIZE + 3] ^= 0x40
    segment(data_dir).write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("clean_close", [True, False], ids=["sealed", "unsealed"])
def test_flipped_byte_in_a_committed_record_is_named(tmp_path: Path, clean_close: bool) -> None:
    bodies = fill(tmp_path, clean_close=clean_close)
    assert run_verify(tmp_path).returncode == 0
    target = flip_in_record(tmp_path, 17)

    result = run_verify(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"log/0000000000.seg' offset {target}: record 17 is damaged" in result.stdout
    assert "Traceback" not in result.stderr
    where = f"offset {target}.* record 17"
    if not clean_close:  # no checkpoint: recovery checks every record and refuses to open
        with pytest.raises(LogHalted, match=where):
            LocalLog(tmp_path)
        return
    with LocalLog(tmp_path) as log:  # sealed prefix: reads verify and refuse the damage
        with pytest.raises(LogRefused, match=where):
            log.read(17)
        assert log.read(16) == bodies[16] and log.read(18) == bodies[18]
        assert log.append(b"still serving") == RECORDS


def test_torn_tail_is_cut_by_recovery_and_verify_then_passes(tmp_path: Path) -> None:
    bodies = fill(tmp_path, clean_close=False)
    data = segment(tmp_path).read_bytes()
    last = record_offsets(data)[-1]
    cut = last + (len(data) - last) // 2
    with segment(tmp_path).open("r+b") as file:
        file.truncate(cut)

    before = run_verify(tmp_path)
    assert before.returncode == 0, before.stdout + before.stderr
    assert "torn tail" in before.stderr

    log = LocalLog(tmp_path)
    assert log.head == RECORDS - 1
    assert log.read(RECORDS - 2) == bodies[RECORDS - 2]
    log.close()
    assert segment(tmp_path).stat().st_size == last

    after = run_verify(tmp_path)
    assert after.returncode == 0, after.stdout + after.stderr
    assert f"OK {tmp_path}: {RECORDS - 1} records" in after.stdout
    assert "torn" not in after.stderr


def test_cutting_into_certified_records_is_refused(tmp_path: Path) -> None:
    fill(tmp_path, clean_close=True)  # the closing checkpoint certifies every record
    data = segment(tmp_path).read_bytes()
    with segment(tmp_path).open("r+b") as file:
        file.truncate(record_offsets(data)[-1] + 5)
    result = run_verify(tmp_path)
    assert result.returncode == 1
    assert "certified durable" in result.stdout
    with pytest.raises(LogHalted, match="certified durable"):
        LocalLog(tmp_path)


def test_verify_refuses_a_folder_that_is_not_a_data_directory(tmp_path: Path) -> None:
    result = run_verify(tmp_path)
    assert result.returncode == 2
    assert "not a Craton data directory" in result.stderr


def test_verify_survives_one_damaged_superblock_copy(tmp_path: Path) -> None:
    fill(tmp_path, clean_close=True)
    copy = shutil.copy(tmp_path / "superblock", tmp_path / "superblock.bak")
    data = bytearray(Path(copy).read_bytes())
    data[100] ^= 0xFF  # inside copy 0
    (tmp_path / "superblock").write_bytes(bytes(data))
    assert run_verify(tmp_path).returncode == 0
    with LocalLog(tmp_path) as log:
        assert log.head == RECORDS


def witness(data_dir: Path, durable: int) -> None:
    """Give the directory a replica's witness: the log was durable up to ``durable``."""
    (data_dir / WITNESS_PATH).write_bytes(encode_witness(2, durable).ljust(2 * WITNESS_SLOT, b"\0"))


@pytest.mark.parametrize("cut", ["boundary", "mid-record"])
def test_a_replica_cut_below_its_witness_is_damaged(tmp_path: Path, cut: str) -> None:
    fill(tmp_path, clean_close=False)  # the superblock certifies little: the witness more
    data = segment(tmp_path).read_bytes()
    offsets = record_offsets(data)
    at = offsets[30] if cut == "boundary" else offsets[30] + 7
    with segment(tmp_path).open("r+b") as file:
        file.truncate(at)
    assert run_verify(tmp_path).returncode == 0, "without a witness the cut is a torn tail"

    witness(tmp_path, RECORDS)
    result = run_verify(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith(f"DAMAGED {tmp_path}: file 'log/0000000000.seg' offset ")
    if cut == "boundary":
        assert f"offset {at}: the log ends at record 30, but records below {RECORDS}" in (
            result.stdout
        )
        assert "witness file 'durable'" in result.stdout
    else:
        assert f"offset {offsets[30]}: record 30 is damaged" in result.stdout
        assert "certified durable" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_replica_whose_last_whole_record_is_damaged_is_damaged(tmp_path: Path) -> None:
    fill(tmp_path, clean_close=False)
    target = flip_in_record(tmp_path, RECORDS - 1)
    single = run_verify(tmp_path)
    assert single.returncode == 0 and "torn tail" in single.stderr, single.stdout + single.stderr

    witness(tmp_path, RECORDS - 1)  # the last record itself was never certified
    result = run_verify(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"offset {target}: record {RECORDS - 1} is damaged" in result.stdout
    assert "damage, not a torn write" in result.stdout


def test_a_replica_within_its_witness_verifies_ok(tmp_path: Path) -> None:
    fill(tmp_path, clean_close=False)
    witness(tmp_path, RECORDS)
    result = run_verify(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK {tmp_path}: {RECORDS} records" in result.stdout
