"""Build the MILP from models x configs x classes, solve it and its homogeneous baselines, and
explain infeasibility (which constraint binds, by how much)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from hetserve.catalog import Catalog
from hetserve.errors import HetserveError, positive
from hetserve.perf import Deployment, class_capacity
from hetserve.perf.model import margin_pct
from hetserve.plan.configs import (
    TP_DEGREES,
    Config,
    ModelDemand,
    enumerate_configs,
    measure_all,
    pp_degrees,
)
from hetserve.plan.milp import (
    COST_ABS_GAP,
    LINKED_GAP,
    MAX_REPLICAS,
    Problem,
    Solution,
    in_threads,
    max_scale,
    min_cost,
    min_cost_blocks,
    min_cost_linked,
    replicas_floor,
)
from hetserve.plan.planfile import (
    Baseline,
    ClassSpec,
    ModelEntry,
    Plan,
    ReplicaGroup,
    SLOSpec,
    SolverInfo,
    best_baseline,
)
from hetserve.plan.serving import (
    QUANTIZATION,
    context_length,
    engine_command,
    engine_image,
    engine_version,
)


@dataclass
class Space:
    """All models' configs and classes laid out as one problem."""

    demands: list[ModelDemand]
    configs: list[Config]
    problem: Problem
    class_offset: list[int]  # per demand: first global class


def build_space(demands: Sequence[ModelDemand], catalog: Catalog, budget: float | None,
                rate_scale: float = 1.0, derate: Mapping[str, float] | None = None,
                measured: Mapping[str, list[Config]] | None = None) -> Space:
    """derate: config name -> factor on its capacities (what simulation found it sustains);
    measured: per model name, its configs from measure_configs on this catalog (else measured
    here)."""
    configs: list[Config] = []
    offsets, class_model, names, demand = [], [], [], []
    measured = measure_all(demands, catalog, measured)  # the costly step, models side by side
    for k, d in enumerate(demands):
        offsets.append(len(names))
        for w, c in enumerate(d.workload.classes):
            class_model.append(k)
            names.append(f"{d.model.name}:{c.name}")
            demand.append(c.rate * rate_scale * d.class_burst(w))
        cfgs = enumerate_configs(d, catalog, derate=derate, measured=measured[d.model.name])
        if not cfgs:
            raise HetserveError(_no_config_reason(d, catalog))
        configs += cfgs
    W = len(names)
    cap, tail = np.zeros((len(configs), W)), np.zeros((len(configs), W))
    model_index = {d.model.name: k for k, d in enumerate(demands)}
    for i, c in enumerate(configs):
        k = model_index[c.model]
        cap[i, offsets[k]:offsets[k] + len(c.cap)] = c.cap
        tail[i, offsets[k]:offsets[k] + len(c.tail)] = c.tail
    share = np.concatenate([d.tail_share for d in demands])
    groups = [(offsets[k] + d.tail_classes, 1.0 - d.attainment) for k, d in enumerate(demands)]
    unserved = np.nonzero(cap.max(axis=0) <= 0)[0]
    for k, d in enumerate(demands):  # classes no config serves within the SLO: best effort
        end = offsets[k] + len(d.workload.classes)
        mine = unserved[(unserved >= offsets[k]) & (unserved < end)]
        if len(mine) and (share[mine].sum() > 1.0 - d.attainment + 1e-12
                          or (tail[:, mine].max(axis=0) <= 0).any()):
            cls = d.workload.classes[int(mine[0]) - offsets[k]]
            raise HetserveError(_class_reason(d, catalog, cls, len(mine)))
    floor = replicas_floor(cap, np.array(demand))
    if floor > MAX_REPLICAS:
        raise HetserveError(f"--rate: the load needs at least {floor:.3g} replicas (more than "
                            f"{MAX_REPLICAS:,}); check the rate")
    types = list(dict.fromkeys(c.deployment.accelerator.name for c in configs))
    usage = np.zeros((len(configs), len(types)))
    for i, c in enumerate(configs):
        usage[i, types.index(c.deployment.accelerator.name)] = c.deployment.devices
    avail = np.array([catalog.availability(t) if catalog.availability(t) is not None
                      else np.inf for t in types], dtype=np.float64)
    problem = Problem([c.name for c in configs], [c.deployment.usd_per_hour for c in configs],
                      cap, np.array(demand), names, usage, types, avail, budget, tail, share,
                      groups)
    return Space(list(demands), configs, problem, offsets)


