"""Scenarios: fault schedules that build a hard case on purpose.

The swarm's faults are drawn independently, tick by tick and message by message, and some
situations in which a protocol rule matters need several of them in a row, in order, aimed
at particular replicas: random draws reach them once in thousands of seeds, if ever. A
scenario watches the cluster (who is primary, who is up) and strings the faults together
itself, with timings drawn from its own stream. It injects nothing the network cannot
already do (partitions and clogged paths); it only chooses when and where.

- ``stale-answer``: a backup is cut off and falls behind; when it comes back, the paths
  from the primary to every other backup clog, so the ops the primary prepares from then
  on reach no one in time, and the primary's state answers (``NewState``) to the lagging
  backup are held back past the view change that follows, with the clients cut off for a
  while. The answers then reach a backup that has moved on to a new view, carrying an old
  view's entries that the new view replaced: only the rule that a ``NewState`` is taken
  from the replica's own view keeps them out.
- ``isolated-suffix``: the primary's paths to every backup clog while clients write, so it
  prepares a suffix nobody else holds; then it is cut off long enough for the others to
  change view (with five replicas or more, twice: the first new primary is cut off too).
  Its prepares of the old view arrive late, and it comes back with a log that competes
  with the new view's and must be cut to it.

A seed runs at most one scenario (``SCENARIO_SHARE`` of the seeds, drawn from a stream of
their own so that the other draws of a seed are the same with one or without). Each step
a scenario takes is counted in the run's faults (``scenario.*``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from craton.core.prng import Prng
from craton.core.vsr import codec
from craton.core.vsr.replica import Replica, Status
from craton.core.wire.errors import DecodeError
from craton.core.wire.replica import NewState
from craton.sim.network import LATENCY_TICKS_LIMIT, SimNetwork

SCENARIO_NAMES = ("none", "stale-answer", "isolated-suffix")
SCENARIO_SHARE = 0.2  # of the seeds of clusters of three replicas or more
SCENARIO_FAULTS = (
    "scenario.lagging_cut",  # a backup cut off to fall behind
    "scenario.paths_clogged",  # a primary's paths to its backups clogged
    "scenario.answers_held",  # a state answer held back past a view change
    "scenario.clients_cut",  # the clients cut off from every replica
    "scenario.primary_cut",  # a primary holding a suffix nobody else has, cut off
)
WARM_COMMITS = 2  # a scenario starts once the primary has committed this many ops
GIVE_UP_TICKS = 600  # a step whose situation does not come about within this is dropped


@attrs.frozen
class ScenarioPlan:
    """What a seed's scenario is and when it may start, in ticks of the fault phase."""

    name: str = "none"
    start_tick: int = 0

    def __attrs_post_init__(self) -> None:
        if self.name not in SCENARIO_NAMES:
            raise ValueError(f"scenario must be one of {', '.join(SCENARIO_NAMES)}: {self!r}")
        if self.start_tick < 0:
            raise ValueError(f"start_tick must not be negative: {self!r}")

    @classmethod
    def draw(
        cls, prng: Prng, replica_count: int, fault_ticks: int, *, name: str | None = None
    ) -> ScenarioPlan:
        """A seed's plan: ``SCENARIO_SHARE`` of clusters of three replicas or more run one;
        ``name`` chooses it instead (``"none"``: none), with the start tick still drawn."""
        drawn = replica_count >= 3 and prng.chance(SCENARIO_SHARE)
        chosen = prng.choice(SCENARIO_NAMES[1:])
        start = prng.between(100, max(100, fault_ticks // 2))
        if name is None:
            name = chosen if drawn else "none"
        if name == "none" or replica_count < 3:
            return NO_SCENARIO
        return cls(name, start)


NO_SCENARIO = ScenarioPlan()


class Scenario:
    """Runs one seed's ``ScenarioPlan`` against a cluster's network, once per tick."""

    def __init__(
        self,
        plan: ScenarioPlan,
        prng: Prng,
        network: SimNetwork,
        replicas: Callable[[], Sequence[Replica | None]],  # None: down or paused
        now: Callable[[], int],
        log: Callable[[str], None],
        pause: Callable[[int, int], None],  # (replica, ticks it stays frozen)
    ) -> None:
        self.plan = plan
        self._log = log
        self._pause = pause
        self._prng = prng
        self._network = network
        self._replicas = replicas
        self._now = now
        self.faults: dict[str, int] = dict.fromkeys(SCENARIO_FAULTS, 0)
        self._step = "wait" if plan.name != "none" else "done"
        self._until = 0
        self._primary = -1
        self._target = -1  # the lagging backup, or the first new primary
        self._hold_until = 0  # state answers to the target are held until this tick
        self._hold_ticks = 0
        self._give_up = 0
        self._clients_cut = False

    @property
    def staging(self) -> bool:
        """Between its first step and its last: the drawn faults had better wait."""
        return self._step not in ("wait", "done")

    def stop(self) -> None:
        """The fault phase is over: take no further step."""
        self._step = "done"
        self._hold_until = 0

    def tick(self) -> None:
        if self._step == "done":
            return
        now = self._now()
        if self._step == "wait":
            if now >= self.plan.start_tick:
                self._begin(now)
        elif now >= self._until:
            if self.plan.name == "stale-answer":
                self._stale_answer_next(now)
            else:
                self._isolated_suffix_next(now)

    def outbound(self, src: int, dst: int, payload: bytes) -> None:
        """Called as a replica's message leaves: a state answer to the lagging backup, while
        answers are held, is delayed past the view change."""
        if src != self._primary or dst != self._target or self._now() >= self._hold_until:
            return
        try:
            message = codec.decode_message(payload)
        except DecodeError:
            return
        if not isinstance(message, NewState):
            return
        self._network.clog(src, dst, duration_ticks=1, delay_ticks=self._hold_ticks)
        self.faults["scenario.answers_held"] += 1
        self._log(f"scenario: r{src}'s NewState to r{dst} held back {self._hold_ticks} ticks")
        uncommitted = any(entry.op >= message.commit for entry in message.entries)
        if uncommitted and not self._clients_cut:
            # It carries ops the view has not committed: keep the clients away until the
            # view has changed, so the new view does not soon overwrite what it lacks.
            self._clients_cut = True
            self._cut_clients(self._prng.between(200, 600))

    # --- the steps ---------------------------------------------------------------------------

    def _normal_primary(self) -> int | None:
        """The primary every running replica follows, in normal status, all of them up."""
        replicas = self._replicas()
        if any(replica is None for replica in replicas):
            return None
        live = [replica for replica in replicas if replica is not None]
        if any(replica.status is not Status.NORMAL for replica in live):
            return None
        views = {replica.view for replica in live}
        if len(views) != 1:
            return None
        primary = live[0].primary
        if live[primary].commit < WARM_COMMITS:
            return None
        return primary

    def _view(self) -> int:
        return max(replica.view for replica in self._replicas() if replica is not None)

    def _begin(self, now: int) -> None:
        primary = self._normal_primary()
        if primary is None:
            return  # try again next tick
        self._primary = primary
        backups = [index for index in range(self._network.replica_count) if index != primary]
        if self.plan.name == "stale-answer":
            # Frozen, not cut off: a replica cut off but running would start view changes of
            # its own, and a restarted one would recover the view's whole log at once; a
            # frozen one comes back in its view, behind, and asks its primary for the rest.
            # Not the next view's primary: the lagging backup must take a log, not choose one.
            view = self._view()
            backups = [b for b in backups if b != (view + 1) % self._network.replica_count]
            self._target = self._prng.choice(backups)
            down = self._prng.between(60, 300)
            self._pause(self._target, down)
            self.faults["scenario.lagging_cut"] += 1
            self._log(f"scenario: r{self._target} frozen for {down} ticks to fall behind")
            self._step, self._until = "lagging", now + down
            self._give_up = now + down + GIVE_UP_TICKS
        else:
            self._clog_backups(self._prng.between(30, 150), now)
            self._step = "suffix"

    def _stale_answer_next(self, now: int) -> None:
        if self._step == "lagging":
            # Once the lagging backup is back, in normal status and behind its primary: the
            # primary's new ops reach no other backup in time, and its answers to the
            # lagging one are held past the view change that follows.
            primary = self._normal_primary()
            replicas = self._replicas()
            lagging = replicas[self._target]
            if primary is None or primary == self._target or lagging is None:
                if now >= self._give_up:
                    self.stop()
                return
            self._primary = primary
            self._clog_backups(self._prng.between(200, 400), now, skip=self._target)
            self._hold_ticks = self._prng.between(400, LATENCY_TICKS_LIMIT - 100)
            self._hold_until = self._until
            self._step = "holding"
        else:
            self.stop()

    def _isolated_suffix_next(self, now: int) -> None:
        count = self._network.replica_count
        if self._step == "suffix":
            cut = self._prng.between(300, 900)
            self._network.partition([self._primary], one_way=False, duration_ticks=cut)
            self.faults["scenario.primary_cut"] += 1
            self._log(f"scenario: primary r{self._primary} cut off for {cut} ticks")
            self._step, self._until = "cut", now + cut
            self._target = -1
        elif self._step == "cut" and count >= 5 and self._target < 0:
            # Five replicas or more: once the others follow a new primary, cut it off with
            # the old one, and the rest move on to a third view.
            replicas = self._replicas()
            others = [r for i, r in enumerate(replicas) if i != self._primary and r is not None]
            new = [r for r in others if r.status is Status.NORMAL and r.primary != self._primary]
            if not new:
                self._until = now + 1
                return
            self._target = new[0].primary
            cut = self._prng.between(300, 600)
            near = sorted({self._primary, self._target})
            self._network.partition(near, one_way=False, duration_ticks=cut)
            self.faults["scenario.primary_cut"] += 1
            self._log(f"scenario: r{self._primary} and new primary r{self._target} cut off")
            self._until = now + cut
        else:
            self.stop()

    def _clog_backups(self, ticks: int, now: int, *, skip: int = -1) -> None:
        delay = self._prng.between(300, LATENCY_TICKS_LIMIT - 100)
        for backup in range(self._network.replica_count):
            if backup not in (self._primary, skip):
                self._network.clog(self._primary, backup, duration_ticks=ticks, delay_ticks=delay)
        self.faults["scenario.paths_clogged"] += 1
        self._log(f"scenario: paths from primary r{self._primary} clogged for {ticks} ticks")
        self._until = now + ticks

    def _cut_clients(self, ticks: int) -> None:
        clients = list(self._network.client_ids)
        if clients:
            self._network.partition(clients, one_way=False, duration_ticks=ticks)
            self.faults["scenario.clients_cut"] += 1
            self._log(f"scenario: clients cut off for {ticks} ticks")
