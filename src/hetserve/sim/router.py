"""Request routers: which replica serves a request.

A router sees the replicas through a `Fleet`: their replica group, whether a request fits a
replica's KV cache, and its load (outstanding requests) at a given time. The simulator's fleet
advances engines in virtual time when asked for their load; a gateway's fleet counts requests
in flight. Policies:

- plan: the plan's shares per request class, by smooth weighted round robin across replica
  groups (nginx's algorithm: deterministic, and any window of picks matches the shares to within
  one), then the least loaded replica within the group.
- round-robin: every replica in turn.
- least-outstanding: the replica with the fewest requests in flight.
- size-aware: needs no plan; the replica where the performance model predicts the request
  finishes first given its size and the replica's current batch.

A fleet may also offer `least_loaded(replicas, req, now, turn)` (the same choice as the scan
here, the scan starting at position `turn`) and `group_holds(group, req)`; the simulator's fleet
does, to route without a call per replica.

Each returns the replica index, or -1 when no replica can hold the request at all. Requests
whose class the plan does not route, or that do not fit the groups the plan gives them, fall back
to the least loaded replica that holds them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from hetserve.errors import HetserveError
from hetserve.perf import Deployment
from hetserve.sim.engine import Request


class Fleet(Protocol):
    groups: Sequence[Sequence[int]]  # replica indices of each replica group

    def __len__(self) -> int: ...

    def load(self, replica: int, now: float) -> int: ...

    def holds(self, replica: int, req: Request) -> bool: ...

    def deployment(self, replica: int) -> Deployment: ...


class Router:
    name = "router"

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._turn = 0
        # a fleet may scan its replicas itself (the simulator's does, without a call per
        # replica); the choice is the same
        self._scan = getattr(fleet, "least_loaded", None)

    def route(self, req: Request, now: float) -> int:
        return self.least_loaded(range(len(self.fleet)), req, now)

    def least_loaded(self, replicas: Sequence[int], req: Request, now: float) -> int:
        """The replica with the fewest outstanding requests among those that hold `req`; ties go
        round robin (the scan starts one further each call)."""
        self._turn += 1
        if self._scan is not None:
            best = self._scan(replicas, req, now, self._turn)
        else:
            best, best_load = -1, 0
            n = len(replicas)
            for k in range(n):
                i = replicas[(k + self._turn) % n]
                if not self.fleet.holds(i, req):
                    continue
                load = self.fleet.load(i, now)
                if best < 0 or load < best_load:
                    best, best_load = i, load
                    if not load:
                        break  # none can have fewer
        if best < 0 and len(replicas) < len(self.fleet):
            return self.least_loaded(range(len(self.fleet)), req, now)
        return best


class LeastOutstanding(Router):
    name = "least-outstanding"


class RoundRobin(Router):
    name = "round-robin"

    def route(self, req: Request, now: float) -> int:
        n = len(self.fleet)
        for _ in range(n):
            i = self._turn % n
            self._turn += 1
            if self.fleet.holds(i, req):
                return i
        return -1


class SizeAware(Router):
    """Predicted completion time of this request on each replica at its current batch B:
    one step carrying the prompt with B decodes, then `output` decode steps at batch B + 1,
    contexts taken as this request's (prompt + half its output); past max_num_seqs, plus the
    wait for a free sequence slot."""

    name = "size-aware"

    def route(self, req: Request, now: float) -> int:
        best, best_t = -1, 0.0
        inp, out = req.input_tokens, req.output_tokens
        ctx = inp + out / 2.0
        for i in range(len(self.fleet)):
            if not self.fleet.holds(i, req):
                continue
            load = self.fleet.load(i, now)
            dep = self.fleet.deployment(i)
            b = min(load, dep.max_seqs - 1)  # running alongside it
            t = dep.step_seconds(inp + b, 1 + b, b * ctx, inp * inp / 2.0)
            t += (out - 1) * dep.step_seconds(b + 1, b + 1, (b + 1) * ctx)
            ahead = load + 1 - dep.max_seqs  # waiting for a sequence slot: one frees every t/max
            if ahead > 0:
                t += ahead * t / dep.max_seqs
            if best < 0 or t < best_t:
                best, best_t = i, t
        return best


class PlanRouter(Router):
    """Shares per class: `shares[cls]` lists (group index, share) for each planned class."""

    name = "plan"

    def __init__(self, fleet: Fleet, shares: Mapping[int, Sequence[tuple[int, float]]]) -> None:
        super().__init__(fleet)
        self.shares = {c: [(g, s) for g, s in gs if s > 0] for c, gs in shares.items()}
        self.current = {c: [0.0] * len(gs) for c, gs in self.shares.items()}
        self._group_holds = getattr(fleet, "group_holds", None)  # any replica holds it

    def pick_group(self, cls: int) -> int:
        """Smooth weighted round robin over the class's groups; -1 if the class is unplanned."""
        groups = self.shares.get(cls)
        if not groups:
            return -1
        cur = self.current[cls]
        total = 0.0
        best = 0
        for k, (_, share) in enumerate(groups):
            cur[k] += share
            total += share
            if cur[k] > cur[best]:
                best = k
        cur[best] -= total
        return groups[best][0]

    def _holds(self, group: int, req: Request) -> bool:
        if self._group_holds is not None:
            return self._group_holds(group, req)
        return any(self.fleet.holds(i, req) for i in self.fleet.groups[group])

    def route(self, req: Request, now: float) -> int:
        g = self.pick_group(req.cls)
        if g < 0:
            return super().route(req, now)
        replicas = self.fleet.groups[g]
        if not self._holds(g, req):  # too long for the group
            for other, _ in self.shares[req.cls]:
                if self._holds(other, req):
                    replicas = self.fleet.groups[other]
                    break
        return self.least_loaded(replicas, req, now)


POLICIES = ("plan", "round-robin", "least-outstanding", "size-aware")


def make_router(policy: str, fleet: Fleet,
                shares: Mapping[int, Sequence[tuple[int, float]]] | None = None) -> Router:
    if policy == "plan":
        return PlanRouter(fleet, shares or {})
    routers = {"round-robin": RoundRobin, "least-outstanding": LeastOutstanding,
               "size-aware": SizeAware}
    if policy not in routers:
        raise HetserveError(f"--router '{policy}': expected one of {', '.join(POLICIES)}")
    return routers[policy](fleet)