def _availability_reason(d: ModelDemand, catalog: Catalog, cls=None) -> str | None:
    """When --available is what leaves the model (or class `cls`) without a config: which
    replica it would need."""
    if not catalog.available:
        return None
    unlimited = Catalog(list(catalog))
    serving = [c for c in enumerate_configs(d, unlimited, keep_dominated=True)
               if cls is None or c.cap[cls.index] > 0]
    if not serving:
        return None
    small = min(serving, key=lambda c: (c.deployment.devices, c.deployment.usd_per_hour))
    what = f"class {cls.name} of {d.model.name}" if cls is not None else d.model.name
    limits = ", ".join(f"{n} x {name}" for name, n in catalog.available.items())
    return (f"no plan fits the availability: {what} needs a replica of at least "
            f"{small.deployment.devices} devices (e.g. {small.deployment.label}), and "
            f"--available allows {limits}")


def _no_config_reason(d: ModelDemand, catalog: Catalog) -> str:
    limited = _availability_reason(d, catalog)
    if limited:
        return limited
    if d.max_devices:
        unlimited = _no_config_reason(replace(d, max_devices=None), catalog)
        return (f"{d.model.name}: no config of at most {d.max_devices} devices per replica "
                f"serves any class (raise --max-devices); without the limit: {unlimited}")
    fits = [Deployment(d.model, a, tp=min(8, a.max_per_node), pp=pp, dtype=d.dtype)
            for a in catalog for pp in pp_degrees(d.model)]
    if not any(dep.fits for dep in fits):
        biggest = max(catalog, key=lambda a: a.memory_gb * min(8, a.max_per_node))
        dep = Deployment(d.model, biggest, tp=min(8, biggest.max_per_node), dtype=d.dtype)
        return (f"{d.model.name} fits no accelerator in the catalog "
                f"(even {dep.label}: {dep.why_not()})")
    busiest = max(d.workload.classes, key=lambda c: c.rate)
    return _class_reason(d, catalog, busiest, len(d.workload.classes))


def _class_reason(d: ModelDemand, catalog: Catalog, cls, count: int) -> str:
    """Why no config serves `cls` (and count - 1 more): the limit missed, and by how much."""
    limited = _availability_reason(d, catalog, cls)
    if limited:
        return limited
    best_ttft, best_tpot, who_ttft, who_tpot, reason = np.inf, np.inf, "", "", ""
    for acc in catalog:
        for tp, pp in itertools.product(TP_DEGREES, pp_degrees(d.model)):
            if d.max_devices and tp * pp > d.max_devices:
                continue
            dep = Deployment(d.model, acc, tp=tp, pp=pp, dtype=d.dtype, engine=d.engine,
                             step_margin=d.step_margin)
            if not dep.fits:
                continue
            cap = class_capacity(dep, [cls.mean_input], [cls.mean_output], d.slo)
            reason = reason or cap.reason[0]
            if cap.best_ttft[0] < best_ttft:
                best_ttft, who_ttft = float(cap.best_ttft[0]), dep.label
            if cap.best_tpot[0] < best_tpot:
                best_tpot, who_tpot = float(cap.best_tpot[0]), dep.label
    more = f" (and {count - 1} more classes)" if count > 1 else ""
    margin = (f" with steps {margin_pct(d.step_margin)} slower (--step-margin)"
              if d.step_margin else "")
    head = f"no config meets the SLO for class {cls.name} of {d.model.name}{more}{margin}: "
    if best_ttft > d.slo.ttft:
        return head + (f"TTFT limit {d.slo.ttft:g}s, the fastest ({who_ttft}) needs "
                       f"{best_ttft:.3g}s, {best_ttft - d.slo.ttft:.3g}s over")
    if best_tpot > d.slo.tpot:
        return head + (f"TPOT limit {d.slo.tpot * 1e3:g}ms, the fastest ({who_tpot}) needs "
                       f"{best_tpot * 1e3:.3g}ms, {(best_tpot - d.slo.tpot) * 1e3:.3g}ms over")
    return head + reason


def _explain_infeasible(space: Space) -> str:
    """Which of budget and availability binds, and by how much."""
    p = space.problem
    unlimited = min_cost(replace(p, budget=None, available=np.full(len(p.types), np.inf)))
    avail_sol = min_cost(replace(p, budget=None))
    if not avail_sol.ok:
        used = p.usage.T @ unlimited.replicas
        short = [(t, int(used[k] - p.available[k])) for k, t in enumerate(p.types)
                 if used[k] > p.available[k]]
        detail = ", ".join(f"{t} short by {n}" for t, n in short) or "availability too low"
        return (f"no plan fits the availability: the cheapest plan without limits "
                f"(${unlimited.cost:.2f}/h) needs more devices: {detail}")
    return (f"the budget is short by ${avail_sol.cost - p.budget:.2f}/h: the cheapest plan "
            f"that serves the load costs ${avail_sol.cost:.2f}/h, budget ${p.budget:.2f}/h")


