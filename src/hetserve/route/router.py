"""Routers: which replica serves a request.

A router sees the replicas through a `Fleet`: their replica groups, whether a request fits a
replica's KV cache, and what each has in flight (requests, and prompt tokens still awaiting
their first token) at a given time. The simulator's fleet advances engines in virtual time when
asked; a gateway's fleet counts the requests it proxies. A router reads a request's
`input_tokens` (and `max_tokens` where it has one), never its output. Policies:

- plan: the plan's shares per routable key (the prompt's range, hetserve.route.table), by smooth
  weighted round robin across replica groups (nginx's algorithm: deterministic, and any window
  of picks matches the shares to within one), then the least loaded replica within the group.
  When that replica's prompts in flight would hold this one past `spill_after` before its
  prefill (at the deployment's full-chunk prefill speed), it goes to whichever of the eligible
  groups' least loaded replicas has the least expected wait: bursts of long prompts spread over
  replicas with room instead of queueing behind a static share. A group given the key only for
  best-effort classes keeps its requests (no latency promise to keep there).
- round-robin: every replica in turn.
- least-outstanding: the replica with the fewest requests in flight.

A fleet keeps a LoadIndex of its replicas' loads (hetserve.route.loads), so the least loaded
replica of a group costs O(log n) however many replicas it has; it may also offer
`group_holds(group, req)` (whether any replica of the group holds the request at all).

Each returns the replica index, or -1 when no replica can hold the request at all. Requests
whose key the plan does not route, or that do not fit the groups the plan gives them, fall back
to the least loaded replica that holds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from hetserve.errors import HetserveError
from hetserve.perf import Deployment
from hetserve.route.loads import LoadIndex
from hetserve.route.table import RoutingTable


class Fleet(Protocol):
    groups: Sequence[Sequence[int]]  # replica indices of each replica group
    index: LoadIndex  # what each replica has in flight, kept current by the fleet

    def __len__(self) -> int: ...

    def refresh(self, group: int, now: float) -> None:
        """Bring the index's loads of the group's replicas up to `now`."""

    def load(self, replica: int, now: float) -> int: ...

    def pending_prefill(self, replica: int, now: float) -> int: ...

    def holds(self, replica: int, req: Any) -> bool: ...

    def deployment(self, replica: int) -> Deployment: ...


class Router:
    name = "router"

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._turn = 0
        self._group_holds = getattr(fleet, "group_holds", None)  # any replica holds it
        # ... and, in a uniform fleet, every replica of the group does
        self._uniform = self._group_holds is not None and getattr(fleet, "uniform", False)
        self._all = range(len(fleet.groups))

    def route(self, req, now: float) -> int:
        return self.least_loaded(self._all, req, now)

    def least_loaded(self, groups: Sequence[int], req, now: float) -> int:
        """The replica with the fewest requests in flight among those of `groups` that hold
        `req`, ties to the one sent a request longest ago (hetserve.route.loads: O(log n) a
        group); if none does, the same over every group; -1 if no replica holds it."""
        best = self._least(groups, req, now)
        if best < 0 and groups is not self._all:
            return self._least(self._all, req, now)
        return best

    def _least(self, groups: Sequence[int], req, now: float) -> int:
        fleet = self.fleet
        index = fleet.index
        best = -1
        for g in groups:
            if self._group_holds is not None and not self._group_holds(g, req):
                continue
            fleet.refresh(g, now)
            i = index.least(g, None if self._uniform else lambda i: fleet.holds(i, req))
            if i >= 0 and (best < 0 or index.rank(i) < index.rank(best)):
                best = i
        return best


class LeastOutstanding(Router):
    name = "least-outstanding"


class RoundRobin(Router):
    name = "round-robin"

    def route(self, req, now: float) -> int:
        n = len(self.fleet)
        for _ in range(n):
            i = self._turn % n
            self._turn += 1
            if self.fleet.holds(i, req):
                return i
        return -1


class PlanRouter(Router):
    """The plan's shares per key, least loaded within a group, spilling backed-up prefill."""

    name = "plan"

    def __init__(self, fleet: Fleet, table: RoutingTable, spill: bool = True) -> None:
        super().__init__(fleet)
        self.table = table
        self.spill = spill
        self.shares = {k: [(g, s) for g, s in gs if s > 0] for k, gs in table.shares.items()}
        self.current = {k: [0.0] * len(gs) for k, gs in self.shares.items()}
        self.spilled = 0  # requests sent past their share to a replica with less prefill queued

    def pick_group(self, key: int) -> int:
        """Smooth weighted round robin over the key's groups; -1 if the key is unplanned."""
        groups = self.shares.get(key)
        if not groups:
            return -1
        cur = self.current[key]
        total = 0.0
        best = 0
        for k, (_, share) in enumerate(groups):
            cur[k] += share
            total += share
            if cur[k] > cur[best]:
                best = k
        cur[best] -= total
        return groups[best][0]

    def _holds(self, group: int, req) -> bool:
        if self._group_holds is not None:
            return self._group_holds(group, req)
        return any(self.fleet.holds(i, req) for i in self.fleet.groups[group])

    def key_of(self, req) -> int:
        return self.table.key(req.input_tokens, getattr(req, "max_tokens", None))

    def route(self, req, now: float) -> int:
        key = self.key_of(req)
        g = self.pick_group(key)
        if g < 0:
            return super().route(req, now)
        if not self._holds(g, req):  # too long for the group
            g = next((other for other, _ in self.shares[key] if self._holds(other, req)), g)
        best = self.least_loaded((g,), req, now)
        if not self.spill or best < 0:
            return best
        return self._spill(key, g, best, req, now)

    def _wait(self, group: int, replica: int, req, now: float) -> float:
        """Expected seconds before `req` is prefilled on `replica`: the prompt tokens ahead of
        it and its own at the group's full-chunk prefill speed."""
        tokens = self.fleet.pending_prefill(replica, now) + req.input_tokens
        return tokens * self.table.prefill_per_token[group]

    def _spill(self, key: int, group: int, chosen: int, req, now: float) -> int:
        if (key, group) in self.table.best_effort:  # no promise to keep: as planned
            return chosen
        wait = self._wait(group, chosen, req, now)
        if wait <= self.table.spill_after:
            return chosen
        best, best_wait = chosen, wait
        for other in self.table.eligible.get(key, ()):  # each one's least loaded replica
            i = self._least((other,), req, now)
            if i < 0 or i == chosen:
                continue
            w = self._wait(other, i, req, now)
            if w < best_wait:
                best, best_wait = i, w
        if best != chosen:
            self.spilled += 1
        return best


POLICIES = ("plan", "round-robin", "least-outstanding")


def make_router(policy: str, fleet: Fleet, table: RoutingTable | None = None) -> Router:
    if policy == "plan":
        if table is None:
            raise HetserveError("the plan router needs the plan's routing table")
        return PlanRouter(fleet, table)
    routers = {"round-robin": RoundRobin, "least-outstanding": LeastOutstanding}
    if policy not in routers:
        raise HetserveError(f"--router '{policy}': expected one of {', '.join(POLICIES)}")
    return routers[policy](fleet)
