"""What an autoscaler decides each window, from what it has seen.

A policy gets an `Observation` (arrivals per class in the last window and since the start, the
rates of past windows, requests outstanding per replica now, the availability in force) and
returns the plan to move to, or None to keep the current one. The replay (autoscale.replay)
carries the plan out: new replicas serve once started, the old ones drain.

- `Replanner`: forecasts the next window's rate (the last window's, or its trend when rising,
  plus headroom) and mix (all classes seen so far, smoothed), solves the planning MILP on
  configs measured once, and changes plan only when the current one cannot carry the forecast
  or breaks availability (it then grows the kinds of replica it has, unless a new mix is
  cheaper by more than the threshold), or when the saving is above the threshold and pays for
  the change (the new replicas' start-up time); it never scales down within `dwell` windows of
  a change. A plan carries the forecast when neither the rate nor that of a class with 1% of
  the requests or more is above what the plan was sized for, or else when a plan on its kinds
  of replica costs no more. With `only` it is the
  single-type autoscaler.
- `Static`: one plan all day (sized for the peak).
- `QueueScaler`: one config's replica count from requests outstanding per replica (as an
  autoscaler on the engines' queue metrics does), with no model of the requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from hetserve.catalog import Catalog
from hetserve.errors import HetserveError
from hetserve.perf import Deployment
from hetserve.plan.configs import Config, ModelDemand, measure_configs
from hetserve.plan.planfile import Plan
from hetserve.plan.planner import solve_plan

COVER_SLACK = 0.03  # a class may run this far above the rate its plan was sized for
GAP = 0.01  # each window's plan is solved to within 1% of the optimum (below the threshold)
MAJOR = 0.01  # classes with at least this share of the requests are checked one by one


@dataclass(frozen=True)
class Observation:
    time: float  # s from midnight
    window: float  # s
    counts: np.ndarray  # arrivals per class in the last window
    seen: np.ndarray  # arrivals per class since the replay started
    rates: tuple[float, ...]  # req/s of each past window, oldest first
    outstanding: float  # requests in flight per replica now (running and waiting)
    available: dict[str, int]  # limits in force for the next window
    current: Plan
    changed_at: float  # when the current plan was decided


def demand_for(demand: ModelDemand, rate: float, mix: np.ndarray) -> ModelDemand:
    """`demand` with its classes' rates set to `rate` x `mix`."""
    wl = demand.workload
    classes = tuple(replace(c, rate=float(rate * m)) for c, m in zip(wl.classes, mix,
                                                                       strict=True))
    return replace(demand, workload=replace(wl, classes=classes, rate=float(rate)))


def plan_devices(plan: Plan) -> dict[str, int]:
    out: dict[str, int] = {}
    for g in plan.groups:
        out[g.accelerator] = out.get(g.accelerator, 0) + g.replicas * g.devices_per_replica
    return out


def replica_kind(g) -> tuple:
    """What makes replicas interchangeable: accelerator, parallelism, dtype, engine and its
    batch limits (a group of the plan file, or a Deployment: the same fields by other names)."""
    if isinstance(g, Deployment):
        return (g.accelerator.name, g.tp, g.pp, g.weight_dtype, g.engine, g.max_seqs,
                g.chunk_tokens)
    return (g.accelerator, g.tp, g.pp, g.dtype, g.engine, g.max_num_seqs,
            g.max_num_batched_tokens)


def _new_cost(cur: Plan, new: Plan) -> float:
    """$/h of the replicas `new` has beyond those of the same kind `cur` runs."""
    have: dict[tuple, int] = {}
    for g in cur.groups:
        have[replica_kind(g)] = have.get(replica_kind(g), 0) + g.replicas
    out = 0.0
    for g in new.groups:
        k = replica_kind(g)
        extra = max(0, g.replicas - have.get(k, 0))
        have[k] = max(0, have.get(k, 0) - g.replicas)
        out += extra * g.usd_per_hour / g.replicas
    return out


def same_fleet(a: Plan, b: Plan) -> bool:
    return sorted((replica_kind(g), g.replicas) for g in a.groups) == \
        sorted((replica_kind(g), g.replicas) for g in b.groups)