TIME_LIMIT = 60.0  # s HiGHS may take on a plan, by default (plan --time-limit)


def _solve(problem: Problem, objective: str, blocks=None, rel_gap: float = 0.0,
           time_limit: float = TIME_LIMIT) -> Solution:
    if objective == "throughput":
        return max_scale(problem, time_limit)
    coupled = problem.budget is not None or np.isfinite(problem.available).any()
    if not blocks or len(blocks) < 2:
        return min_cost(problem, rel_gap=rel_gap, time_limit=time_limit)
    if not coupled:
        return min_cost_blocks(problem, blocks, rel_gap=rel_gap, time_limit=time_limit)
    # a budget or availability limit couples the models: Lagrangian decomposition by model;
    # where it cannot prove its plan (a limit no plan it found fits), the joint MILP in the
    # time left, with the better plan and the better bound of the two
    linked = min_cost_linked(problem, blocks, rel_gap=max(rel_gap, LINKED_GAP),
                             block_gap=rel_gap, time_limit=time_limit)
    if linked.status in ("optimal", "infeasible") or not np.isfinite(linked.bound) \
            or (linked.ok and linked.seconds > 0.75 * time_limit):  # too little time left for
        return linked  # the joint MILP to do better (building it alone takes seconds)
    joint = min_cost(problem, rel_gap=rel_gap,
                     time_limit=max(time_limit - linked.seconds, 1.0))
    best = min((s for s in (linked, joint) if s.ok), key=lambda s: s.objective, default=joint)
    if not best.ok:
        return best
    bound = min(max(linked.bound, joint.bound if joint.ok else -np.inf), best.objective)
    proven = best.objective - bound <= max(max(rel_gap, LINKED_GAP) * best.objective,
                                           COST_ABS_GAP)
    return replace(best, bound=bound, status="optimal" if proven else best.status,
                   seconds=linked.seconds + joint.seconds)


def _blocks(space: Space, keep: np.ndarray | None = None):
    """Per model: (its config indices, its class indices), within the configs kept."""
    out = []
    keep = np.ones(len(space.configs), bool) if keep is None else keep
    kept = np.nonzero(keep)[0]
    for k, d in enumerate(space.demands):
        ci = np.array([j for j, i in enumerate(kept) if space.configs[i].model == d.model.name],
                      dtype=int)
        off = space.class_offset[k]
        out.append((ci, np.arange(off, off + len(d.workload.classes))))
    return out


# Baselines are proven to within this share of their cost (one type alone can need thousands
# of replicas, where an absolute $0.0005/h gap takes HiGHS minutes): a saving quoted against one
# is exact to 0.01 percentage points
BASELINE_GAP = 1e-4
# Every baseline gets BASELINE_FIRST seconds; those that could still be the best one (their
# proven bound below the best cost found) and are not proven to BASELINE_GAP get up to
# BASELINE_SECONDS in all. Past that, a baseline is its best plan found (an upper bound).
# (A lone RTX4090 or A40 serving 8B at 50 req/s takes HiGHS 7-10 s to prove, and is 70-95%
# dearer than the best type: its exact cost changes no saving.)
BASELINE_FIRST = 1.0
BASELINE_SECONDS = 10.0


