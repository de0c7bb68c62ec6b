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
from dataclasses import dataclass, replace

import numpy as np

from hetserve.catalog import Catalog
from hetserve.errors import HetserveError, check_rate, positive
from hetserve.perf import Deployment
from hetserve.perf.model import check_engine, check_step_margin
from hetserve.plan.planfile import ModelEntry, Plan
from hetserve.pool import check_ray_address, run_all
from hetserve.route import Router, RoutingTable
from hetserve.route.loads import LoadIndex
from hetserve.sim.arrivals import check_arrivals, chunks
from hetserve.sim.engine import Engine, Request
from hetserve.sim.report import GroupInfo, SimResult
from hetserve.sim.router import make_router
from hetserve.sim.tally import Tally
from hetserve.workload import ClassGrid, Trace, load_trace

MAX_CLIENTS = 100_000  # closed-loop clients
MAX_REQUESTS = 100_000_000
MAX_REPLICAS = 20_000  # one engine object each
OVERLAP = 180.0  # s of arrivals before and after a window of a split replay, run uncounted
MIN_WINDOWS = 4  # a window is at least this many overlaps long
MAX_WORKERS = 1024


class SimFleet:
    """Engines in virtual time, advanced lazily up to the time a router looks at them.

    The loads in `index` are exact at any time `refresh` brings a group to: each replica is due
    for a look when a request it holds could first finish (Engine.finish_bound: past the steady
    decode run ahead and at least a step away; or the end of the step whose finished requests
    still count), and a group keeps its replicas in a heap by that time, so a look costs
    O(log n) and only replicas whose load may have changed are advanced."""

    def __init__(self, engines: Sequence[Engine], groups: Sequence[Sequence[int]]) -> None:
        self.engines = list(engines)
        self.groups = [list(g) for g in groups]
        self.done: list[Request] = []
        self.index = LoadIndex(self.groups, len(self.engines))
        self._due = [math.inf] * len(self.engines)  # when a replica's load may next drop
        self._dues: list[list[tuple[float, int]]] = [[] for _ in self.groups]
        for i, engine in enumerate(self.engines):  # engines may come with requests in flight
            if engine.busy or engine.last_finished:
                self._due[i] = -math.inf
                self._dues[self.index.group_of[i]].append((-math.inf, i))
        # the longest request (prompt + output tokens) some replica of each (fixed) group holds
        self._group_limit = [max((self.engines[i].longest for i in g), default=-1)
                             for g in self.groups]
        # a group's replicas hold the same requests: group_holds says for each of them
        self.uniform = all(len({self.engines[i].longest for i in g}) <= 1 for g in self.groups)

    def __len__(self) -> int:
        return len(self.engines)

    def load(self, replica: int, now: float) -> int:
        """Outstanding requests at `now`. An engine is only advanced when a request could
        finish before `now`, and then only past the steps that finish one: cutting a run of
        steady decode steps at `now` would change nothing but add work."""
        engine = self.engines[replica]
        if self._advance(engine, now):
            self._note(replica, engine.outstanding_at(now), now)
        return engine.outstanding_at(now)

    def _advance(self, engine: Engine, now: float) -> bool:
        if engine.clock < now and engine.busy and engine.quiet_until() < now:
            self.done += engine.advance(now, finished_only=True)
            return True
        return False

    def _note(self, replica: int, load: int, now: float, sent: bool = False) -> None:
        """Record the replica's load at `now` (`sent`: a request was sent to it), and when it
        may next drop."""
        self.index.set(replica, load, sent)
        engine = self.engines[replica]
        # requests finished by the step that ends at the clock count until then
        late = engine.last_finished and engine.clock > now
        due = engine.clock if late else engine.finish_bound()
        if due != self._due[replica]:
            self._due[replica] = due
            if due < math.inf:
                heapq.heappush(self._dues[self.index.group_of[replica]], (due, replica))

    def refresh(self, group: int, now: float) -> None:
        dues = self._dues[group]
        if not dues or dues[0][0] > now:
            return
        looked: dict[int, None] = {}  # each once: its next due time may be `now` again
        while dues and dues[0][0] <= now:
            due, i = heapq.heappop(dues)
            if due == self._due[i]:
                looked[i] = None
        for i in looked:
            engine = self.engines[i]
            self._advance(engine, now)
            self._due[i] = math.nan  # noted afresh
            self._note(i, engine.outstanding_at(now), now)

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
        self._note(replica, engine.outstanding_at(req.arrival), req.arrival, sent=True)

    def settle(self, now: float) -> None:
        """Run every engine up to `now` (their counters then hold the time before it)."""
        for engine in self.engines:
            if engine.busy and engine.clock < now:
                self.done += engine.advance(now)

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
                fleet.dispatch(replica, req)
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


