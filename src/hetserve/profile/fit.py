"""Fit a deployment's step-time coefficients to measurements (docs/design.md, section 5.7).

The coefficients are the four the performance model takes from the accelerator and the engine:
compute efficiency (eta_compute), memory efficiency (eta_memory), the fixed host overhead per
step and the host time per sequence per step. A fifth, fitted beside them and kept in the
report rather than the model, is the latency the client adds to TTFT and end-to-end latency
(network, HTTP, tokenisation): left out, the fit would push it into the step overhead.

Every measured value is predicted by the same simulator the planner trusts, replaying the
requests exactly as the profiler sent them (or, for measurements without their arrival times,
running the load generator's closed or open loop), and scipy's bounded Nelder-Mead moves the
coefficients to minimise the squared log errors (a TTFT of 20 ms and a throughput of 2,000
tok/s weigh alike).

Which measurements pin which coefficient: a decode step costs weights / eta_memory + overhead
+ host x batch (+ KV reads, by context); a long prefill compute / eta_compute + overhead. So
TTFT at two compute-bound prompt lengths separates eta_compute from the overhead, a short
prompt's then gives eta_memory, and ITL across batch sizes the host time per sequence: the
default sizes measure a short and two long prompts.

An `Observation` is one measured number of one load shape: a profile point gives three (TTFT,
ITL, output throughput), a row of a published-measurements CSV one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from hetserve.catalog import Fit
from hetserve.errors import HetserveError
from hetserve.perf import Deployment
from hetserve.perf.capacity import SLO, class_capacity
from hetserve.profile.drive import poisson_offsets
from hetserve.profile.file import CapacityPoint, FitReport, ProfilePoint
from hetserve.sim.calibrate import LoopResult, closed_loop, replay

# bounds of the fitted coefficients: (eta_compute, eta_memory, overhead ms, us per sequence,
# the client's latency ms)
LOWER = (1e-3, 1e-3, 0.0, 0.0, 0.0)
UPPER = (1.0, 1.0, 1000.0, 20_000.0, 1000.0)
SCALE = np.array([1.0, 1.0, 1.0, 100.0, 1.0])  # the search moves coefficients / SCALE
HOLD_BACK = 0.25  # share of the load shapes held back to check the fit generalises
RESTARTS = 4  # Nelder-Mead runs per start, each from where the last stopped


@dataclass(frozen=True)
class Observation:
    label: str
    mode: str  # "closed" or "open"
    load: float  # concurrency, or req/s
    input_tokens: int
    output_tokens: int
    metric: str  # ttft, itl, e2e_latency or output_throughput (s, s, s, tok/s)
    value: float
    seconds: float = 0.0  # open loop: how long arrivals ran
    sent_at: tuple[float, ...] = ()  # the requests as sent, when the profile recorded them
    measured: tuple[bool, ...] = ()
    slo: tuple[float, float, float] | None = None  # mode "capacity": TTFT, TPOT, quantile

    def predict(self, dep: Deployment, cache: dict, latency: float = 0.0) -> float:
        """The simulator's value; `latency` (s): what the client adds to TTFT and end-to-end
        latency beyond the engine (network, HTTP, tokenisation)."""
        if self.mode == "capacity":  # a throughput matrix's entry: req/s within the SLO
            if ("capacity", self.input_tokens, self.output_tokens, self.slo) not in cache:
                prefill_capacities(dep, [self], cache)
            return max(cache[("capacity", self.input_tokens, self.output_tokens, self.slo)],
                       1e-9)
        key = (self.label, self.mode, self.load, self.input_tokens, self.output_tokens)
        if key not in cache:
            cache[key] = _loop(dep, self)
        res = cache[key]
        if self.metric == "output_throughput" and self.mode == "closed":
            # Little's law over the latency the clients saw, as the profiler measures it
            return self.load * self.output_tokens / (res.e2e_latency + latency)
        value = getattr(res, self.metric)
        return value + latency if self.metric in ("ttft", "e2e_latency") else value


def _loop(dep: Deployment, o: Observation) -> LoopResult:
    """The simulator's value for the load shape: the profile's own requests replayed where it
    recorded them (the engine sees exactly the arrivals it saw), else the load generator's
    loop simulated."""
    if o.mode == "closed" and not o.sent_at:
        return closed_loop(dep, int(o.load), o.input_tokens, o.output_tokens)
    sent = o.sent_at or tuple(poisson_offsets(o.load, o.seconds).tolist())
    return replay(dep, sent, o.measured or (True,) * len(sent), o.input_tokens,
                  o.output_tokens, int(o.load) if o.mode == "closed" else None)


def observations(points: Sequence[ProfilePoint],
                 capacities: Sequence[CapacityPoint] = ()) -> list[Observation]:
    out = [Observation(c.label, "capacity", 0.0, c.input_tokens, c.output_tokens, "capacity",
                       c.rate, slo=c.slo) for c in capacities if c.rate > 0]
    for p in points:
        load = p.concurrency if p.mode == "closed" else p.rate
        for metric in ("ttft", "itl", "output_throughput"):
            value = getattr(p, metric)
            if value > 0 and not (metric == "itl" and p.output_tokens < 2):
                out.append(Observation(p.label, p.mode, float(load), p.input_tokens,
                                       p.output_tokens, metric, value, p.seconds,
                                       tuple(p.sent_at), tuple(p.measured)))
    return out


def with_fit(dep: Deployment, fit: Fit) -> Deployment:
    """`dep` with these coefficients (on a copy of its accelerator row)."""
    return replace(dep, accelerator=dep.accelerator.with_fit(fit))


def current_fit(dep: Deployment) -> Fit:
    """The coefficients `dep` runs with now, as a Fit."""
    eta_c, eta_m, h0, h1 = dep.efficiency
    return Fit(model=dep.model.name, tp=dep.tp, pp=dep.pp, engine=dep.engine,
               dtype=dep.weight_dtype, eta_compute=eta_c, eta_memory=eta_m,
               step_overhead_ms=h0 * 1e3, seq_host_us=h1 * 1e6)


def prefill_capacities(dep: Deployment, obs: Sequence[Observation], cache: dict) -> None:
    """Compute every capacity observation of `obs` in one vectorised call per SLO (into the
    cache Observation.predict reads)."""
    by_slo: dict = {}
    for o in obs:
        if o.mode == "capacity":
            by_slo.setdefault(o.slo, []).append(o)
    for slo, group in by_slo.items():
        rates = class_capacity(dep, [o.input_tokens for o in group],
                               [o.output_tokens for o in group], SLO(*slo)).rate
        for o, rate in zip(group, rates, strict=True):
            cache[("capacity", o.input_tokens, o.output_tokens, slo)] = float(rate)


def errors(dep: Deployment, obs: Sequence[Observation], latency: float = 0.0) -> np.ndarray:
    """Signed relative errors (predicted - measured) / measured."""
    cache: dict = {}
    prefill_capacities(dep, obs, cache)
    return np.array([o.predict(dep, cache, latency) / o.value - 1.0 for o in obs])


def median_abs(errs: np.ndarray) -> float:
    return float(statistics.median(np.abs(errs))) if len(errs) else math.nan


def as_fit(dep: Deployment, x: np.ndarray, source: str = "") -> Fit:
    """The Fit of `dep`'s deployment with coefficients x = (eta_compute, eta_memory, step
    overhead ms, host us per sequence, ...)."""
    return Fit(model=dep.model.name, tp=dep.tp, pp=dep.pp, engine=dep.engine,
               dtype=dep.weight_dtype, eta_compute=float(x[0]), eta_memory=float(x[1]),
               step_overhead_ms=float(x[2]), seq_host_us=float(x[3]), source=source)


def fit(dep: Deployment, obs: Sequence[Observation], hold_back: float = HOLD_BACK
        ) -> tuple[Fit, FitReport]:
    """The coefficients that best reproduce `obs` on `dep`'s deployment, fitted on all but a
    held-back share of the load shapes (every k-th, k = 1 / hold_back), and the errors before
    (the model's coefficients) and after, on both parts."""
    from scipy.optimize import minimize

    if not obs:
        raise HetserveError("no measurements to fit")
    shapes = sorted({o.label for o in obs})
    held: set[str] = set()
    if hold_back > 0 and len(shapes) >= 4:
        step = max(2, round(1.0 / hold_back))
        held = {s for k, s in enumerate(shapes) if k % step == step - 1}
    train = [o for o in obs if o.label not in held]
    test = [o for o in obs if o.label in held]
    # the client latency is searched only where a measured latency could show it
    dims = 5 if any(o.metric in ("ttft", "e2e_latency") for o in train) else 4
    if len(train) < dims:
        more = ("import a throughput matrix with at least 5 buckets (one in four is held back "
                "to check the fit)" if all(o.mode == "capacity" for o in obs)
                else "measure more points (sizes, concurrencies or rates)")
        raise HetserveError(f"{len(train)} measurements to fit {dims} coefficients"
                            f"{f' ({len(test)} more held back)' if test else ''}: {more}")
    measured = np.array([o.value for o in train])

    def full(z: np.ndarray) -> np.ndarray:
        return np.clip(np.append(z, [0.0] * (5 - dims)) * SCALE, LOWER, UPPER)

    def cost(z: np.ndarray) -> float:
        x = full(z)
        d = with_fit(dep, as_fit(dep, x))
        cache: dict = {}
        prefill_capacities(d, train, cache)
        predicted = np.array([o.predict(d, cache, x[4] * 1e-3) for o in train])
        return float(np.sum(np.log(predicted / measured) ** 2))

    start = current_fit(dep)
    # The simulator answers in whole steps and whole requests: the cost is piecewise flat
    # with local minima, so a derivative-free search (Nelder-Mead, bounded) from two starts,
    # the model's values and a point with a heavy host time, keeping the better
    starts = [[start.eta_compute, start.eta_memory, max(start.step_overhead_ms, 1.0),
               max(start.seq_host_us, 100.0), 1.0],
              [start.eta_compute / 2, start.eta_memory / 2, 0.5, 400.0, 1.0]]
    bounds = [(lo / k, hi / k) for lo, hi, k in zip(LOWER, UPPER, SCALE, strict=True)][:dims]

    def search(z0: np.ndarray):
        """Nelder-Mead, restarted from where it stopped until that gains nothing (a simplex
        collapsed along the ridge where weights / eta_memory and the overhead trade off)."""
        found = None
        for _ in range(RESTARTS):
            r = minimize(cost, z0, method="Nelder-Mead", bounds=bounds,
                         options={"xatol": 1e-4, "fatol": 1e-8, "maxfev": 2000,
                                  "adaptive": True})
            if found is not None and r.fun >= found.fun * (1 - 1e-3):
                return found if r.fun >= found.fun else r
            found, z0 = r, r.x
        return found

    found = min((search((np.clip(x0, LOWER, UPPER) / SCALE)[:dims]) for x0 in starts),
                key=lambda r: r.fun)
    best_x = full(found.x)
    fitted = as_fit(dep, best_x)
    after = with_fit(dep, fitted)
    latency = float(best_x[4]) * 1e-3
    report = FitReport(before=median_abs(errors(dep, train)),
                       after=median_abs(errors(after, train, latency)),
                       held_back_before=median_abs(errors(dep, test)) if test else None,
                       held_back_after=median_abs(errors(after, test, latency)) if test else None,
                       held_back=sorted(held), client_latency_ms=latency * 1e3)
    return better_or_model(dep, fitted, report)


def better_or_model(dep: Deployment, fitted: Fit, report: FitReport) -> tuple[Fit, FitReport]:
    """The fit where it beats the model's own coefficients (FitReport.shortfall), else those
    coefficients, with the report saying why: a plan must not trade the model for a fit that
    reproduces the measurements worse."""
    why = report.shortfall()
    if not why:
        return fitted, report
    return current_fit(dep), report.model_copy(update={"kept_model": why,
                                                       "client_latency_ms": 0.0})


MIN_ROWS = 6  # measurements of one deployment needed to fit its five numbers


@dataclass(frozen=True)
class DeploymentFit:
    """A fit of one deployment's rows in a measurements file (None: too few rows)."""

    label: str
    accelerator: str
    rows: int
    fit: Fit | None
    report: FitReport | None


def fit_measurements(rows: Sequence, catalog, hold_back: float = HOLD_BACK
                     ) -> list[DeploymentFit]:
    """Fit every deployment of a measurements file (hetserve.sim.calibrate.Measurement rows,
    closed loop) that has at least MIN_ROWS rows; the rest are listed unfitted."""
    from hetserve.sim.calibrate import METRICS, measured_deployment

    groups: dict[Deployment, list] = {}
    for m in rows:
        groups.setdefault(measured_deployment(m, catalog), []).append(m)
    out = []
    for dep, ms in groups.items():
        label = f"{dep.label} {dep.model.name} {dep.engine}"
        if len(ms) < MIN_ROWS:
            out.append(DeploymentFit(label, dep.accelerator.name, len(ms), None, None))
            continue
        obs = [Observation(f"{m.input_tokens}/{m.output_tokens} c={m.concurrency}", "closed",
                           float(m.concurrency), m.input_tokens, m.output_tokens, m.metric,
                           m.value * (1e-3 if METRICS[m.metric] == "ms" else 1.0))
               for m in ms]
        got, report = fit(dep, obs, hold_back)
        out.append(DeploymentFit(label, dep.accelerator.name, len(ms), got, report))
    return out