def _baselines(space: Space, objective: str, budget, avail: dict[str, int]
               ) -> tuple[list[Baseline], dict[str, Plan]]:
    """Per accelerator type: the best plan on that type alone (its summary, and the plan)."""
    p = space.problem
    out: list[Baseline | None] = [None] * len(p.types)
    solved: dict[int, tuple[np.ndarray, Problem, Solution | None]] = {}
    for t, name in enumerate(p.types):
        keep = p.usage[:, t] > 0
        sub = p.restricted(keep)
        served = (sub.cap.max(axis=0) > 0) | (sub.tail.max(axis=0) > 0)
        if not served.all():
            miss = p.classes[int(np.argmin(served))]
            out[t] = Baseline(accelerator=name, reason=f"cannot serve {miss} within the SLO")
            continue
        solved[t] = (keep, sub, None)

    def run(t: int, seconds: float) -> Solution:  # the baselines side by side, a thread a core
        keep, sub, _ = solved[t]
        return _solve(sub, objective, _blocks(space, keep), BASELINE_GAP, seconds)

    for t, sol in zip(solved, in_threads(lambda t: run(t, BASELINE_FIRST), list(solved)),
                      strict=True):
        solved[t] = solved[t][:2] + (sol,)
    ok = [s for _, _, s in solved.values() if s.ok]
    if ok:  # the baselines that may yet be the best, not proven: the rest of their time
        best = min(s.cost for s in ok) if objective == "cost" else max(s.scale for s in ok)
        again = [t for t, (_, _, sol) in solved.items() if sol.status == "time_limit" and (
            not sol.ok or (sol.bound < best if objective == "cost" else sol.bound > best))]
        for t, sol in zip(again, in_threads(
                lambda t: run(t, BASELINE_SECONDS - BASELINE_FIRST), again), strict=True):
            solved[t] = solved[t][:2] + (sol,)
    plans = {}
    for t, (keep, sub, sol) in solved.items():
        name = p.types[t]
        if not sol.ok or (objective == "throughput" and sol.scale <= 0):
            out[t] = Baseline(accelerator=name, reason="infeasible within budget, "
                              "availability and attainment")
            continue
        out[t] = Baseline(accelerator=name, usd_per_hour=sol.cost, scale=sol.scale,
                          devices=int(sub.usage[:, t] @ sol.replicas))
        replicas = np.zeros(len(space.configs), dtype=int)
        shares = np.zeros((len(space.configs), len(p.classes)))
        replicas[keep], shares[keep] = sol.replicas, sol.shares
        full = replace(sol, replicas=replicas, shares=shares)
        plans[name] = _to_plan(space, full, objective, budget, [], [name], avail)
    return [b for b in out if b is not None], plans


def solve_plan(demands: Sequence[ModelDemand], catalog: Catalog, objective: str = "cost",
               budget: float | None = None, baselines: bool = True,
               derate: Mapping[str, float] | None = None,
               measured: Mapping[str, list[Config]] | None = None,
               rel_gap: float = 0.0, time_limit: float = TIME_LIMIT) -> Plan:
    """rel_gap: stop within this share of the optimum (0: to the cent; an autoscaler deciding
    every few minutes takes 1%, and the plan's solver info says how far it may be);
    time_limit: seconds HiGHS may take (past it, the best plan found, its gap in the plan)."""
    positive(time_limit, "--time-limit")
    if objective not in ("cost", "throughput"):
        raise HetserveError(f"--objective '{objective}': expected cost or throughput")
    if budget is not None:
        budget = positive(budget, "--budget")
    space = build_space(demands, catalog, budget, derate=derate, measured=measured)
    p = space.problem
    if objective == "throughput" and budget is None:
        unbounded = [t for k, t in enumerate(p.types) if not np.isfinite(p.available[k])]
        if unbounded:
            raise HetserveError(
                "--objective throughput needs --budget, or an --available count for every "
                f"accelerator type that can serve the model (none for {', '.join(unbounded)}; "
                "--only restricts the types)")
    sol = _solve(p, objective, _blocks(space), rel_gap=rel_gap, time_limit=time_limit)
    if not sol.ok and sol.status == "time_limit":
        raise HetserveError(f"--time-limit {time_limit:g} s: the solver found no plan in that "
                            f"time ({len(space.configs)} configs x {len(p.classes)} classes); "
                            "raise it")
    if not sol.ok:
        raise HetserveError(_explain_infeasible(space))
    if objective == "throughput" and sol.scale <= 0:
        cheapest = float(p.price.min())
        raise HetserveError(f"the budget ${budget:.2f}/h buys no replica: the cheapest config "
                            f"costs ${cheapest:.2f}/h")
    base, plans = _baselines(space, objective, budget, dict(catalog.available)) \
        if baselines else ([], {})
    plan = _to_plan(space, sol, objective, budget, base, [a.name for a in catalog],
                    dict(catalog.available))
    plan.baseline_plans.update(plans)
    return plan


def with_baselines(plan: Plan, demands: Sequence[ModelDemand], catalog: Catalog,
                   derate: Mapping[str, float] | None = None,
                   measured: Mapping[str, list[Config]] | None = None) -> Plan:
    """`plan` (solved with baselines=False on these demands and capacities) with its
    homogeneous baselines and the saving against the best one, without solving it again."""
    space = build_space(demands, catalog, plan.budget, derate=derate, measured=measured)
    base, plans = _baselines(space, plan.objective, plan.budget, dict(catalog.available))
    best, savings = best_baseline(plan.objective, plan.usd_per_hour, plan.scale, base)
    out = plan.model_copy(update={"baselines": base, "best_homogeneous": best,
                                  "savings": savings})
    out.baseline_plans.update(plans)
    return out


