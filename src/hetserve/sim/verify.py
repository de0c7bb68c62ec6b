"""Close the loop between the planner's closed-form capacities and simulation.

Plan, simulate the plan on its own workload, and where a replica group's SLO attainment falls
below the target, lower the modelled capacity of that group's config (by the attainment over the
target, squared, between x0.5 and x0.9 a round, compounding); likewise for each request class
that misses the target within a group (its capacity on that config only). Configs not yet
simulated are lowered by the geometric mean of each round's config factors, since the closed
form errs the same way for all of them (otherwise the solver would only swap in the next
untried, equally optimistic config). When a plan meets the target, configs whose groups met it
with both p90 latencies under half their limits get capacity back (x1.25 a round, never past
the closed form; never again once that led to a miss), in case the plan is over-provisioned.
Re-solve and repeat, a bounded number of rounds; the cheapest round that met the target wins.

The closed form charges each request class as if it had the replica to itself; mixed lengths,
bursts and prefill interference are what the simulation adds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hetserve.catalog import Catalog
from hetserve.errors import HetserveError, positive
from hetserve.plan import Plan, solve_plan
from hetserve.plan.configs import ModelDemand, measure_all
from hetserve.plan.planfile import Verification, best_baseline
from hetserve.plan.planner import TIME_LIMIT, with_baselines
from hetserve.pool import cores, run_all
from hetserve.sim.report import SimResult
from hetserve.sim.simulate import simulate, simulation_limit

MIN_SAMPLES = 20  # a group judged on fewer requests than this is not derated
RELAX = 1.25  # capacity given back per round to a config that met the target with slack
RELAX_SLACK = 0.5  # slack: p90 TTFT and TPOT under this share of their limits


@dataclass
class Round:
    number: int
    plan: Plan
    result: SimResult
    lowered: dict[str, float] = field(default_factory=dict)  # config -> factor this round
    lowered_classes: dict[str, float] = field(default_factory=dict)  # "config|class" -> factor
    raised: dict[str, float] = field(default_factory=dict)  # config -> factor this round
    derate: dict[str, float] = field(default_factory=dict)  # the factors this plan was made with

    @property
    def attainment(self) -> float:
        return self.result.attainment

    @property
    def worst(self) -> float:
        """The attainment of the model furthest from the target (every model must reach it)."""
        return min(self.result.model_attainment().values(), default=self.attainment)

    def met(self, target: float) -> bool:
        return self.worst >= target


def check_verify_options(target: float, rounds: int) -> None:
    if not (isinstance(target, int | float) and 0 < target <= 1):
        raise HetserveError(f"--target: expected a share in (0, 1], got {target!r}")
    positive(rounds, "--rounds", integer=True)


def _factor(attainment: float, target: float) -> float:
    return min(0.9, max(0.5, (attainment / target) ** 2))


def verify(demands: Sequence[ModelDemand], catalog: Catalog, objective: str = "cost",
           budget: float | None = None, *, target: float = 0.99, rounds: int = 5,
           router: str = "plan", seed: int = 0,
           on_round: Callable[[Round], None] | None = None,
           time_limit: float = TIME_LIMIT) -> tuple[Plan, list[Round]]:
    """The plan of the best of at most `rounds` simulate-and-re-solve rounds (see best_round),
    and every round."""
    check_verify_options(target, rounds)
    traces = {d.model.name: d.workload.trace for d in demands}
    derate: dict[str, float] = {}  # config -> factor; "*": configs never simulated
    settled: set[str] = set()  # raised once, then missed: not raised again
    history: list[Round] = []
    measured = measure_all(demands, catalog)  # once, derated
    plan = solve_plan(demands, catalog, objective, budget, baselines=False, measured=measured,
                      time_limit=time_limit)
    for number in range(1, rounds + 1):
        if history and _same(plan, history[-1].plan):  # nothing changed: same simulation
            result = history[-1].result
        else:
            result = simulate(plan, traces, catalog=catalog, router=router, seed=seed)
        this = Round(number, plan, result, derate=dict(derate))
        history.append(this)
        rows = result.group_rows()
        names = [f"{row['model']} @ {row['config']}" for row in rows]  # as plan.configs names
        for name in names:
            derate.setdefault(name, derate.get("*", 1.0))  # simulated: keeps its own factor
        if number < rounds:
            if this.met(target):
                _raise(this, rows, names, derate, settled)
            else:
                _lower(this, rows, names, derate, target)
                if len(history) > 1:
                    settled.update(set(history[-2].raised) & set(this.lowered))
        if on_round:
            on_round(this)
        if not (this.lowered or this.lowered_classes or this.raised):
            break  # met with no slack left, or misses too thin to blame anyone
        plan = solve_plan(demands, catalog, objective, budget, baselines=False,
                          derate=dict(derate), measured=measured, time_limit=time_limit)
    final = best_round(history, target)
    # the baselines, with the capacities the chosen round was planned with
    full = with_baselines(final.plan, demands, catalog, final.derate, measured)
    plan = full.model_copy(update={"verification": Verification(
        slo_attainment=final.attainment, target=target, met=final.met(target),
        rounds=len(history), chosen=final.number, router=router, derate=final.derate,
        model_attainment=final.result.model_attainment())})
    plan.baseline_plans.update(full.baseline_plans)
    return plan, history


def _same(a: Plan, b: Plan) -> bool:
    def key(p: Plan):
        return [(g.model, g.accelerator, g.tp, g.pp, g.replicas, g.shares) for g in p.groups]

    return key(a) == key(b)


def _lower(this: Round, rows: list[dict], names: list[str], derate: dict[str, float],
           target: float) -> None:
    """Lower the configs, and the classes on a config, that missed the target."""
    result = this.result
    for row, name in zip(rows, names, strict=True):
        if row["requests"] >= MIN_SAMPLES and row["slo_attainment"] < target:
            this.lowered[name] = _factor(row["slo_attainment"], target)
    for (m, g, c), cell in sorted(result.tally.cells.items()):  # a class on a group's config
        if g >= 0 and c >= 0 and cell.requests >= MIN_SAMPLES \
                and cell.met / cell.requests < target:
            key = f"{names[g]}|{result.classes[m][c]}"
            this.lowered_classes[key] = _factor(cell.met / cell.requests, target)
    for name, factor in this.lowered.items():
        derate[name] *= factor
    for key, factor in this.lowered_classes.items():
        derate[key] = derate.get(key, 1.0) * factor
    if this.lowered:  # the closed form's bias is shared: lower untried configs alike
        mean = float(np.exp(np.mean(np.log(list(this.lowered.values())))))
        derate["*"] = derate.get("*", 1.0) * mean


def _raise(this: Round, rows: list[dict], names: list[str], derate: dict[str, float],
           settled: set[str]) -> None:
    """The plan met the target: give back capacity (x1.25, never past the closed form) to
    configs whose groups met it with both p90 latencies under half their limits."""
    result = this.result
    for row, name in zip(rows, names, strict=True):
        ttft_lim, tpot_lim = result.slo[result.models.index(row["model"])]
        slack = (row["ttft_p90"] <= RELAX_SLACK * ttft_lim
                 and not row["tpot_p90"] > RELAX_SLACK * tpot_lim)  # nan: one-token outputs
        if name in settled or derate[name] >= 1.0 or not slack:
            continue
        this.raised[name] = min(RELAX, 1.0 / derate[name])
        derate[name] *= this.raised[name]


def best_round(history: Sequence[Round], target: float) -> Round:
    """The round that met the target at the least cost (throughput plans: the most scale); if
    none did, the one closest to it."""
    met = [r for r in history if r.met(target)]
    if met:
        if met[0].plan.objective == "throughput":
            return min(met, key=lambda r: (-r.plan.scale, r.plan.usd_per_hour, r.number))
        return min(met, key=lambda r: (r.plan.usd_per_hour, -r.plan.scale, r.number))
    return max(history, key=lambda r: (r.worst, r.attainment, -r.number))


def _attained(how: tuple, plan: Plan) -> tuple[float | None, dict[str, float]]:
    """The plan's SLO attainment in simulation, and per model (None, {}: too large to
    simulate)."""
    traces, router, seed = how
    if simulation_limit(plan):
        return None, {}
    result = simulate(plan, traces, router=router, seed=seed)
    return result.attainment, result.model_attainment()


def prove(plan: Plan, traces=None, *, router: str = "plan", seed: int = 0) -> Plan:
    """The plan with its figures proven in simulation: its own SLO attainment on its workload
    (from `verification` when set), every homogeneous baseline's, and the saving quoted only
    against the best baseline that reaches the attainment target, and only if the plan does.
    The plans simulate side by side in worker processes, each in one (as alone)."""
    tried = [b.accelerator for b in plan.baselines if b.accelerator in plan.baseline_plans]
    plans = [plan.baseline_plans[name] for name in tried]
    v = plan.verification
    if not v:
        plans.append(plan)
    got = run_all(_attained, (traces, router, seed), plans, workers=cores())
    own, own_models = (v.slo_attainment, v.model_attainment) if v else got[-1]
    attainment = dict(zip(tried, got[:len(tried)], strict=True))
    baselines = [b.model_copy(update={"slo_attainment": attainment[b.accelerator][0],
                                      "model_attainment": attainment[b.accelerator][1]})
                 if b.accelerator in attainment else b for b in plan.baselines]
    holding = [b for b in baselines
               if plan.short_of_target(b.slo_attainment, b.model_attainment) == {}]
    best, savings = best_baseline(plan.objective, plan.usd_per_hour, plan.scale, holding) \
        if plan.short_of_target(own, own_models) == {} else (None, None)
    proven = plan.model_copy(update={"slo_attainment": own, "model_attainment": own_models,
                                     "baselines": baselines, "savings": savings,
                                     "best_homogeneous": best})
    proven.baseline_plans.update(plan.baseline_plans)
    return proven
