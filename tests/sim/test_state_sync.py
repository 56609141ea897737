"""What a replica checks before it installs a state-sync checkpoint.

A cluster runs until its replicas hold durable checkpoint states; then one replica is handed
``NewCheckpoint`` offers built from another's real state file, each with one thing wrong,
and must turn every one down naming what is wrong (the swarm and the planted bug
``install-without-verifying`` show the same end to end). A state sent in parts is put
together only from consecutive parts of one state of one sender, and a sender whose state
file ends early is turned down like a state that does not check out.
"""

from __future__ import annotations

import attrs
import pytest

from craton.core import superblock
from craton.core.seal import Sealer, state_message
from craton.core.storage import DerivedDataError, MemoryBlob, MemoryStorage
from craton.core.vsr import codec
from craton.core.vsr.checkpoint import open_checkpoint
from craton.core.vsr.replica import CheckpointOffer, Replica, StateParts
from craton.core.wire.replica import NewCheckpoint
from craton.sim.cluster import Cluster
from tests.sim.test_vsr_scenarios import assert_clean, quiet_options


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    cluster = Cluster(7, quiet_options(clients=3, requests=60, fault_ticks=2_500))
    assert_clean(cluster.run())
    return cluster


def _offer(cluster: Cluster, sender: int) -> CheckpointOffer:
    replica = cluster.nodes[sender].replica
    durable = replica.durable_state
    assert durable is not None, "expected a durable checkpoint state"
    data = cluster.nodes[sender].disk.contents(superblock.state_path(durable.op))
    message = state_message(durable.op, durable.chain_hash, durable.digest)
    part = NewCheckpoint(
        replica.view,
        replica.commit,
        replica.head,
        sender,
        durable.op,
        durable.chain_hash,
        durable.digest,
        replica.log.public_key,
        replica.log.sign(message),
        len(data),
        0,
        data,
    )
    return CheckpointOffer.of(part, (data,))


def _verdict(receiver: Replica, offer: CheckpointOffer) -> str:
    checked = receiver._verify_checkpoint(offer)
    return checked if isinstance(checked, str) else "accepted"


def test_a_genuine_state_is_accepted_and_restores_the_senders_machine(cluster: Cluster) -> None:
    offer = _offer(cluster, 0)
    checked = cluster.nodes[1].replica._verify_checkpoint(offer)
    assert not isinstance(checked, str), checked
    opened, machine = checked
    assert opened.op == offer.op and opened.chain_hash == cluster.checker.canonical[offer.op - 1]
    sent = open_checkpoint(b"".join(offer.parts), offer.digest).machine_snapshot
    assert machine.snapshot() == sent, "the restored machine differs from the one sent"