def serving(entry: ModelEntry, dep: Deployment) -> dict:
    """A replica group's engine version, image and command (hetserve.plan.serving): the
    deployment's knobs, its model's context length within what one replica's KV cache holds."""
    rocm = dep.accelerator.names.device_resource == "amd.com/gpu"
    version = engine_version(dep.engine, rocm)
    spec = entry.spec
    return {"engine_version": version, "image": engine_image(dep.engine, version, rocm),
            "command": engine_command(
                dep.engine, hf_id=spec.hf_id or spec.name,
                names=entry.served_names,
                tp=dep.tp, pp=dep.pp, max_num_seqs=dep.max_seqs,
                max_num_batched_tokens=dep.chunk_tokens,
                gpu_memory_utilization=dep.memory_utilisation,
                max_model_len=min(entry.context_limit, dep.kv_capacity_tokens),
                dtype=dep.weight_dtype, kv_dtype=dep.kv_dtype)}


def _to_plan(space: Space, sol: Solution, objective: str, budget,
             base: list[Baseline], considered: list[str], avail: dict[str, int]) -> Plan:
    p = space.problem
    models = []
    tokens = 0.0
    for d in space.demands:
        wl = d.workload
        off = space.class_offset[len(models)]
        best_effort = [wl.classes[int(w) - off].name for w in sol.tail
                       if off <= w < off + len(wl.classes)]
        models.append(ModelEntry(
            name=d.model.name, spec=d.model, workload=wl.name, rate=wl.rate,
            burst=max((d.class_burst(w) for w in range(len(wl.classes))), default=1.0),
            attainment=d.attainment, step_margin=d.step_margin, best_effort=best_effort,
            dtype=d.dtype or d.model.default_dtype,
            slo=SLOSpec(ttft=d.slo.ttft, tpot=d.slo.tpot),
            classes=[ClassSpec(name=c.name, input_range=c.input_range,
                               output_range=c.output_range, rate=c.rate,
                               mean_input=c.mean_input, mean_output=c.mean_output,
                               burst=d.class_burst(w))
                     for w, c in enumerate(wl.classes)],
            max_model_len=context_length(wl.classes, d.model.max_context),
            quantization=QUANTIZATION[d.dtype or d.model.default_dtype],
        ))
        tokens += sum(c.rate * (c.mean_input + c.mean_output) for c in wl.classes)
    groups = []
    for i in np.nonzero(sol.replicas > 0)[0]:
        cfg = space.configs[i]
        dep = cfg.deployment
        k = [d.model.name for d in space.demands].index(cfg.model)
        off = space.class_offset[k]
        classes = space.demands[k].workload.classes
        groups.append(ReplicaGroup(
            id=f"g{len(groups)}", model=cfg.model, accelerator=dep.accelerator.name,
            tp=dep.tp, pp=dep.pp, dtype=dep.weight_dtype, engine=dep.engine,
            devices_per_replica=dep.devices,
            replicas=int(sol.replicas[i]), usd_per_hour=float(p.price[i] * sol.replicas[i]),
            kv_tokens=dep.kv_capacity_tokens, kv_dtype=dep.kv_dtype,
            gpu_memory_utilization=dep.memory_utilisation, max_num_seqs=dep.max_seqs,
            max_num_batched_tokens=dep.chunk_tokens,
            shares={c.name: min(1.0, float(sol.shares[i, off + j]))
                    for j, c in enumerate(classes) if sol.shares[i, off + j] > 0},
            capacity={c.name: float(cfg.cap[j] if cfg.cap[j] > 0 else cfg.tail[j])
                      for j, c in enumerate(classes)},
            **serving(models[k], dep),
        ))
    best, savings = best_baseline(objective, sol.cost, sol.scale, base)
    used = dict.fromkeys(c.deployment.accelerator.name for c, y in
                         zip(space.configs, sol.replicas, strict=True) if y > 0)
    rows = {c.deployment.accelerator.name: c.deployment.accelerator for c in space.configs}
    return Plan(
        objective=objective, budget=budget, available=avail, considered=considered,
        models=models, accelerators=[rows[name] for name in used], groups=groups,
        usd_per_hour=sol.cost, scale=sol.scale,
        tokens_per_dollar=tokens * sol.scale * 3600.0 / sol.cost if sol.cost > 0 else 0.0,
        baselines=base, best_homogeneous=best, savings=savings,
        solver=SolverInfo(status=sol.status, bound=sol.bound, abs_gap=sol.abs_gap, gap=sol.gap,
                          seconds=sol.seconds,
                          configs=len(space.configs), classes=len(p.classes)),
    )
