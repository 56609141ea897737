"""The node's open-files budget: how many client connections its descriptor limit can hold.

At start-up ``plan_descriptors`` raises the soft ``RLIMIT_NOFILE`` to the hard limit (an
unprivileged process may; the hard limit itself is the operator's: systemd
``LimitNOFILE=``, Docker ``ulimits``), then divides what it got:

- a reserve for the node itself (``reserve_fds``): the event loop's own descriptors
  (epoll, its wake-up pipe, the listening sockets, standard streams), the data directory's
  files (log segments and state files present at start-up, plus room for the segments it
  adds while it runs, the superblock, the lock, the witness, the ``/ready`` probe file and
  the state machine's derived-data blobs),
  the connections to and from every peer, and the probe connections of both ports
  (``HTTP_CONNECTIONS_MAX`` on the main port, ``METRICS_CONNECTIONS_FDS`` on the metrics
  port) so that ``/health`` answers however many clients are connected;
- the rest for clients. Each client slot needs two descriptors' room: the main port holds
  up to ``VDB_MAX_CONNECTIONS`` client connections and, besides them, up to as many
  newcomers that have not said what they are yet (``craton.net.server``).

When ``VDB_MAX_CONNECTIONS`` does not fit, it is clamped to what does and the node logs one
``server.max_connections_clamped`` warning naming both numbers and how to raise the limit:
a node that serves fewer clients than asked is more use than one that refuses to start, and
one that accepts more than it can hold stops answering its probes. When not even the
reserve fits, the node refuses to start (``DescriptorError``).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import attrs

from craton.net.server import HTTP_CONNECTIONS_MAX

EVENT_LOOP_FDS = 16  # epoll, wake-up pipe, signal pipe, 2 ports x 2 families, stdio, spare
STATE_FILE_FDS = 8  # superblock, lock, witness, /ready's probe file, directory fsyncs
# the machine's blob, its successor while a state is restored, and a replaced one that a
# state being written still reads
DERIVED_FILE_FDS = 3
LOG_SEGMENT_GROWTH_FDS = 32  # log segments a running node may add (each one descriptor)
PEER_FDS_PER_PEER = 2  # a connection to each peer and one from it
METRICS_CONNECTIONS_FDS = 16  # scrapes and probes on the metrics port at once
FDS_PER_CLIENT_SLOT = 2  # a client connection and, beside it, a newcomer (see above)
FILES_COUNT_MAX = 1_000_000  # data-directory files counted at most (a bound on the walk)
UNLIMITED_TARGET_FDS = 1_048_576  # the soft limit asked for when the hard one is unlimited


class DescriptorError(Exception):
    """The open-files limit cannot even hold the node's own descriptors."""


@attrs.frozen
class DescriptorPlan:
    limit_fds: int  # the soft RLIMIT_NOFILE after raising it
    raised_from_fds: int | None  # the soft limit before, when it was raised
    reserve_fds: int
    max_connections: int  # VDB_MAX_CONNECTIONS, or what the limit allows if lower
    asked_connections: int  # VDB_MAX_CONNECTIONS as configured

    @property
    def clamped(self) -> bool:
        return self.max_connections < self.asked_connections

    def needed_fds(self, connections: int) -> int:
        """The open-files limit that holds ``connections`` client connections."""
        return self.reserve_fds + FDS_PER_CLIENT_SLOT * connections


def plan_descriptors(asked_connections: int, data_dir: Path, peers: int) -> DescriptorPlan:
    """Raise the soft limit and fit ``asked_connections`` in it (see the module's rules)."""
    limit_fds, raised_from_fds = raise_open_files_limit()
    reserve = reserve_fds(count_files(data_dir), peers)
    allowed = (limit_fds - reserve) // FDS_PER_CLIENT_SLOT
    if allowed < 1:
        raise DescriptorError(
            f"the open-files limit ({limit_fds}) is below what the node needs for itself "
            f"and one client ({reserve + FDS_PER_CLIENT_SLOT}); raise it (systemd "
            "LimitNOFILE=, Docker ulimits nofile, ulimit -n; see docs/DEPLOYMENT.md)"
        )
    return DescriptorPlan(
        limit_fds=limit_fds,
        raised_from_fds=raised_from_fds,
        reserve_fds=reserve,
        max_connections=min(asked_connections, allowed),
        asked_connections=asked_connections,
    )


def raise_open_files_limit() -> tuple[int, int | None]:
    """The soft ``RLIMIT_NOFILE`` after raising it to the hard limit, and the soft limit
    before when it was raised (None when it was already there or could not be)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit is not a valid soft one on Linux (fs.nr_open caps it).
    target = UNLIMITED_TARGET_FDS if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return (target if soft == resource.RLIM_INFINITY else soft), None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return soft, None
    return target, soft


def reserve_fds(data_files: int, peers: int) -> int:
    """Descriptors the node keeps for itself, beside its client connections."""
    return (
        EVENT_LOOP_FDS
        + STATE_FILE_FDS
        + DERIVED_FILE_FDS
        + data_files
        + LOG_SEGMENT_GROWTH_FDS
        + PEER_FDS_PER_PEER * peers
        + HTTP_CONNECTIONS_MAX
        + METRICS_CONNECTIONS_FDS
    )


def count_files(data_dir: Path) -> int:
    """Regular files under ``data_dir`` (0 when it does not exist yet), at most
    ``FILES_COUNT_MAX``: each may hold a descriptor once the log is open."""
    count = 0
    for _folder, _dirs, files in os.walk(data_dir):
        count += len(files)
        if count >= FILES_COUNT_MAX:
            return FILES_COUNT_MAX
    return count
