"""A day through the simulator with the autoscaler's transitions in it.

Requests are routed in arrival order, as `sim.simulate` does, over engines that come and go:
at each window boundary the policy decides from what it has seen; a change starts the new
replicas at once (paid from then on), and when the last of them has started (`startup` seconds
per type) the new plan's routing takes over and the replicas it no longer has stop taking
requests and drain (paid until their last request finishes): make before break. Replicas that
both plans have keep running. Where availability falls (an outage in the series), the decision
comes `notice` seconds before it, so that the replacements are up when the type goes; at its
start the replicas of that type beyond what it leaves stop serving, whatever the policy did
(a static plan loses them; a group left empty serves nothing).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hetserve.autoscale.day import DAY, Outage, available_at
from hetserve.autoscale.policy import Observation, replica_kind, same_fleet
from hetserve.plan.planfile import Plan
from hetserve.route import RoutingTable
from hetserve.sim.engine import Engine, Request
from hetserve.sim.router import make_router
from hetserve.sim.simulate import SimFleet, classify_for
from hetserve.workload import Trace

STARTUP = {"default": 180.0}  # s from asking for a replica to its serving (weights loaded)


@dataclass
class WindowStats:
    start: float
    rate: float  # req/s that arrived
    plan: str  # the plan decided for the window (its groups)
    usd_per_hour: float  # of the plan decided for this window
    devices: dict[str, int]
    requests: int = 0
    met: int = 0
    cost_usd: float = 0.0  # replicas running in the window, started and draining included


@dataclass
class DayResult:
    policy: str
    windows: list[WindowStats]
    changes: int
    requests: int
    met: int
    cost_usd: float
    wall_seconds: float
    plans: list[tuple[float, Plan]] = field(default_factory=list)  # (effective from, plan)
    moves: list[tuple[float, float]] = field(default_factory=list)  # (decided, serving from)

    @property
    def attainment(self) -> float:
        return self.met / self.requests if self.requests else 1.0


def replay_day(day: Trace, policy, classes, *, window: float = 900.0,
               startup: dict | None = None, notice: float = 300.0,
               outages: list[Outage] | None = None, end: float = DAY,
               progress: Callable[[float], None] | None = None) -> DayResult:
    """Run `policy` over `day` (arrivals from before 0 to `end`; see diurnal_day).
    `classes`: the request classes the policy plans for (a Workload or ModelEntry)."""
    started_wall = time.perf_counter()
    startup = {**STARTUP, **(startup or {})}
    outages = outages or []
    pool: list[Engine] = []
    created: list[float] = []  # per engine: when it was asked for
    retired: list[float] = []  # per engine: when it stopped taking requests (inf: never)
    price: list[float] = []  # per engine, $/h
    active: dict[tuple, list[int]] = {}  # config -> engines serving now

    def build(plan: Plan, now: float) -> tuple[list[list[int]], list[int]]:
        """Engines for `plan`'s groups: running ones of the same config first, then new ones
        asked for at `now`."""
        spare = {k: list(v) for k, v in active.items()}
        groups, new = [], []
        for g in plan.groups:
            have = spare.get(replica_kind(g), [])
            take, spare[replica_kind(g)] = have[:g.replicas], have[g.replicas:]
            for _ in range(g.replicas - len(take)):
                pool.append(Engine(plan.deployment(g, simulated=True),
                                   kv_tokens=g.kv_tokens or None,
                                   max_model_len=plan.model_entry(g.model).context_limit))
                created.append(now)
                retired.append(math.inf)
                price.append(g.usd_per_hour / g.replicas)
                take.append(len(pool) - 1)
                new.append(len(pool) - 1)
            groups.append(take)
        return groups, new

    def install(plan: Plan, groups: list[list[int]]):
        active.clear()
        for j, g in enumerate(plan.groups):
            active.setdefault(replica_kind(g), []).extend(groups[j])
        # the fleet holds only the engines serving now (a router's fallback scans them all);
        # a group may be empty (its type was reclaimed)
        live = [i for idx in groups for i in idx]
        local = {i: k for k, i in enumerate(live)}
        fleet = SimFleet([pool[i] for i in live], [[local[i] for i in idx] for idx in groups])
        deps = [plan.deployment(g, simulated=True) for g in plan.groups]
        return fleet, make_router("plan", fleet, RoutingTable.from_plan(
            plan.models[0], plan.groups, deps)), live

    def reclaim(plan: Plan, groups: list[list[int]], t: float) -> list[list[int]]:
        """The groups without the replicas an outage takes at `t` (beyond what it leaves of
        their type): they stop serving then."""
        budget = dict(available_at(outages, t))
        out = []
        for g, idx in zip(plan.groups, groups, strict=True):
            keep = []
            for i in idx:
                left = budget.get(g.accelerator, math.inf)
                if left >= g.devices_per_replica and retired[i] > t:
                    budget[g.accelerator] = left - g.devices_per_replica
                    keep.append(i)
                elif retired[i] > t:
                    retired[i] = t
            out.append(keep)
        return out

    # engines' clocks start at 0: run in time shifted by the warm-up, report in day time
    shift = max(-float(day.arrivals.min()), 0.0) if len(day) else 0.0
    # midnight: the policy has seen the warm-up (the end of the day before)
    warm = day.arrivals < 0
    seen = _class_counts(day, warm, classes)
    rates = [float(seen.sum()) / max(-float(day.arrivals.min()), 1e-9) if warm.any() else 0.0]
    current = policy.initial(Observation(
        time=0.0, window=window, counts=seen.copy(), seen=seen.copy(), rates=tuple(rates),
        outstanding=0.0, available=available_at(outages, notice), current=None,  # type: ignore
        changed_at=-math.inf))
    groups, _ = build(current, -shift)  # running since before midnight
    installed, installed_groups = current, groups
    fleet, router, to_pool = install(current, groups)
    changed_at, changes, plans, moves = -math.inf, 0, [(0.0, current)], []
    windows = [_row(0.0, current)]
    pending = None  # (switch time, plan, groups, engines to retire)
    # events (time, order, kind): every window boundary a decision, `notice` before each
    # outage a decision, at its start the replicas it takes stop (whatever the policy did),
    # at its end they are asked for again; at equal times in that order
    order = {"window": 0, "notice": 1, "outage": 2, "restore": 3}
    events = sorted([(t, 0, "window") for t in np.arange(window, end, window).tolist()]
                    + [(max(o.start - notice, 0.0), 1, "notice") for o in outages
                       if 0 < o.start < end]
                    + [(o.start, 2, "outage") for o in outages if 0 <= o.start < end]
                    + [(o.end, 3, "restore") for o in outages if 0 < o.end < end])
    d = 0
    counts = np.zeros(len(seen))  # arrivals per class since the last window boundary
    cls = classify_for(current.models[0], day).tolist()
    arrivals, ins, outs = (day.arrivals.tolist(), day.input_tokens.tolist(),
                           day.output_tokens.tolist())

    def ask_again(plan: Plan, t: float):
        """Replicas of `plan` missing from what serves (an outage took them), asked for at
        `t` where availability allows: a switch to the same plan once they have started."""
        allowed = available_at(outages, t)
        if any(g.accelerator in allowed for g in plan.groups):
            return None  # still out: the next restore asks
        groups, new = build(plan, t)
        if not new:
            return None
        return (t + max(startup.get(pool[i].dep.accelerator.name, startup["default"])
                        for i in new), plan, groups, [])

    requests: list[Request] = []
    for k, a in enumerate([*arrivals, end]):  # (`end`: the events after the last arrival)
        while True:  # what happens before this arrival: a switch, decisions
            t_switch = pending[0] if pending else math.inf
            t_event, _, kind = events[d] if d < len(events) else (math.inf, 9, "")
            if min(t_switch, t_event) > a or min(t_switch, t_event) >= end:
                break
            if t_switch <= t_event:  # (event times are day times)
                _, plan, groups, retire = pending
                for i in retire:
                    retired[i] = min(retired[i], t_switch)
                installed, installed_groups = plan, reclaim(plan, groups, t_switch)
                fleet, router, to_pool = install(installed, installed_groups)
                plans.append((t_switch, plan))
                pending = ask_again(installed, t_switch)
                continue
            d += 1
            if kind == "outage":
                installed_groups = reclaim(installed, installed_groups, t_event)
                fleet, router, to_pool = install(installed, installed_groups)
                continue
            if kind == "restore":
                if pending is None:
                    pending = ask_again(installed, t_event)
                continue  # (else the pending switch asks, once it is done)
            boundary = kind == "window"
            if boundary:
                rates.append(float(counts.sum()) / window)
                windows.append(_row(t_event, current))
            obs = Observation(
                time=t_event, window=window, counts=counts.copy(), seen=seen.copy(),
                rates=tuple(rates),
                outstanding=sum(fleet.load(i, t_event + shift) for i in range(len(fleet)))
                / max(len(fleet), 1),
                available=available_at(outages, t_event + notice), current=current,
                changed_at=changed_at)
            if boundary:
                counts[:] = 0
            if progress:
                progress(t_event)
            if pending is not None:
                if kind == "notice":  # decide once the change under way is done
                    bisect.insort(events, (pending[0], order["notice"], "notice"), lo=d)
                continue
            target = policy.decide(obs)
            if target is None or same_fleet(target, current):
                continue
            groups, new = build(target, t_event)
            kept = {i for idx in groups for i in idx}
            retire = [i for i in to_pool if i not in kept]
            ready = t_event + max((startup.get(pool[i].dep.accelerator.name,
                                               startup["default"]) for i in new), default=0.0)
            pending = (ready, target, groups, retire)
            moves.append((t_event, ready))
            current, changed_at, changes = target, t_event, changes + 1
            if windows[-1].start == t_event:
                windows[-1] = _row(t_event, target)
        if k == len(arrivals):
            break
        c = cls[k]
        if c >= 0 and a >= 0:  # (the warm-up is in `seen` already)
            counts[c] += 1
            seen[c] += 1
        req = Request(k, a + shift, ins[k], outs[k], c)
        requests.append(req)
        replica = router.route(req, a + shift)
        if replica >= 0:
            fleet.dispatch(replica, req)
            req.replica = to_pool[replica]
    for engine in pool:
        engine.advance(math.inf)
    for r in requests:  # back to day time
        r.arrival -= shift
        r.first_token -= shift
        r.finish -= shift
    result = _score(policy, requests, windows, pool, created, retired, price, plans, changes,
                    end, time.perf_counter() - started_wall)
    result.moves = moves
    return result


def _row(t: float, plan: Plan) -> WindowStats:
    devices: dict[str, int] = {}
    for g in plan.groups:
        devices[g.accelerator] = devices.get(g.accelerator, 0) + g.replicas * \
            g.devices_per_replica
    label = ", ".join(f"{g.replicas}x {g.accelerator} TP{g.tp}" for g in plan.groups)
    return WindowStats(t, 0.0, label, plan.usd_per_hour, devices)


def _class_counts(day: Trace, mask: np.ndarray, classes) -> np.ndarray:
    """Arrivals per class of `classes` (anything with .classes) among `mask`."""
    cls = classify_for(classes, Trace("warm", day.arrivals[mask], day.input_tokens[mask],
                                      day.output_tokens[mask]))
    return np.bincount(cls[cls >= 0], minlength=len(classes.classes)).astype(np.float64)


def _score(policy, requests: list[Request], windows: list[WindowStats], pool, created,
           retired, price, plans, changes, end: float, wall: float) -> DayResult:
    entry = plans[0][1].models[0]
    arrival = np.array([r.arrival for r in requests])
    first = np.array([r.first_token for r in requests])
    finish = np.array([r.finish for r in requests])
    out = np.array([r.output_tokens for r in requests])
    replica = np.array([r.replica for r in requests])
    tpot = np.where(out > 1, (finish - first) / np.maximum(out - 1, 1), 0.0)
    with np.errstate(invalid="ignore"):
        met = ~np.isnan(finish) & (first - arrival <= entry.slo.ttft) & (tpot <= entry.slo.tpot)
    scored = (arrival >= 0) & (arrival < end)
    # each engine is paid from its request until it stopped and drained, within the day
    last_finish = np.full(len(pool), -math.inf)
    ok = replica >= 0
    np.maximum.at(last_finish, replica[ok], np.nan_to_num(finish[ok], nan=-math.inf))
    starts = np.array([w.start for w in windows] + [end])
    for i in range(len(pool)):
        stop = min(max(retired[i], last_finish[i]) if math.isfinite(retired[i]) else end, end)
        begin = max(created[i], 0.0)
        for w in range(len(windows)):
            lo, hi = max(begin, starts[w]), min(stop, starts[w + 1])
            if hi > lo:
                windows[w].cost_usd += (hi - lo) / 3600.0 * price[i]
    idx = np.clip(np.searchsorted(starts, arrival, side="right") - 1, 0, len(windows) - 1)
    for w in range(len(windows)):
        sel = scored & (idx == w)
        windows[w].requests = int(sel.sum())
        windows[w].met = int(met[sel].sum())
        span = starts[w + 1] - starts[w]
        windows[w].rate = windows[w].requests / span if span > 0 else 0.0
    return DayResult(policy=policy.name, windows=windows, changes=changes,
                     requests=int(scored.sum()), met=int(met[scored].sum()),
                     cost_usd=sum(w.cost_usd for w in windows), wall_seconds=wall, plans=plans)