def _deployment(plan: Plan, group, catalog: Catalog | None, engine: str | None,
                step_margin: float | None = None) -> Deployment:
    """The group's replica on the plan's own accelerator row, or on `catalog`'s when given;
    run by `engine` instead of the plan's when given; its steps slower by its model's
    step_margin (the plan's promise holds with them), or by `step_margin` when given."""
    acc = None
    if catalog is not None:
        try:
            acc = catalog.get(group.accelerator)
        except HetserveError as exc:
            raise HetserveError(f"plan group {group.id}: {exc} (in --catalog)") from None
    dep = plan.deployment(group, acc, simulated=True)
    if step_margin is not None:
        dep = replace(dep, step_margin=step_margin)
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


@dataclass(frozen=True)
class Replay:
    """What to replay: everything a piece needs (pickled to worker processes)."""

    plan: Plan
    traces: dict[str, Trace]  # per model
    catalog: Catalog | None = None
    router: str = "plan"
    arrivals: str = "trace"
    rate: float | None = None
    clients: int | None = None
    requests: int | None = None
    seed: int = 0
    fast: bool = True
    engine: str | None = None
    per_request: bool = False
    step_margin: float | None = None  # None: each model's, as planned


@dataclass(frozen=True)
class Piece:
    """One model's requests arriving in [start, stop), replayed with those of `overlap` seconds
    before (the engines warm up) and after (they keep the load the next ones bring), uncounted."""

    model: int
    start: float = -math.inf
    stop: float = math.inf
    overlap: float = 0.0


@dataclass
class Part:
    """What one piece measured."""

    tally: Tally
    groups: list[tuple[float, float, int]]  # per group of the model: busy s, KV block s,
    # preemptions
    columns: list[np.ndarray] | None  # per request (Replay.per_request) in arrival order, in
    # COLUMNS order (group: its index in the plan)
    kv_blocks: list[int]  # per group of the model: KV blocks of one replica


def replay_piece(job: Replay, piece: Piece) -> Part:
    """Replay one piece in this process."""
    plan = job.plan
    entry = plan.models[piece.model]
    trace = job.traces[entry.name]
    plan_groups = [g for g in plan.groups if g.model == entry.name]
    engines: list[Engine] = []
    members: list[list[int]] = []
    for g in plan_groups:
        dep = _deployment(plan, g, job.catalog, job.engine, job.step_margin)
        members.append(list(range(len(engines), len(engines) + g.replicas)))
        engines += [Engine(dep, kv_tokens=g.kv_tokens or None, fast=job.fast,
                           max_model_len=entry.context_limit) for _ in range(g.replicas)]
    fleet = SimFleet(engines, members)
    deps = [engines[idx[0]].dep for idx in members]
    policy = make_router(job.router, fleet, RoutingTable.from_plan(
        entry, plan_groups, deps, by_class=job.router == "plan-oracle"))
    cls = classify_for(entry, trace)
    offset = sum(g.model in {e.name for e in plan.models[:piece.model]} for g in plan.groups)
    group_of = np.full(len(engines), -1)
    for j, idx in enumerate(members):
        group_of[idx] = offset + j  # the group's index in the plan (SimResult.groups)
    tally = Tally(_slos(plan))
    kept: list[Request] | None = [] if job.per_request else None
    blocks = [engines[idx[0]].total_blocks for idx in members]

    def counters() -> list[tuple[float, float, int]]:
        return [(sum(engines[i].busy_time for i in idx),
                 sum(engines[i].kv_block_seconds for i in idx),
                 sum(engines[i].preemptions for i in idx)) for idx in members]

    def count(reqs: list[Request]) -> None:
        columns = dict(zip(COLUMNS, _request_columns(reqs, group_of), strict=True))
        del columns["replica"]
        tally.add(piece.model, **columns)

    if job.clients is not None:
        total = job.requests or len(trace)
        sizes = list(zip(trace.input_tokens.tolist(), trace.output_tokens.tolist(), strict=True))
        sent = run_closed(fleet, policy, sizes, job.clients, total, cls=cls.tolist())
        count(sent)
        return Part(tally, counters(), _request_columns(sent, group_of) if kept is not None
                    else None, blocks)
    target = job.rate if job.rate is not None else entry.rate * plan.scale
    n = job.requests or len(trace)
    begin, end = piece.start - piece.overlap, piece.stop + piece.overlap
    before: list | None = None  # the counters when the first counted one arrives
    after: list | None = None  # ... and when the first past the piece does
    for first, arr, rows in chunks(trace, job.arrivals, target, n, job.seed):
        if arr[-1] < begin:
            continue
        if arr[0] >= end:
            break
        lo, a, b, hi = np.searchsorted(arr, [begin, piece.start, piece.stop, end])
        ins, outs, cs = (trace.input_tokens[rows].tolist(), trace.output_tokens[rows].tolist(),
                         cls[rows].tolist())
        times = arr.tolist()
        counted: list[Request] = []
        rejected: list[Request] = []
        for k in range(lo, hi):
            if k == a and before is None:
                fleet.settle(piece.start)
                before = counters()
            if k == b and after is None and piece.stop < math.inf:
                fleet.settle(piece.stop)
                after = counters()
            req = Request(first + k, times[k], ins[k], outs[k], cs[k])
            replica = policy.route(req, req.arrival)
            if replica >= 0:
                fleet.dispatch(replica, req)
            if a <= k < b:
                counted.append(req)
                if replica < 0:
                    rejected.append(req)
        if rejected:
            count(rejected)
        if kept is not None:
            kept += counted
        _count_done(fleet, piece, count)
    # the engines' work is the piece's between its edges (no arrival may have marked them): the
    # next piece counts its own from its start, after warming up on this one's last arrivals
    if before is None:
        fleet.settle(piece.start)
        before = counters() if piece.start > -math.inf else [(0.0, 0.0, 0)] * len(members)
    if after is None and piece.stop < math.inf and piece.overlap > 0:
        fleet.settle(piece.stop)
        after = counters()
    fleet.drain()
    _count_done(fleet, piece, count)
    after = after or counters()  # the last piece (or no overlap): until every request is done
    groups = [(x[0] - y[0], x[1] - y[1], x[2] - y[2]) for x, y in zip(after, before, strict=True)]
    columns = _request_columns(kept, group_of) if kept is not None else None
    return Part(tally, groups, columns, blocks)


