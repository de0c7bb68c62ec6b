"""Replay a trace against a plan in virtual time.

Every replica of every group in the plan is an `Engine`; a router (hetserve.route, the one a
gateway runs, or a simulation-only baseline of hetserve.sim.router) sends each request to one.
Arrivals are open loop (the trace's timestamps as they are, time-scaled to a rate, or a Poisson
process at a rate) or closed loop (N clients, each sending its next request when the last one
completes, as serving benchmarks measure).

Open loop needs no global event queue: requests are routed in arrival order, and an engine is
advanced in virtual time only up to the arrival the router is looking at, when the router asks
for its load or a request is added to it. Engines in between skip over unchanged batches in
closed form (Engine.advance). Closed loop creates arrivals from completions, so engines advance
in the order of their clocks, none past the next point another engine could send it work.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from hetserve.catalog import Catalog
from hetserve.errors import HetserveError, positive
from hetserve.perf import Deployment
from hetserve.perf.model import check_engine
from hetserve.plan.planfile import ModelEntry, Plan
from hetserve.route import Router, RoutingTable
from hetserve.sim.engine import Engine, Request
from hetserve.sim.report import GroupInfo, SimResult
from hetserve.sim.router import make_router
from hetserve.workload import ClassGrid, Trace, load_trace

ARRIVALS = ("trace", "as-is", "poisson")
MAX_CLIENTS = 100_000  # closed-loop clients
MAX_REQUESTS = 100_000_000
MAX_REPLICAS = 20_000  # one engine object each; larger fleets wait for the streaming simulator


class SimFleet:
    """Engines in virtual time, advanced lazily up to the time a router looks at them."""

    def __init__(self, engines: Sequence[Engine], groups: Sequence[Sequence[int]]) -> None:
        self.engines = list(engines)
        self.groups = [list(g) for g in groups]
        self.done: list[Request] = []
        # the longest request (prompt + output tokens) some replica of each (fixed) group holds
        self._group_limit = [max((self.engines[i].kv_limit for i in g), default=-1)
                             for g in self.groups]

    def __len__(self) -> int:
        return len(self.engines)

    def load(self, replica: int, now: float) -> int:
        """Outstanding requests at `now`. An engine is only advanced when a request could
        finish before `now`, and then only past the steps that finish one: cutting a run of
        steady decode steps at `now` would change nothing but add work."""
        engine = self.engines[replica]
        if engine.clock < now and engine.busy and engine.quiet_until() < now:
            self.done += engine.advance(now, finished_only=True)
        return engine.outstanding_at(now)

    def least_loaded(self, replicas: Sequence[int], req: Request, now: float, turn: int) -> int:
        """Router.least_loaded's choice (the scan starts at position `turn`), without a call per
        replica: the first replica in scan order with the fewest outstanding requests at `now`
        among those that hold `req`, or -1."""
        engines = self.engines
        size = req.input_tokens + req.output_tokens
        n = len(replicas)
        best, best_load = -1, 0
        for k in range(n):
            i = replicas[(k + turn) % n]
            if size > engines[i].kv_limit:
                continue
            load = self.load(i, now)
            if best < 0 or load < best_load:
                best, best_load = i, load
                if not load:
                    break  # none can have fewer
        return best

    def pending_prefill(self, replica: int, now: float) -> int:
        """Prompt tokens awaiting their first token at `now` (load() brings the engine there
        when a step could change it)."""
        self.load(replica, now)
        return self.engines[replica].pending_prefill()

    def group_holds(self, group: int, req: Request) -> bool:
        """Whether some replica of the group holds the request (any `holds`)."""
        return req.input_tokens + req.output_tokens <= self._group_limit[group]

    def holds(self, replica: int, req: Request) -> bool:
        return self.engines[replica].holds(req)

    def deployment(self, replica: int) -> Deployment:
        return self.engines[replica].dep

    def dispatch(self, replica: int, req: Request) -> None:
        """Bring the engine up to the request's arrival, then queue the request there."""
        engine = self.engines[replica]
        if engine.clock < req.arrival and engine.busy:
            self.done += engine.advance(req.arrival)
        req.replica = replica
        engine.add(req)

    def drain(self) -> None:
        for engine in self.engines:
            self.done += engine.advance(math.inf)


def run_open(fleet: SimFleet, router: Router, requests: Sequence[Request]) -> None:
    """Route requests in arrival order and run every engine until all have finished."""
    for req in requests:
        replica = router.route(req, req.arrival)
        if replica >= 0:
            fleet.dispatch(replica, req)
    fleet.drain()


