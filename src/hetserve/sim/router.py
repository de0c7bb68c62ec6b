"""Routers only a simulator can run: they read a request's true output length, which a gateway
never sees. Baselines for comparison; the routing a plan runs with lives in hetserve.route.

- size-aware: needs no plan; the replica where the performance model predicts the request
  finishes first given its size and the replica's current batch.
- plan-oracle: the plan's shares per request class (prompt and output range), as the planner
  made them, static (no spilling): how plans were routed before hetserve.route.
"""

from __future__ import annotations

from hetserve.errors import HetserveError
from hetserve.route import POLICIES as GATEWAY_POLICIES
from hetserve.route import Fleet, PlanRouter, Router, RoutingTable
from hetserve.route import make_router as gateway_router
from hetserve.sim.engine import Request


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


class OracleRouter(PlanRouter):
    """PlanRouter keyed by the request's true class (a table built with by_class=True), without
    spilling."""

    name = "plan-oracle"

    def __init__(self, fleet: Fleet, class_table: RoutingTable) -> None:
        super().__init__(fleet, class_table, spill=False)

    def key_of(self, req: Request) -> int:
        return req.cls


POLICIES = (*GATEWAY_POLICIES, "size-aware", "plan-oracle")


def make_router(policy: str, fleet: Fleet, table: RoutingTable | None = None) -> Router:
    """`table`: the plan's routing, by prompt range (by true class for plan-oracle)."""
    if policy == "size-aware":
        return SizeAware(fleet)
    if policy == "plan-oracle":
        if table is None:
            raise HetserveError("the plan-oracle router needs the plan's routing by class")
        return OracleRouter(fleet, table)
    if policy not in POLICIES:
        raise HetserveError(f"--router '{policy}': expected one of {', '.join(POLICIES)}")
    return gateway_router(policy, fleet, table)