def test_every_tampered_offer_is_refused_naming_why(cluster: Cluster) -> None:
    receiver = cluster.nodes[1].replica
    offer = _offer(cluster, 0)
    flipped = bytearray(b"".join(offer.parts))
    flipped[len(flipped) // 2] ^= 0x10
    stranger = Sealer(bytes(range(32)))
    other_op = offer.op - 32
    resigned = state_message(other_op, offer.chain_hash, offer.digest)
    cases = {
        "a flipped byte": attrs.evolve(offer, parts=(bytes(flipped),)),
        "a wrong signature": attrs.evolve(offer, signature=bytes(64)),
        "a stranger's key": attrs.evolve(
            offer,
            public_key=stranger.public_key,
            signature=stranger.sign(state_message(offer.op, offer.chain_hash, offer.digest)),
        ),
        "another replica's key": attrs.evolve(offer, replica=2),
        "another op, validly signed": attrs.evolve(
            offer, op=other_op, signature=cluster.nodes[0].replica.log.sign(resigned)
        ),
    }
    verdicts = {name: _verdict(receiver, case) for name, case in cases.items()}
    assert verdicts == {
        "a flipped byte": "checkpoint state does not match its digest",
        "a wrong signature": "the signature does not verify",
        "a stranger's key": "signed by a key that is not the sender's",
        "another replica's key": "signed by a key that is not the sender's",
        "another op, validly signed": "the state is not the one the signature names",
    }


def _parts(cluster: Cluster, sender: int, size: int) -> list[NewCheckpoint]:
    """The sender's durable state as the parts it sends, ``size`` bytes each."""
    whole = _offer(cluster, sender)
    state = b"".join(whole.parts)
    replica = cluster.nodes[sender].replica
    return [
        NewCheckpoint(
            whole.view,
            replica.commit,
            replica.head,
            sender,
            whole.op,
            whole.chain_hash,
            whole.digest,
            whole.public_key,
            whole.signature,
            len(state),
            offset,
            state[offset : offset + size],
        )
        for offset in range(0, len(state), size)
    ]


def test_a_state_in_parts_is_put_together_in_order_and_only_in_order(cluster: Cluster) -> None:
    receiver = cluster.nodes[1].replica
    receiver._assembly = None
    parts = _parts(cluster, 0, 100)
    assert len(parts) >= 3, len(parts)
    # The first part starts an assembly and asks the sender for the next one.
    asked = receiver._assemble(parts[0])
    assert isinstance(asked, list) and any("state_part" in str(e) for e in asked), asked
    assert receiver._assemble(parts[2]) == [], "a part past the next one is dropped"
    assert receiver._assemble(parts[0]) == [], "a repeat within the quiet window: nothing"
    # A repeat later says the part asked for (or its answer) was lost: it is asked again.
    receiver._ticks = receiver._get_state_quiet_until
    again = receiver._assemble(parts[0])
    assert isinstance(again, list) and len(again) == 1, again
    assert "state_offset=100" in repr(codec.decode_message(again[0].payload)), again
    for part in parts[1:-1]:
        assert isinstance(receiver._assemble(part), list)
    whole = receiver._assemble(parts[-1])
    assert isinstance(whole, CheckpointOffer), whole
    assert len(whole.parts) == len(parts), "expected the parts kept as they came"
    joined = attrs.evolve(whole, parts=(b"".join(whole.parts),))
    assert joined == _offer(cluster, 0), "the parts put together are not the state sent"
    assert _verdict(receiver, whole) == "accepted"
    # The same state from another replica (the same bytes: its digest says so) goes on
    # with the parts held; a part of another state is dropped, and the assembly goes on.
    receiver._assemble(parts[0])
    from_replica_2 = _parts(cluster, 2, 100)
    assert from_replica_2[0].digest == parts[0].digest, "expected the same state on replica 2"
    assert isinstance(receiver._assemble(from_replica_2[1]), list)
    assert receiver._assembly is not None and receiver._assembly.received == 200
    assert receiver._assembly.sender == 2, "the next part is asked of the latest sender"
    other = attrs.evolve(from_replica_2[2], digest=bytes(32))
    assert receiver._assemble(other) == [] and receiver._assembly.received == 200


def test_a_state_in_parts_is_kept_in_derived_storage_not_in_memory(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parts go into a blob of the receiver's derived storage as they come (a file of
    the data directory on a node): the offer holds the blob and the parts' sizes only."""
    receiver = cluster.nodes[1].replica
    receiver._assembly = None
    opened: list[tuple[str, MemoryBlob]] = []

    class Recording(MemoryStorage):
        def open_blob(self, name: str) -> MemoryBlob:
            blob = super().open_blob(name)
            opened.append((name, blob))
            return blob

    recording = Recording()
    monkeypatch.setattr(type(receiver.machine), "storage", property(lambda _: recording))
    parts = _parts(cluster, 0, 100)
    for part in parts[:-1]:
        assert isinstance(receiver._assemble(part), list)
    whole = receiver._assemble(parts[-1])
    assert isinstance(whole, CheckpointOffer) and isinstance(whole.parts, StateParts), whole
    assert [name for name, _ in opened] == ["incoming-state"], opened
    state = b"".join(part.state for part in parts)
    assert opened[0][1].read(0, len(state)) == state and whole.size == len(state)
    assert list(whole.parts) == [part.state for part in parts], "read back as they came"
    assert _verdict(receiver, whole) == "accepted"
    blob = opened[0][1]
    blob._data[150] ^= 1  # the derived file changed under the replica after the check
    with pytest.raises(DerivedDataError, match="incoming state: part at byte 100 changed"):
        list(whole.parts)
    blob._data[150] ^= 1
    assert _verdict(receiver, whole) == "accepted"


def test_a_state_file_shorter_than_its_size_is_rejected_and_another_replica_asked(
    cluster: Cluster,
) -> None:
    receiver = cluster.nodes[1].replica
    receiver._assembly = None  # whatever an earlier test left
    parts = _parts(cluster, 0, 100)
    receiver._assemble(parts[0])
    empty = attrs.evolve(parts[1], state=b"")  # the sender read nothing past the first part
    answer = receiver._assemble(empty)
    assert isinstance(answer, list) and len(answer) == 1, answer
    assert "checkpoint_rejected" in str(answer[0]) and "ends at byte 100" in str(answer[0])
    assert receiver._assembly is None and receiver._avoid_source == 0