def run_closed(fleet: SimFleet, router: Router, sizes: Sequence[tuple[int, int]], clients: int,
               total: int, stagger: float = 0.0, cls: Sequence[int] | None = None,
               gap: float = 0.0) -> list[Request]:
    """`clients` users each send requests back to back, `total` in all, with the (prompt,
    output) sizes in order (cycling). Client k sends its first request at k * stagger / clients,
    and each next one `gap` seconds after its last finished (the client's round trip).
    Returns the requests in the order they were sent."""
    ready = [(k * stagger / clients, k) for k in range(clients)]  # (time, client)
    heapq.heapify(ready)
    sent: list[Request] = []
    engines = fleet.engines
    while True:
        t_next = ready[0][0] if ready and len(sent) < total else math.inf
        busy = sorted((e.clock, i) for i, e in enumerate(engines) if e.busy)
        first = busy[0] if busy else (math.inf, -1)
        if t_next == math.inf and not busy:
            break
        if t_next <= first[0]:  # every engine has run all steps that start before t_next
            t, client = heapq.heappop(ready)
            k = len(sent)
            inp, out = sizes[k % len(sizes)]
            req = Request(k, t, inp, out, cls[k % len(cls)] if cls else -1)
            sent.append(req)
            replica = router.route(req, t)
            if replica < 0:
                heapq.heappush(ready, (t, client))
            else:
                req.replica = replica
                engines[replica].add(req)
            continue
        # run the earliest engine, but not past a step another engine or client could change
        until = min(t_next, busy[1][0] if len(busy) > 1 else math.inf)
        engine = engines[first[1]]
        if until > engine.clock:
            finished = engine.advance(until, first_finish=True)
        else:
            finished = engine.step(engine.clock)[1]
        fleet.done += finished
        for req in finished:  # its client sends the next request
            heapq.heappush(ready, (req.finish + gap, req.id))
    return sent


# ---- plans ---------------------------------------------------------------------------------


def _deployment(plan: Plan, group, catalog: Catalog | None, engine: str | None) -> Deployment:
    """The group's replica on the plan's own accelerator row, or on `catalog`'s when given;
    run by `engine` instead of the plan's when given."""
    acc = None
    if catalog is not None:
        try:
            acc = catalog.get(group.accelerator)
        except HetserveError as exc:
            raise HetserveError(f"plan group {group.id}: {exc} (in --catalog)") from None
    dep = plan.deployment(group, acc)
    if engine is not None:
        dep = replace(dep, engine=engine)
    if not dep.fits:
        raise HetserveError(f"plan group {group.id}: {dep.label} does not fit: {dep.why_not()}")
    return dep


def classify_for(entry: ModelEntry, trace: Trace) -> np.ndarray:
    """Per request: the index of the plan class whose ranges hold it, or -1."""
    ins = sorted({e for c in entry.classes for e in c.input_range})
    outs = sorted({e for c in entry.classes for e in c.output_range})
    if len(ins) < 2 or len(outs) < 2:
        return np.full(len(trace), -1)
    grid = ClassGrid(tuple(ins), tuple(outs))
    lookup = np.full(grid.shape[0] * grid.shape[1], -1)
    for k, c in enumerate(entry.classes):
        flat = grid.bucket(np.array([c.input_range[0]]), np.array([c.output_range[0]]))[0]
        lookup[flat] = k
    return lookup[grid.bucket(trace.input_tokens, trace.output_tokens)]


def arrivals_for(trace: Trace, mode: str, rate: float | None, seed: int = 0) -> Trace:
    """The trace with arrivals as asked: scaled to `rate`, as they are, or Poisson at `rate`."""
    if mode not in ARRIVALS:
        raise HetserveError(f"--arrivals '{mode}': expected one of {', '.join(ARRIVALS)}")
    if mode == "as-is" or rate is None:  # (simulate refuses --rate with as-is)
        return trace
    if mode == "poisson":
        return trace.with_poisson_arrivals(rate, seed)
    return trace.scaled_to_rate(rate)


