"""The one routing decision, shared by the simulator and the gateway: which replica serves a
request, from what a gateway sees when it arrives (its prompt's token count, its `max_tokens`
if any, and the requests it has in flight per replica), never the request's true output."""

from hetserve.route.router import (
    POLICIES,
    Fleet,
    LeastOutstanding,
    PlanRouter,
    RoundRobin,
    Router,
    make_router,
)
from hetserve.route.table import RoutingTable

__all__ = ["POLICIES", "Fleet", "LeastOutstanding", "PlanRouter", "RoundRobin", "Router",
           "RoutingTable", "make_router"]