def _count_done(fleet: SimFleet, piece: Piece, count) -> None:
    """Tally the finished requests the piece counts, and let go of all of them."""
    done = [r for r in fleet.done if piece.start <= r.arrival < piece.stop]
    fleet.done = []
    if done:
        count(done)


COLUMNS = ("group", "cls", "arrival", "input_tokens", "output_tokens", "scheduled",
           "first_token", "finish", "preemptions", "replica")


def _request_columns(reqs: list[Request], group_of: np.ndarray) -> list[np.ndarray]:
    """Per-request arrays in COLUMNS order."""
    replica = np.array([r.replica for r in reqs], dtype=np.int64)
    group = np.where(replica >= 0, group_of[np.maximum(replica, 0)], -1)
    floats = [np.array([getattr(r, f) for r in reqs], dtype=np.float64)
              for f in ("arrival", "input_tokens", "output_tokens", "scheduled", "first_token",
                        "finish")]
    return [group, np.array([r.cls for r in reqs], dtype=np.int64), floats[0],
            floats[1].astype(np.int64), floats[2].astype(np.int64), *floats[3:],
            np.array([r.preemptions for r in reqs], dtype=np.int64), replica]


def pieces_for(job: Replay, workers: int, overlap: float = OVERLAP) -> list[Piece]:
    """Every model is a piece of its own; with more workers than models, a model's requests are
    split into windows of time, each at least MIN_WINDOWS overlaps long."""
    models = len(job.plan.models)
    if workers <= models or job.clients is not None:
        return [Piece(m) for m in range(models)]
    out = []
    for m, entry in enumerate(job.plan.models):
        trace = job.traces[entry.name]
        rate = job.rate if job.rate is not None else entry.rate * job.plan.scale
        if job.arrivals == "as-is":
            rate = trace.rate
        span = (job.requests or len(trace)) / rate
        fit = int(span // (MIN_WINDOWS * overlap)) if overlap > 0 else workers
        windows = max(1, min(workers // models, fit))
        edges = [-math.inf, *(span * k / windows for k in range(1, windows)), math.inf]
        out += [Piece(m, lo, hi, overlap) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return out


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
    per_request: bool = False,
    workers: int = 1,
    ray: str | None = None,
    overlap: float = OVERLAP,
    step_margin: float | None = None,
) -> SimResult:
    """Replay each model's trace against the plan's replicas.

    traces: one trace for every model (rows filtered by model when it has a model column), one
      per model name, or None for each model's workload as recorded in the plan.
    rate: req/s per model; default the rate the plan serves (its models' rates x plan scale).
    requests: how many (default the trace's length; more repeat the trace, see sim.arrivals).
    clients: closed loop with this many clients (`requests` in all) instead of open-loop
      arrivals.
    per_request: keep every request's results (SimResult.ttft and the like); otherwise only
      counters and quantiles are kept, in memory that does not grow with the trace.
    workers, ray: replay pieces in this many local processes, or on a Ray cluster ("local"
      starts one here, "auto" joins the running one, or its address). Models replay apart
      (exactly as in one process); with more workers than models, a model's trace is cut into
      windows of time, each replayed with `overlap` seconds before and after it (uncounted):
      the same requests are counted, with latencies as in one process up to the state the
      engines carry across a cut.
    step_margin: every step that much slower than modelled (0.1: 10%); default each model's
      step_margin in the plan (what its capacities were sized for)."""
    if engine is not None:
        check_engine(engine)
    if step_margin is not None:
        check_step_margin(step_margin)
    check_arrivals(arrivals)
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
        check_rate(rate)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise HetserveError(f"--seed: expected an integer >= 0, got {seed!r}")
    if positive(workers, "--workers", integer=True) > MAX_WORKERS:
        raise HetserveError(f"--workers: at most {MAX_WORKERS}, got {workers}")
    if ray is not None:
        check_ray_address(ray)
    if not (isinstance(overlap, int | float) and 0 <= overlap < math.inf):
        raise HetserveError(f"overlap: expected seconds >= 0, got {overlap!r}")
    too_big = simulation_limit(plan)
    if too_big:
        raise HetserveError(too_big)
    for entry in plan.models:
        if not any(g.model == entry.name for g in plan.groups):
            raise HetserveError(f"plan: no replica group serves model {entry.name}")
    deps = [_deployment(plan, g, catalog, engine, step_margin)  # errors before pieces
            for g in plan.groups]
    job = Replay(plan, {e.name: _trace_for(e, traces) for e in plan.models}, catalog, router,
                 arrivals, rate, clients, requests, seed, fast, engine, per_request,
                 step_margin)
    started = time.perf_counter()
    pieces = pieces_for(job, workers, overlap)
    parts = run_all(replay_piece, job, pieces, workers, ray)
    wall = time.perf_counter() - started
    tally = Tally(_slos(plan))
    groups_info: list[GroupInfo] = []
    columns: list[list[np.ndarray]] = []
    for m, entry in enumerate(plan.models):
        mine = [p for piece, p in zip(pieces, parts, strict=True) if piece.model == m]
        plan_groups = [g for g in plan.groups if g.model == entry.name]
        for part in mine:
            tally.merge(part.tally)
            if part.columns is not None:
                columns.append([np.full(len(part.columns[0]), m), *part.columns])
        for j, g in enumerate(plan_groups):
            groups_info.append(GroupInfo(
                id=g.id, model=m, label=deps[plan.groups.index(g)].label, replicas=g.replicas,
                usd_per_hour=g.usd_per_hour,
                busy_seconds=sum(p.groups[j][0] for p in mine),
                kv_block_seconds=sum(p.groups[j][1] for p in mine),
                kv_blocks=mine[0].kv_blocks[j], preemptions=sum(p.groups[j][2] for p in mine)))
    stacked = [np.concatenate(col) for col in zip(*columns, strict=True)] if per_request \
        else None
    mode = f"closed loop, {clients} clients" if clients is not None else arrivals
    return SimResult(
        models=[e.name for e in plan.models],
        classes=[[c.name for c in e.classes] for e in plan.models],
        slo=_slos(plan), groups=groups_info, tally=tally,
        requests=dict(zip(("model", *COLUMNS), stacked, strict=True)) if stacked else None,
        router=router, arrivals=mode, wall_seconds=wall,
        step_margin={e.name: e.step_margin if step_margin is None else float(step_margin)
                     for e in plan.models},
        extra={"workers": workers if ray is None else f"ray {ray}", "pieces": len(pieces)}
        if workers > 1 or ray is not None else {},
    )


def _slos(plan: Plan) -> list[tuple[float, float]]:
    return [(e.slo.ttft, e.slo.tpot) for e in plan.models]


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