def simulate(
    plan: Plan,
    traces: Trace | Mapping[str, Trace] | None = None,
    *,
    catalog: Catalog | None = None,
    router: str = "plan",
    arrivals: str = "trace",
    rate: float | None = None,
    clients: int | None = None,
    requests: int | None = None,
    seed: int = 0,
    fast: bool = True,
    engine: str | None = None,
) -> SimResult:
    """Replay each model's trace against the plan's replicas.

    traces: one trace for every model (rows filtered by model when it has a model column), one
      per model name, or None for each model's workload as recorded in the plan.
    rate: req/s per model; default the rate the plan serves (its models' rates x plan scale).
    clients: closed loop with this many clients (`requests` in all, default the trace's length)
      instead of open-loop arrivals."""
    if engine is not None:
        check_engine(engine)
    if arrivals == "as-is" and rate is not None:
        raise HetserveError("--rate does not apply to --arrivals as-is (the trace's own times)")
    if clients is not None:
        if positive(clients, "--clients", integer=True) > MAX_CLIENTS:
            raise HetserveError(f"--clients: at most {MAX_CLIENTS:,}, got {clients}")
        if rate is not None or arrivals != "trace":
            raise HetserveError("--clients runs a closed loop: --rate and --arrivals do not "
                                "apply")
    if requests is not None and positive(requests, "--requests", integer=True) > MAX_REQUESTS:
        raise HetserveError(f"--requests: at most {MAX_REQUESTS:,}, got {requests}")
    if rate is not None:
        positive(rate, "--rate")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise HetserveError(f"--seed: expected an integer >= 0, got {seed!r}")
    too_big = simulation_limit(plan)
    if too_big:
        raise HetserveError(too_big)
    started = time.perf_counter()
    loading = 0.0  # reading traces is not the simulation's own time
    groups_info: list[GroupInfo] = []
    columns: list[list] = []
    offset = 0
    for m, entry in enumerate(plan.models):
        mark = time.perf_counter()
        trace = _trace_for(entry, traces)
        loading += time.perf_counter() - mark
        plan_groups = [g for g in plan.groups if g.model == entry.name]
        if not plan_groups:
            raise HetserveError(f"plan: no replica group serves model {entry.name}")
        engines: list[Engine] = []
        members: list[list[int]] = []
        for g in plan_groups:
            dep = _deployment(plan, g, catalog, engine)
            members.append(list(range(len(engines), len(engines) + g.replicas)))
            engines += [Engine(dep, kv_tokens=g.kv_tokens or None, fast=fast)
                        for _ in range(g.replicas)]
        fleet = SimFleet(engines, members)
        deps = [engines[idx[0]].dep for idx in members]
        policy = make_router(router, fleet, RoutingTable.from_plan(
            entry, plan_groups, deps, by_class=router == "plan-oracle"))
        cls = classify_for(entry, trace)
        if clients is not None:
            total = requests or len(trace)
            sizes = list(zip(trace.input_tokens.tolist(), trace.output_tokens.tolist(),
                             strict=True))
            reqs = run_closed(fleet, policy, sizes, clients, total, cls=cls.tolist())
        else:
            target = rate if rate is not None else entry.rate * plan.scale
            trace = arrivals_for(trace, arrivals, target, seed)
            n = min(requests or len(trace), len(trace))
            reqs = [Request(k, a, i, o, c) for k, (a, i, o, c) in enumerate(zip(
                trace.arrivals[:n].tolist(), trace.input_tokens[:n].tolist(),
                trace.output_tokens[:n].tolist(), cls[:n].tolist(), strict=True))]
            run_open(fleet, policy, reqs)
        group_of = np.full(len(engines), -1)
        for j, idx in enumerate(members):
            group_of[idx] = offset + j
        for j, g in enumerate(plan_groups):
            es = [engines[i] for i in members[j]]
            groups_info.append(GroupInfo(
                id=g.id, model=m, label=es[0].dep.label, replicas=g.replicas,
                usd_per_hour=g.usd_per_hour, busy_seconds=sum(e.busy_time for e in es),
                kv_block_seconds=sum(e.kv_block_seconds for e in es),
                kv_blocks=es[0].total_blocks, preemptions=sum(e.preemptions for e in es)))
        offset += len(plan_groups)
        replica = np.array([r.replica for r in reqs], dtype=np.int64)
        columns.append([
            np.full(len(reqs), m), np.array([r.cls for r in reqs], dtype=np.int64),
            np.where(replica >= 0, group_of[replica], -1), replica,
            *(np.array([getattr(r, f) for r in reqs], dtype=np.float64)
              for f in ("arrival", "input_tokens", "output_tokens", "scheduled",
                        "first_token", "finish")),
            np.array([r.preemptions for r in reqs], dtype=np.int64),
        ])
    stacked = [np.concatenate(col) for col in zip(*columns, strict=True)]
    mode = f"closed loop, {clients} clients" if clients is not None else arrivals
    return SimResult(
        models=[e.name for e in plan.models], classes=[[c.name for c in e.classes]
                                                       for e in plan.models],
        slo=[(e.slo.ttft, e.slo.tpot) for e in plan.models], groups=groups_info,
        model=stacked[0], cls=stacked[1], group=stacked[2], replica=stacked[3],
        arrival=stacked[4], input_tokens=stacked[5].astype(np.int64),
        output_tokens=stacked[6].astype(np.int64), scheduled=stacked[7],
        first_token=stacked[8], finish=stacked[9], preemptions=stacked[10],
        router=router, arrivals=mode, wall_seconds=time.perf_counter() - started - loading,
    )


def simulation_limit(plan: Plan) -> str:
    """Why the simulator cannot run this plan ('' when it can)."""
    replicas = sum(g.replicas for g in plan.groups)
    if replicas > MAX_REPLICAS:
        return (f"plan: {replicas:,} replicas; the simulator runs at most {MAX_REPLICAS:,} "
                f"(scale the plan down, e.g. a lower --rate or --budget)")
    return ""


def _trace_for(entry: ModelEntry, traces) -> Trace:
    if traces is None:
        try:
            return load_trace(entry.workload).for_model(entry.name, entry.spec.matches)
        except HetserveError as exc:
            raise HetserveError(f"plan model {entry.name}: {exc}; pass --workload") from None
    if isinstance(traces, Trace):
        return traces.for_model(entry.name, entry.spec.matches)
    if entry.name not in traces:
        raise HetserveError(f"no trace given for model {entry.name}")
    return traces[entry.name]
