"""Planning: configs, the cost/throughput MILPs (HiGHS), baselines and the plan file.

`plan(...)` (also `hetserve.make_plan`) plans one or more models on a workload and returns a
`Plan`, the object the plan file serialises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hetserve.catalog import Catalog, load_catalog
from hetserve.errors import HetserveError, check_rate, positive
from hetserve.models import check_dtype, get_model
from hetserve.perf import SLO
from hetserve.perf.capacity import DEFAULT_QUANTILE
from hetserve.perf.model import check_engine, check_step_margin
from hetserve.plan.configs import ModelDemand
from hetserve.plan.planfile import Plan, load_plan
from hetserve.plan.planner import TIME_LIMIT, solve_plan
from hetserve.workload import ClassGrid, classify, load_trace
from hetserve.workload.burst import class_burst_factors

# Bursts: plan for the service rate at which 99% of requests would wait at most half the TTFT
# limit in a fluid queue fed by the trace, relative to Poisson arrivals (workload.burst)
BURST_SLACK = 0.5
BURST_QUANTILE = 0.99
# Share of each model's requests that must meet the SLO; classes holding together no more
# than the rest may be served best effort
DEFAULT_ATTAINMENT = 0.99
MAX_QUANTILE = 0.999

__all__ = ["ModelRequest", "Plan", "load_plan", "model_demands", "parse_model_request", "plan",
           "plan_catalog", "solve_plan"]


@dataclass(frozen=True)
class ModelRequest:
    """One model to plan; unset fields take the plan call's defaults."""

    model: str
    workload: str | None = None
    rate: float | None = None
    ttft: float | None = None
    tpot: float | None = None


def parse_model_request(text: str, parse_duration) -> ModelRequest:
    """NAME[:workload[:rate[:ttft[:tpot]]]], e.g. llama-3.1-8b:azure-code:5:1s:30ms."""
    parts = text.split(":")
    if len(parts) > 5 or not parts[0]:
        raise HetserveError(f"--model '{text}': expected NAME[:workload[:rate[:ttft[:tpot]]]]")
    parts += [""] * (5 - len(parts))
    rate = check_rate(parts[2], f"--model '{text}': rate") if parts[2] else None
    return ModelRequest(
        parts[0], parts[1] or None, rate,
        parse_duration(parts[3], "--model ttft") if parts[3] else None,
        parse_duration(parts[4], "--model tpot") if parts[4] else None,
    )


def check_attainment(attainment: float) -> float:
    if isinstance(attainment, bool) or not (isinstance(attainment, int | float)
                                            and 0 < attainment <= 1):
        raise HetserveError(f"--attainment: expected a share in (0, 1], got {attainment!r}")
    return float(attainment)


def latency_quantile(attainment: float) -> float:
    """The share of a class's requests its latencies are sized for: the attainment target
    (at most MAX_QUANTILE, at least the p90 of latency limits)."""
    return min(max(attainment, DEFAULT_QUANTILE), MAX_QUANTILE)


def model_demands(
    models: str | ModelRequest | Sequence[str | ModelRequest],
    *,
    workload: str = "azure-conv",
    rate: float | None = None,
    ttft: float = 2.0,
    tpot: float = 0.05,
    dtype: str | None = None,
    max_devices: int | None = None,
    grid: ClassGrid | None = None,
    engine: str = "vllm",
    attainment: float = DEFAULT_ATTAINMENT,
    step_margin: float = 0.0,
) -> list[ModelDemand]:
    """What each model must serve: its workload's request classes and its SLO; capacities are
    sized as if every step took (1 + step_margin) x the modelled time."""
    if isinstance(models, str | ModelRequest):
        models = [models]
    check_dtype(dtype)
    check_engine(engine)
    check_attainment(attainment)
    check_step_margin(step_margin)
    if max_devices is not None:
        positive(max_devices, "--max-devices", integer=True)
    if not models:
        raise HetserveError("--model: expected at least one model")
    demands: list[ModelDemand] = []
    traces: dict[str, object] = {}  # each trace file read once
    for item in models:
        req = item if isinstance(item, ModelRequest) else ModelRequest(item)
        spec = get_model(req.model)
        if any(d.model.name == spec.name for d in demands):
            raise HetserveError(f"--model {spec.name} is given twice")
        source = req.workload or workload
        if source not in traces:
            traces[source] = load_trace(source)
        trace = traces[source].for_model(spec.name, spec.matches)  # a model column splits it
        wl = classify(trace, grid, req.rate if req.rate is not None else rate)
        slo = SLO(positive(req.ttft if req.ttft is not None else ttft, "--ttft"),
                  positive(req.tpot if req.tpot is not None else tpot, "--tpot"),
                  latency_quantile(attainment))
        arrivals = trace.arrivals * (trace.rate / wl.rate)  # at the rate planned for
        lifetime = np.array([slo.ttft + c.mean_output * slo.tpot for c in wl.classes])
        burst = class_burst_factors(arrivals, wl.request_class, len(wl.classes),
                                    BURST_SLACK * slo.ttft, BURST_QUANTILE, lifetime)
        demands.append(ModelDemand(spec, wl, slo, dtype, max_devices, tuple(burst), engine,
                                   attainment, float(step_margin)))
    return demands


def plan_catalog(catalog: Catalog | None = None, prices: Mapping[str, float] | None = None,
                 available: Mapping[str, int] | None = None,
                 only: Iterable[str] | None = None) -> Catalog:
    cat = catalog or load_catalog()
    if prices:
        cat = cat.with_prices(prices)
    if available:
        cat = cat.with_availability(available)
    if only is not None:
        cat = cat.only(only)
    return cat


def plan(
    models: str | ModelRequest | Sequence[str | ModelRequest],
    *,
    workload: str = "azure-conv",
    rate: float | None = None,
    ttft: float = 2.0,
    tpot: float = 0.05,
    objective: str = "cost",
    budget: float | None = None,
    catalog: Catalog | None = None,
    prices: Mapping[str, float] | None = None,
    available: Mapping[str, int] | None = None,
    only: Iterable[str] | None = None,
    dtype: str | None = None,
    max_devices: int | None = None,
    grid: ClassGrid | None = None,
    engine: str = "vllm",
    attainment: float = DEFAULT_ATTAINMENT,
    step_margin: float = 0.0,
    baselines: bool = True,
    time_limit: float = TIME_LIMIT,
) -> Plan:
    """The cheapest plan (objective='cost') or the most throughput within budget/availability
    (objective='throughput') for the models' workloads under their SLOs. `available` limits the
    named types (others stay unlimited); `only` restricts planning to the named types;
    `max_devices` caps the devices (TP x PP) of one replica; `step_margin` sizes capacities
    for steps that much slower than modelled (0.1: 10%), and proving simulates them so."""
    demands = model_demands(models, workload=workload, rate=rate, ttft=ttft, tpot=tpot,
                            dtype=dtype, max_devices=max_devices, grid=grid, engine=engine,
                            attainment=attainment, step_margin=step_margin)
    return solve_plan(demands, plan_catalog(catalog, prices, available, only), objective,
                      budget, baselines, time_limit=time_limit)
