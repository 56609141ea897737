"""Derived storage (``craton.core.storage``): blobs in memory and in files behave the same,
the event store keeps its events' bytes there and reads them back checked, and what a
previous process left is never trusted."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import craton.core.event_store as es
from craton.core.event_store import EventStore
from craton.core.storage import BlobFile, DerivedDataError, MemoryBlob, MemoryStorage
from craton.core.wire.messages import DataClass, ReadEventsReply
from craton.io import derived
from craton.io.derived import FileStorage
from tests.core.test_state_machines import STATEFUL, EventStoreModel

# an append (its bytes) or a read (a start and a length, both as fractions of the size)
steps = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.tuples(st.floats(0, 1), st.floats(0, 1)),
    ),
    max_size=60,
)


def exercise(blob: BlobFile, script: list[bytes | tuple[float, float]]) -> None:
    """Run ``script`` on ``blob`` and on a bytearray, and require the same answers."""
    model = bytearray()
    for step in script:
        if isinstance(step, bytes):
            assert blob.append(step) == len(model), "an append must start at the old size"
            model += step
        else:
            offset = int(step[0] * len(model))
            size = int(step[1] * (len(model) - offset))
            got = blob.read(offset, size)
            assert got == bytes(model[offset : offset + size]), f"read {size} at {offset}"
        assert blob.size == len(model)


@given(script=steps)
def test_a_memory_blob_returns_what_was_appended(script: list[bytes | tuple[float, float]]) -> None:
    exercise(MemoryBlob(), script)


@given(script=steps, buffer_bytes=st.integers(1, 64))
def test_a_file_blob_returns_what_was_appended(
    script: list[bytes | tuple[float, float]], buffer_bytes: int
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="craton-derived-"))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(derived, "WRITE_BUFFER_BYTES", buffer_bytes)
            blob = FileStorage(folder).open_blob("test")
            exercise(blob, script)
            blob.close()
        assert not list(folder.iterdir()), "a closed blob's file must be gone"
    finally:
        shutil.rmtree(folder)


def test_file_storage_removes_what_an_earlier_process_left(tmp_path: Path) -> None:
    (tmp_path / "events-1.blob").write_bytes(b"old")
    (tmp_path / "keep.txt").write_bytes(b"not a blob")
    storage = FileStorage(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    first, second = storage.open_blob("events"), storage.open_blob("events")
    first.append(b"a")
    second.append(b"b")
    assert (first.read(0, 1), second.read(0, 1)) == (b"a", b"b"), "blobs must not share a file"
    first.close()
    first.close()  # a second close is harmless
    second.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def filled_store(storage: FileStorage | MemoryStorage) -> EventStore:
    store = EventStore(storage)
    store.apply(0, es.encode_create_stream(1, "orders", DataClass.PUBLIC))
    for op in range(1, 40):
        store.apply(op, es.encode_append(1, "orders", [f"event {op}".encode() * 3] * 2))
    return store


def test_the_event_store_on_files_matches_the_one_in_memory(tmp_path: Path) -> None:
    on_files, in_memory = filled_store(FileStorage(tmp_path)), filled_store(MemoryStorage())
    assert on_files.digest() == in_memory.digest()
    assert on_files.snapshot() == in_memory.snapshot()
    body = es.encode_read(1, "orders", 5, 7, 10_000)
    assert on_files.apply(40, body) == in_memory.apply(40, body)
    restored = EventStore.restore(on_files.snapshot(), on_files.storage)
    assert restored.snapshot() == in_memory.snapshot()
    blob_files = sorted(p.name for p in tmp_path.iterdir())
    assert blob_files == ["events-1.blob", "events-2.blob"], blob_files
    on_files.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events-2.blob"]


def test_bytes_damaged_on_disk_are_refused_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(derived, "WRITE_BUFFER_BYTES", 1)  # every append reaches the file
    store = filled_store(FileStorage(tmp_path))
    (path,) = tmp_path.iterdir()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DerivedDataError, match="do not match their checksum"):
        store.apply(41, es.encode_read(1, "orders", 0, 100, 1 << 20))
    with pytest.raises(DerivedDataError, match="do not match their checksum"):
        store.snapshot()
    # what reads never reach is served as before
    reply = es.decode_reply(store.apply(42, es.encode_read(1, "orders", 0, 1, 10_000)))
    assert isinstance(reply, ReadEventsReply) and reply.events == (b"event 1" * 3,)


class EventStoreOnFilesModel(EventStoreModel):
    """The event store's model test, its events kept in files written a few bytes at a
    time (the write buffer is tiny, so reads meet written and buffered bytes alike)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="craton-derived-"))
        self.patch = pytest.MonkeyPatch()
        self.patch.setattr(derived, "WRITE_BUFFER_BYTES", 16)
        super().__init__()
        self.machine = EventStore(FileStorage(self.folder))

    def teardown(self) -> None:
        self.machine.close()
        self.patch.undo()
        shutil.rmtree(self.folder)


TestEventStoreOnFilesModel = EventStoreOnFilesModel.TestCase
TestEventStoreOnFilesModel.settings = STATEFUL
