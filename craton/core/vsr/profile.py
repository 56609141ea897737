"""Replica profiles: the sizes and timeouts a replica runs with, declared once.

A production node (``craton.net.node``) builds its ``ReplicaConfig`` from ``PRODUCTION``;
the simulator builds its replicas from ``SIMULATION``, which is ``PRODUCTION`` with sizes
shrunk so that rare events (client-table evictions, checkpoints, segment rolls, view-change
timeouts) happen within a short seeded run, and from ``PRODUCTION`` itself for a share of
its seeds (``craton sim run --sizes production``).

Rules it keeps:
- A profile names sizes, never behaviour: both profiles have the same features, checkpoint
  states included (``checkpoint_states`` is on in both; ``test_profiles`` checks that no
  feature differs).
- ``client_table_max`` decides, when a log is replayed, which requests of evicted sessions
  are refused: it is part of what a data directory means and never changes for one.
- Timeouts are in ticks; a node ticks every ``TICK_MS`` (the simulator's tick is as long).
"""

from __future__ import annotations

import attrs

from craton.core.vsr.replica import ReplicaConfig
from craton.core.wire.replica import SUFFIX_ENTRIES_MAX

TICK_MS = 10  # one core tick, in production and in simulated time
PROFILE_NAMES = ("shrunk", "production")


@attrs.frozen
class ReplicaProfile:
    name: str
    pipeline_max: int  # uncommitted ops in flight: a group commit's size
    heartbeat_ticks: int  # a primary's commit heartbeat
    prepare_retry_ticks: int
    view_change_timeout_ticks: int  # a backup gives up on a silent primary after this ...
    view_change_jitter_ticks: int  # ... plus up to this, drawn per timer
    view_change_retry_ticks: int
    repair_ticks: int
    client_table_max: int  # sessions in the replica's client table
    checkpoint_interval_ops: int  # committed ops between sealed checkpoints
    segment_size_max: int  # bytes of one log segment file
    checkpoint_states: bool
    state_part_bytes: int  # checkpoint state bytes in one NewCheckpoint

    def __attrs_post_init__(self) -> None:
        assert self.name in PROFILE_NAMES, self.name
        assert 1 <= self.pipeline_max <= SUFFIX_ENTRIES_MAX
        assert self.heartbeat_ticks < self.view_change_timeout_ticks
        assert self.client_table_max >= 1 and self.checkpoint_interval_ops >= 1

    def config(
        self,
        *,
        replica_id: int,
        replica_count: int,
        seal_seed: bytes,
        joined: bool = False,
        peer_public_keys: tuple[bytes, ...] = (),
    ) -> ReplicaConfig:
        """The configuration of replica ``replica_id`` of ``replica_count`` in this profile."""
        return ReplicaConfig(
            replica_id=replica_id,
            replica_count=replica_count,
            seal_seed=seal_seed,
            joined=joined,
            peer_public_keys=peer_public_keys,
            pipeline_max=self.pipeline_max,
            heartbeat_ticks=self.heartbeat_ticks,
            prepare_retry_ticks=self.prepare_retry_ticks,
            view_change_timeout_ticks=self.view_change_timeout_ticks,
            view_change_jitter_ticks=self.view_change_jitter_ticks,
            view_change_retry_ticks=self.view_change_retry_ticks,
            repair_ticks=self.repair_ticks,
            client_table_max=self.client_table_max,
            checkpoint_interval_ops=self.checkpoint_interval_ops,
            segment_size_max=self.segment_size_max,
            checkpoint_states=self.checkpoint_states,
            state_part_bytes=self.state_part_bytes,
        )


PRODUCTION = ReplicaProfile(
    name="production",
    pipeline_max=SUFFIX_ENTRIES_MAX,
    heartbeat_ticks=5,  # 50 ms
    prepare_retry_ticks=8,
    view_change_timeout_ticks=100,  # 1 s ...
    view_change_jitter_ticks=50,  # ... plus up to 0.5 s
    view_change_retry_ticks=60,
    repair_ticks=10,
    client_table_max=4096,
    checkpoint_interval_ops=1024,
    segment_size_max=64 * 1024 * 1024,
    checkpoint_states=True,
    state_part_bytes=8 * 1024 * 1024,
)

SIMULATION = attrs.evolve(
    PRODUCTION,
    name="shrunk",
    pipeline_max=8,
    heartbeat_ticks=4,
    view_change_timeout_ticks=40,
    view_change_jitter_ticks=30,
    client_table_max=3,  # clients are evicted and must register again
    checkpoint_interval_ops=32,  # replicas seal a checkpoint at every multiple of this op
    segment_size_max=256 * 1024,
    state_part_bytes=1024,  # states of several parts: written and read a part at a time
)

PROFILES = {profile.name: profile for profile in (SIMULATION, PRODUCTION)}
