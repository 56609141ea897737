"""The checkers of protocol invariants (``craton.sim.checkers``), each fed a hand-made
violation: a quiet three-replica cluster runs to the end, then the tests hand the checker
messages and replica states that break one rule, and one that keeps it.

- a new view's log holds every op committed before it (``StartView``);
- a recovering replica vouches for no log (no ``PrepareOk``, ``DoViewChange`` or
  ``RecoveryResponse`` while it may lack ops);
- a backup that installed its view's log holds its primary's entries (state transfer
  installs only what the view's primary vouches for).
"""

from __future__ import annotations

import attrs
import pytest

from craton.core.gateway import Gateway
from craton.core.seam import Effect, Input, Submit, SubmitKind
from craton.core.vsr import codec
from craton.core.vsr.replica import Replica
from craton.core.wire.replica import (
    DoViewChange,
    Entry,
    PrepareOk,
    RecoveryResponse,
    StartView,
    StartViewChange,
)
from craton.sim.checkers import Checker
from craton.sim.cluster import Cluster
from tests.sim.test_vsr_scenarios import quiet_options


@pytest.fixture(name="cluster")
def finished_cluster() -> Cluster:
    cluster = Cluster(11, quiet_options(clients=2, requests=15, fault_ticks=400))
    result = cluster.run()
    assert result.result == "pass", result.violations
    return cluster


def fresh_checker(cluster: Cluster) -> Checker:
    """A checker that knows the cluster's committed history and has seen nothing fail."""
    checker = Checker(3, cluster._make_machine, cluster.profile.client_table_max)
    checker.canonical = list(cluster.checker.canonical)
    checker.commit_views = list(cluster.checker.commit_views)
    return checker


def start_view(
    cluster: Cluster, *, head: int, entries: tuple[Entry, ...], view: int | None = None
) -> bytes:
    """A StartView of the view after the one every op was committed in, unless told."""
    if view is None:
        view = cluster.nodes[0].replica.view + 1
    first = entries[0].op if entries else head
    return codec.encode_message(StartView(view, head, head, first, entries))


def persisted_views(monkeypatch: pytest.MonkeyPatch, view: int) -> None:
    """Every replica has persisted ``view`` as its log view (StartViews of views up to it
    may be sent)."""
    monkeypatch.setattr(Replica, "persisted_log_view", property(lambda _self: view))