class Replanner:
    name = "adaptive"

    def __init__(self, demand: ModelDemand, catalog: Catalog, *, only: str | None = None,
                 headroom: float = 0.15, threshold: float = 0.1, dwell: int = 2,
                 startup: float = 180.0, configs: list[Config] | None = None) -> None:
        self.demand, self.headroom, self.threshold, self.dwell = demand, headroom, threshold, \
            dwell
        self.startup = startup
        self.catalog = catalog.only([only]) if only else catalog
        configs = configs if configs is not None else measure_configs(demand, catalog)
        self.configs = [c for c in configs if only is None
                        or c.deployment.accelerator.name == only]
        if only:
            self.name = f"adaptive, {only}"

    def solve(self, rate: float, mix: np.ndarray, available: dict[str, int],
              keep: Plan | None = None) -> Plan | None:
        """The cheapest plan for `rate` x `mix` within `available`; with `keep`, on the
        configs of that plan only (growing or shrinking it, no new kinds of replica)."""
        cat = self.catalog.with_availability(
            {k: v for k, v in available.items() if k in self.catalog.accelerators})
        kinds = None if keep is None else {replica_kind(g) for g in keep.groups}
        configs = self.configs if kinds is None else [
            c for c in self.configs if replica_kind(c.deployment) in kinds]
        try:
            return solve_plan([demand_for(self.demand, rate, mix)], cat, "cost", None, False,
                              measured={self.demand.model.name: configs}, rel_gap=GAP)
        except HetserveError:
            return None

    def forecast(self, obs: Observation) -> tuple[float, np.ndarray]:
        last = obs.rates[-1] if obs.rates else float(obs.counts.sum()) / obs.window
        prev = obs.rates[-2] if len(obs.rates) > 1 else last
        rate = max(last, last + (last - prev)) * (1.0 + self.headroom)  # rising: the trend
        mix = (obs.seen + 0.5) / (obs.seen.sum() + 0.5 * len(obs.seen))
        return max(rate, 1e-3), mix

    def initial(self, obs: Observation) -> Plan:
        rate, mix = self.forecast(obs)
        plan = self.solve(rate, mix, obs.available)
        if plan is None:
            raise HetserveError(f"{self.name}: no plan serves the first window's "
                                f"{rate:.2f} req/s")
        return plan

    def decide(self, obs: Observation) -> Plan | None:
        rate, mix = self.forecast(obs)
        cur = obs.current
        fits = all(plan_devices(cur).get(t, 0) <= n for t, n in obs.available.items())
        # the current plan carries the forecast where neither the rate nor a class of more
        # than MAJOR of the requests is above what it was sized for (the share of a rarer
        # class is mostly noise, and it may be served best effort)
        planned = np.array([c.rate for c in cur.models[0].classes])
        major = mix >= MAJOR
        covered = fits and rate <= cur.models[0].rate * (1.0 + COVER_SLACK) and bool(np.all(
            rate * mix[major] <= planned[major] * (1.0 + COVER_SLACK) + 1e-9))
        if fits and not covered:
            # beyond its sizing: the same kinds of replica, as many as the forecast needs (a
            # plan no dearer than the current one: its replicas still carry it)
            grown = self.solve(rate, mix, obs.available, keep=cur)
            if grown is not None and grown.usd_per_hour <= cur.usd_per_hour + 1e-9:
                covered = True
            else:  # must move: grow, unless a new mix is cheaper by more than the threshold
                best = self.solve(rate, mix, obs.available)
                if grown is not None and (best is None or grown.usd_per_hour <=
                                          best.usd_per_hour * (1.0 + self.threshold)):
                    return grown
                return best if best is not None else self._largest(obs)
        if not covered:  # the availability changed: move to what it allows
            return self.solve(rate, mix, obs.available) or self._largest(obs)
        if rate >= (1.0 - self.threshold) * cur.models[0].rate:
            return None
        # moving to save: sized with a threshold's margin more, so that the next window's
        # noise does not force it back up (no flapping)
        best = self.solve(rate * (1.0 + self.threshold), mix, obs.available)
        if best is None:
            return None
        saving = cur.usd_per_hour - best.usd_per_hour
        started = _new_cost(cur, best) * self.startup / 3600.0  # paid while they start
        recent = obs.time - obs.changed_at < self.dwell * obs.window
        if saving > self.threshold * cur.usd_per_hour and not recent \
                and saving * obs.window / 3600.0 > started:
            return best
        return None

    def _largest(self, obs: Observation) -> Plan | None:
        """Nothing serves the forecast: the most the available devices can carry."""
        rate, mix = self.forecast(obs)
        lo, hi = 0.0, rate
        found = None
        for _ in range(12):
            mid = (lo + hi) / 2
            plan = self.solve(mid, mix, obs.available)
            if plan is None:
                hi = mid
            else:
                lo, found = mid, plan
        return found


class Static:
    name = "static peak"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def initial(self, obs: Observation) -> Plan:
        return self.plan

    def decide(self, obs: Observation) -> Plan | None:
        return None


class QueueScaler:
    """Replicas of one group (of `plan`) so that each has about `target` requests in flight."""

    def __init__(self, plan: Plan, target: float = 16.0, low: float = 0.5) -> None:
        if len(plan.groups) != 1:
            raise HetserveError("the queue scaler scales a plan of one replica group")
        self.plan, self.target, self.low = plan, target, low
        g = plan.groups[0]
        self.name = f"queue, {g.accelerator}"

    def initial(self, obs: Observation) -> Plan:
        return self.plan

    def decide(self, obs: Observation) -> Plan | None:
        g = obs.current.groups[0]
        load = obs.outstanding * g.replicas
        if obs.outstanding > self.target:
            n = math.ceil(load / self.target)
        elif obs.outstanding < self.low * self.target and g.replicas > 1:
            n = max(1, math.ceil(load / self.target))
        else:
            return None
        return with_replicas(obs.current, n) if n != g.replicas else None


def with_replicas(plan: Plan, n: int) -> Plan:
    """A one-group plan with `n` replicas (price scaled)."""
    (g,) = plan.groups
    price = g.usd_per_hour / g.replicas
    group = g.model_copy(update={"replicas": n, "usd_per_hour": price * n})
    return plan.model_copy(update={"groups": [group], "usd_per_hour": price * n})
