"""Adapt through the day: re-plan the GPU mix as traffic and availability change.

`compare_day` replays one day (autoscale.day) through the simulator under the adaptive
re-planner and the policies it is measured against: a static plan sized for the peak, the same
re-planner restricted to the single best accelerator type, and a scaler on queue length alone
(autoscale.policy), with every transition in the replay (autoscale.replay).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hetserve.autoscale.day import DAY, Outage, rate_at
from hetserve.autoscale.policy import QueueScaler, Replanner, Static
from hetserve.autoscale.replay import DayResult, replay_day
from hetserve.catalog import Catalog
from hetserve.errors import HetserveError
from hetserve.plan.configs import ModelDemand, measure_configs
from hetserve.pool import run_all
from hetserve.workload import Trace

__all__ = ["DayOptions", "compare_day"]


@dataclass(frozen=True)
class DayOptions:
    window: float = 900.0
    ratio: float = 3.0
    peak_hour: float = 14.0
    startup: float = 180.0  # s, every type
    notice: float = 300.0
    headroom: float = 0.15
    threshold: float = 0.1
    queue_target: float = 16.0


def compare_day(demand: ModelDemand, catalog: Catalog, day: Trace, opts: DayOptions,
                mean_rate: float, outages: list[Outage] | None = None, compare: bool = True,
                end: float = DAY,
                progress: Callable[[str, float], None] | None = None,
                workers: int = 1) -> list[DayResult]:
    """The adaptive re-planner's day, then (with `compare`) the static peak plan's, the
    single-type re-planner's and the queue scaler's on the same arrivals. `mean_rate`: the
    day curve's mean (the baselines are sized from the curve, not from the part replayed).
    `workers`: replay the policies in that many worker processes."""
    if not 0 < opts.window <= end:
        raise HetserveError(f"window: {opts.window:g} s, expected more than 0 and at most the "
                            f"replay's {end:g} s")
    configs = measure_configs(demand, catalog)
    kw = {"headroom": opts.headroom, "threshold": opts.threshold, "startup": opts.startup,
          "configs": configs}
    adaptive = Replanner(demand, catalog, **kw)
    policies = [adaptive]
    if compare:
        mix = np.array([c.count for c in demand.workload.classes], dtype=np.float64)
        mix /= mix.sum()
        mean = mean_rate
        peak = float(rate_at(opts.peak_hour * 3600.0, mean, opts.ratio, opts.peak_hour))
        static = adaptive.solve(peak, mix, {})
        if static is None:
            raise HetserveError(f"no plan serves the day's peak of {peak:.2f} req/s")
        singles = {}
        for acc in catalog:
            plan = Replanner(demand, catalog, only=acc.name, **kw).solve(mean, mix, {})
            if plan is not None:
                singles[acc.name] = plan
        if not singles:
            raise HetserveError("no single accelerator type serves the mean rate")
        best = min(singles, key=lambda n: singles[n].usd_per_hour)
        policies += [Static(static), Replanner(demand, catalog, only=best, **kw),
                     QueueScaler(_one_group(singles[best]), opts.queue_target)]
    shared = (day, demand.workload, opts, outages, end)
    if workers > 1:  # the policies side by side, a process each (no progress to report)
        return run_all(_replay, shared, policies, workers=workers)
    results = []
    for policy in policies:
        def tick(t, name=policy.name):
            if progress:
                progress(name, t)
        results.append(_replay(shared, policy, tick))
    return results


def _replay(shared, policy, progress: Callable[[float], None] | None = None) -> DayResult:
    day, classes, opts, outages, end = shared
    return replay_day(day, policy, classes, window=opts.window,
                      startup={"default": opts.startup}, notice=opts.notice, outages=outages,
                      end=end, progress=progress)


def _one_group(plan):
    """The plan's largest group alone, all classes routed to it (for the queue scaler)."""
    g = max(plan.groups, key=lambda g: g.replicas * g.devices_per_replica)
    n = sum(x.replicas * x.devices_per_replica for x in plan.groups) // g.devices_per_replica
    shares = {c.name: 1.0 for c in plan.models[0].classes}
    price = g.usd_per_hour / g.replicas
    group = g.model_copy(update={"replicas": max(n, 1), "usd_per_hour": price * max(n, 1),
                                 "shares": shares})
    return plan.model_copy(update={"groups": [group], "usd_per_hour": price * max(n, 1)})