def test_a_start_view_missing_committed_ops_is_a_violation(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    persisted_views(monkeypatch, 10)
    checker = fresh_checker(cluster)
    replica = cluster.nodes[0].replica
    committed = len(checker.canonical)
    last = [replica.entry(op) for op in range(committed - 2, committed)]
    checker.sent(0, replica, start_view(cluster, head=committed, entries=tuple(last)))
    assert checker.violations == [], "a StartView holding every committed op is fine"
    checker.sent(0, replica, start_view(cluster, head=committed - 1, entries=tuple(last[:1])))
    assert len(checker.violations) == 1
    assert f"ends at op {committed - 1}, but ops below {committed}" in checker.violations[0]
    other = attrs.evolve(last[0], hash=bytes(32))
    checker.sent(0, replica, start_view(cluster, head=committed, entries=(other, last[1])))
    assert len(checker.violations) == 2
    assert f"carries op {committed - 2} unlike the one committed" in checker.violations[1]


def test_a_stale_view_may_lack_ops_committed_in_a_later_view(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A view formed from the messages of a view that is over (a replica restarted and
    heard old DoViewChanges) may lack ops committed in a later view: no replica of the
    later view takes part in it. Ops committed in earlier views it must hold."""
    persisted_views(monkeypatch, 10)
    checker = fresh_checker(cluster)
    replica = cluster.nodes[0].replica
    committed = len(checker.canonical)
    assert committed >= 4, f"expected a few committed ops, got {committed}"
    checker.commit_views = [0] * (committed - 2) + [5, 5]  # the last two committed in view 5
    entries = (replica.entry(committed - 3),)
    checker.sent(0, replica, start_view(cluster, head=committed - 2, entries=entries, view=3))
    assert checker.violations == [], "view 3 need not hold the ops view 5 committed"
    checker.sent(0, replica, start_view(cluster, head=committed - 2, entries=entries, view=6))
    assert len(checker.violations) == 1
    assert (
        f"view 6 ends at op {committed - 2}, but ops below {committed}" in (checker.violations[0])
    )
    checker.sent(0, replica, start_view(cluster, head=committed - 3, entries=(), view=3))
    assert len(checker.violations) == 2, "view 3 must hold what views before it committed"


@pytest.mark.parametrize("kind", ["prepare_ok", "recovery_response"])
def test_a_recovering_replica_that_vouches_for_a_log_is_a_violation(
    cluster: Cluster, kind: str
) -> None:
    checker = fresh_checker(cluster)
    replica = cluster.nodes[1].replica
    message = (
        PrepareOk(replica.view, replica.log.durable - 1, 1)
        if kind == "prepare_ok"
        else RecoveryResponse(replica.view, 1, 7)
    )
    checker.sent(1, replica, codec.encode_message(message))
    assert checker.violations == [], "a replica with its log may acknowledge and answer"
    replica._recovering = True  # as if its recovery found damage
    checker.sent(1, replica, codec.encode_message(message))
    assert len(checker.violations) == 1 and "while recovering" in checker.violations[0]
    vote = StartViewChange(replica.persisted_view, 1)  # names no log: allowed
    checker.sent(1, replica, codec.encode_message(vote))
    assert len(checker.violations) == 1, checker.violations


def test_a_backup_holding_an_entry_its_primary_does_not_is_a_violation(cluster: Cluster) -> None:
    checker = fresh_checker(cluster)
    primary, backup = cluster.nodes[0].replica, cluster.nodes[1].replica
    if not primary.is_primary:
        primary, backup = backup, primary
    assert primary.is_primary and primary.head == backup.head, "expected a converged cluster"
    checker.agree_with_primary(1, backup, primary)
    assert checker.violations == [], "a converged backup agrees with its primary"
    op = backup.head - 1
    backup.commit = op  # the last op uncommitted on the backup, and another entry there
    index = op - backup.first_op
    backup.entries[index] = attrs.evolve(backup.entries[index], hash=bytes(32))
    checker.agree_with_primary(1, backup, primary)
    assert len(checker.violations) == 1
    assert f"holds an op {op} in view {backup.view} that its primary" in checker.violations[0]


class _SwallowsOneWrite(Gateway):
    """Takes the first write submitted to it and never answers it."""

    swallowed = False

    def step(self, event: Input) -> list[Effect]:
        if isinstance(event, Submit) and event.kind is SubmitKind.WRITE and not self.swallowed:
            type(self).swallowed = True
            return []
        return super().step(event)


def test_a_submit_a_gateway_never_answers_is_a_violation() -> None:
    """Once the healed cluster settled, every submit has its answer: one left open fails
    the run, naming the replica, the client and the request."""
    result = Cluster(3, quiet_options(clients=2, requests=6, fault_ticks=300)).run()
    assert result.result == "pass", result.violations
    _SwallowsOneWrite.swallowed = False
    options = quiet_options(clients=2, requests=6, fault_ticks=300)
    result = Cluster(3, options, gateway_factory=_SwallowsOneWrite).run()
    assert _SwallowsOneWrite.swallowed
    assert result.result == "correctness", result
    assert "gateway never answered a write submit" in result.violations[0], result.violations


def test_a_vote_without_a_committed_op_its_sender_acknowledged_is_a_violation(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica acknowledged op X, which is committed; its DoViewChange must carry a log
    that holds X (a commit counted that acknowledgement)."""
    persisted_views(monkeypatch, 10)
    monkeypatch.setattr(Replica, "persisted_view", property(lambda _self: 10))
    checker = fresh_checker(cluster)
    replica = cluster.nodes[1].replica
    committed = len(checker.canonical)
    op = committed - 2
    view = replica.view
    checker.sent(1, replica, codec.encode_message(PrepareOk(view, op, 1)))
    vote = DoViewChange(view + 1, view, committed, committed, 1, committed, ())
    checker.sent(1, replica, codec.encode_message(vote))
    assert checker.violations == [], "a vote whose log holds the acknowledged op is fine"
    short = DoViewChange(view + 1, view, op, op, 1, op, ())
    checker.sent(1, replica, codec.encode_message(short))
    assert checker.violations == [
        f"replica 1: DoViewChange for view {view + 1} ends at op {op}, without op {op}, "
        "which it acknowledged and is committed"
    ]
