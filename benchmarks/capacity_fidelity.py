"""Closed-form capacity vs the simulator, per accelerator x TP x request class.

For Llama-3.1-8B and Llama-3.1-70B on 12 accelerator types, the two smallest tensor-parallel
degrees that fit (TP1/TP2 where they fit; 70B falls back to TP4/TP8, T4 runs 8B at TP2/TP4; the
TP used is recorded), and 12 fixed-size request classes (prompt/output tokens, CLASSES), this
compares two numbers per point, under two SLO sets (p90 TTFT <= 2 s and TPOT <= 50 ms, the
headline; then a tight one, 0.5 s and 25 ms):

- closed form: `hetserve.perf.class_capacity(dep, I, O, slo).rate`, one replica, whatever
  `src/hetserve/perf/capacity.py` holds when this runs (the JSON records the sha256 of
  capacity.py, model.py and engine.py as imported);
- simulated: the largest Poisson rate at which one `hetserve.sim.engine.Engine` replica meets
  both p90 limits, found by bisection.

error = (closed - simulated) / simulated. Targets (from the issue): median |error| <= 10% and the
closed form never more than 10% above the simulated capacity (optimism is what breaks plans).

Simulation of one rate (`_meets`):
- Arrivals: one fixed sequence of unit-mean exponential gaps (seed SEED), scaled by 1/rate, so
  every rate, class and config sees the same arrival pattern stretched in time (common random
  numbers: "meets" is as monotone in the rate as a finite sample allows). Requests are added in
  arrival order, the engine advanced to each arrival first, then run to completion.
- Requests: n = max(least, rate x SPAN_S, rate x LIFETIMES x lifetime), capped at MAX_REQUESTS.
  least = OUTPUT_TOKENS / output within MIN_REQUESTS (2,000 for long outputs .. 20,000 for
  short ones): a request's TPOT is a mean over its output, so short outputs are all-or-nothing
  (one long prefill landing in a 20-token decode fails it) and their p90 needs many samples.
  With 300 requests the simulated capacity moved by a median 12% between seeds; with these
  counts about 1% (p90 of points 3%; `--seed` repeats the run with other arrivals).
  rate x SPAN_S (60 s) makes an overloaded queue visible: at rate x (1 + e) the wait grows by
  ~e x 60 s over the run (a 4 s span hid a 60% overload). lifetime = ttft limit + (output - 1) x
  tpot limit bounds one request's stay, so long outputs get >= LIFETIMES batch turnovers.
- Measured: requests with arrival index in [WARMUP x n, (1 - COOLDOWN) x n): the first 20% fill
  the batch; the last 10% see no later arrivals (a draining batch, optimistic TPOT).
- Meets: TTFT <= ttft limit and (outputs > 1 token only) TPOT <= tpot limit at the SLO's
  quantile (p90 unless the SLO set says, e.g. 2s:50ms@0.99), TPOT being
  each request's mean time per output token after the first (`Request.tpot`), as the SLO reads.
- A request that cannot fit the KV cache (or the model's context) makes the class unservable:
  simulated capacity 0, no simulation.

Search (`_simulated_capacity`): start at the closed form (0.01 req/s where it is 0). If that
misses, check a near-idle replica (FLOOR = 1/1000 of the start, FLOOR_REQUESTS requests):
missing there means capacity 0 (a request alone misses the SLO); else halve from the start until
a rate meets. If the start meets, double until one misses. Then bisect geometrically until the
bracket is within RELATIVE_PRECISION (3%). The simulated capacity is the largest rate seen to
meet (the bracket's lower end, so up to 3% low: a perfect closed form scores 0..+3%); a search
still meeting at MAX_RATE is a lower bound ('>'). Non-monotone "meets" (p90 noise of a finite
sample) is not corrected.

Scoring: median |error| over points where both capacities are > 0; "optimistic" = closed >
1.10 x simulated (including simulated 0 with closed > 0), as a share of points where either is
> 0; points where exactly one side is 0 are listed. Summaries per SLO set; the headline SLO's is
`summary` in the JSON.

Usage (full: ~7 CPU minutes, about 4 minutes wall on 2 idle cores):
    python benchmarks/capacity_fidelity.py              # full run, writes results JSON
    python benchmarks/capacity_fidelity.py --quick      # A10G, L40S, H100-SXM, headline SLO
    python benchmarks/capacity_fidelity.py --model llama-3.1-8b --accelerators L4,H100-SXM
    ... [--classes tiny,chat] [--tp 1] [--slo 1s:40ms] [--seed N] [--workers 2]
    ... [--out FILE.json] [--quiet]
Quick and filtered runs print only, unless --out names a file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NoReturn

import numpy as np

from hetserve.catalog import load_catalog
from hetserve.errors import HetserveError
from hetserve.models import get_model
from hetserve.perf import SLO, Deployment, class_capacity
from hetserve.pool import run_all
from hetserve.sim.engine import Engine, Request

MODELS = ["llama-3.1-8b", "llama-3.1-70b"]
ACCELERATORS = ["T4", "L4", "A10G", "A40", "RTX4090", "L40S", "A100-40GB", "A100-80GB",
                "H100-SXM", "H200", "B200", "MI300X"]
CLASSES = [  # name, prompt tokens, output tokens
    ("tiny", 20, 5),
    ("short-chat", 180, 13),  # the azure-code median shape
    ("mid", 500, 250),
    ("chat", 1000, 130),
    ("chat-long-out", 1000, 600),
    ("long-out", 200, 1000),
    ("code", 2000, 30),
    ("3k", 3000, 150),
    ("long-prompt", 4000, 20),
    ("8k", 8000, 50),
    ("8k-chat", 8000, 300),
    ("16k", 16000, 50),
]
TP_PER_ACCELERATOR = 2  # the two smallest TP degrees that fit
# the first is the headline (the p90 limits); the last is what plans size for by
# default (99% of requests within the limits)
SLOS = [SLO(ttft=2.0, tpot=0.05), SLO(ttft=0.5, tpot=0.025), SLO(ttft=2.0, tpot=0.05,
                                                                 quantile=0.99)]
KNOBS = (8192, 256)  # max_num_batched_tokens, max_num_seqs (vLLM's defaults; --knobs)

SEED = 20250
MIN_REQUESTS = (2_000, 20_000)  # at least OUTPUT_TOKENS / output requests, within these
OUTPUT_TOKENS = 1_000_000
FLOOR_REQUESTS = 300  # at the near-idle floor rate (is a request alone within the SLO?)
SPAN_S = 60.0
LIFETIMES = 5.0
MAX_REQUESTS = 300_000
WARMUP = 0.2
COOLDOWN = 0.1
RELATIVE_PRECISION = 1.03
MAX_RATE = 1e5
ZERO_START = 0.01  # req/s, where the search starts when the closed form says 0
FLOOR = 1e-3  # a start that misses is retried at FLOOR x start; missing there too: capacity 0
OPTIMISM_LIMIT = 1.10  # closed > 1.10 x simulated is "optimistic"

QUICK_ACCELERATORS = ["A10G", "L40S", "H100-SXM"]  # --quick: both models, all classes, 1 SLO

RESULTS = Path(__file__).parent / "results" / "capacity_fidelity.json"


@dataclass
class Point:
    model: str
    accelerator: str
    tp: int
    cls: str
    input_tokens: int
    output_tokens: int
    ttft_limit: float  # s
    tpot_limit: float  # s
    quantile: float  # the share of requests within the limits (0.9: p90)
    closed: float  # req/s
    closed_batch: float = 0.0
    closed_ttft: float = math.inf
    closed_tpot: float = math.inf
    closed_reason: str = ""
    simulated: float = 0.0  # req/s: largest rate seen to meet the SLO
    simulated_miss: float = math.inf  # smallest rate seen to miss it
    lower_bound: bool = False  # still met at MAX_RATE
    sim_reason: str = ""  # why 0, or which limit the smallest missing rate broke
    sim_ttft_p90: float = math.nan  # at `simulated`
    sim_tpot_p90: float = math.nan
    sim_requests: int = 0  # requests simulated at `simulated`
    sim_preemptions: int = 0
    simulations: int = 0
    seconds: float = 0.0
    error: float | None = field(default=None)  # (closed - simulated) / simulated

    @property
    def config(self) -> str:
        return f"{self.accelerator} TP{self.tp}"

    @property
    def slo(self) -> SLO:
        return SLO(self.ttft_limit, self.tpot_limit, self.quantile)

    @property
    def slo_label(self) -> str:
        return slo_label(self.slo)


def slo_label(slo: SLO) -> str:
    return f"p{slo.quantile * 100:g} TTFT {slo.ttft:g}s, TPOT {slo.tpot * 1e3:g}ms"


# ---- one rate ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _unit_gaps() -> np.ndarray:
    return np.random.default_rng(SEED).exponential(1.0, MAX_REQUESTS)


@lru_cache(maxsize=64)
def _deployment(model: str, accelerator: str, tp: int) -> Deployment:
    return Deployment(get_model(model), _catalog().get(accelerator), tp=tp, pp=1,
                      chunk_tokens=KNOBS[0], max_seqs=KNOBS[1])


@lru_cache(maxsize=1)
def _catalog():
    return load_catalog()


def _requests_for(rate: float, out: int, slo: SLO) -> int:
    lifetime = slo.ttft + max(out - 1, 0) * slo.tpot
    least = min(max(OUTPUT_TOKENS / max(out, 1), MIN_REQUESTS[0]), MIN_REQUESTS[1])
    n = max(least, rate * SPAN_S, rate * LIFETIMES * lifetime)
    return int(min(n, MAX_REQUESTS))


@dataclass
class Outcome:
    slo: SLO
    ok: bool
    ttft_p90: float  # at the SLO's quantile (p90 by default; the names stay for the JSON)
    tpot_p90: float
    requests: int
    preemptions: int

    @property
    def broke(self) -> str:
        """The limits missed: 'ttft', 'tpot' or 'ttft+tpot'."""
        return "+".join(name for name, bad in (("ttft", self.ttft_p90 > self.slo.ttft),
                                               ("tpot", self.tpot_p90 > self.slo.tpot)) if bad)


def _meets(dep: Deployment, inp: int, out: int, rate: float, slo: SLO,
           n: int | None = None) -> Outcome:
    """Simulate one replica at a Poisson rate; TTFT/TPOT at the SLO's quantile over the
    measured window."""
    n = n or _requests_for(rate, out, slo)
    arrivals = np.cumsum(_unit_gaps()[:n]) / rate
    engine = Engine(dep)
    reqs = [Request(k, float(t), inp, out) for k, t in enumerate(arrivals)]
    for req in reqs:
        engine.advance(req.arrival)
        engine.add(req)
    engine.advance(math.inf)
    window = reqs[int(WARMUP * n): n - int(COOLDOWN * n)]
    q = 100.0 * slo.quantile
    ttft = float(np.percentile([r.ttft for r in window], q))
    tpot = float(np.percentile([r.tpot for r in window], q)) if out > 1 else 0.0
    ok = ttft <= slo.ttft and (out <= 1 or tpot <= slo.tpot)
    return Outcome(slo, ok, ttft, tpot, n, engine.preemptions)


# ---- bisection -----------------------------------------------------------------------------


def _simulated_capacity(p: Point, slo: SLO) -> Point:
    start_time = time.perf_counter()
    dep = _deployment(p.model, p.accelerator, p.tp)
    limit = min(Engine(dep).kv_limit, dep.model.max_context)
    if p.input_tokens + p.output_tokens > limit:
        p.sim_reason = f"{p.input_tokens + p.output_tokens}-token request > {limit} tokens"
        p.seconds = time.perf_counter() - start_time
        return p

    def run(rate: float, n: int | None = None) -> Outcome:
        p.simulations += 1
        return _meets(dep, p.input_tokens, p.output_tokens, rate, slo, n)

    start = p.closed if p.closed > 0 else ZERO_START
    floor = start * FLOOR

    def zero(res: Outcome) -> Point:
        q = f"p{p.quantile * 100:g}"
        p.sim_reason = f"misses at {floor:.3g} req/s ({res.broke}: TTFT {q} " \
                       f"{res.ttft_p90:.3g}s, TPOT {q} {res.tpot_p90 * 1e3:.3g}ms)"
        p.simulated_miss = floor
        p.seconds = time.perf_counter() - start_time
        return p

    # the start; where it misses, a near-idle replica (FLOOR x start), missing there means
    # capacity 0. Where the closed form says 0, the cheap near-idle check comes first.
    idle = run(floor, FLOOR_REQUESTS) if p.closed == 0 else None
    if idle is not None and not idle.ok:
        return zero(idle)
    res = run(start)
    miss: Outcome | None = None
    if res.ok:
        lo, hi, best = start, math.inf, res
    else:
        idle = idle or run(floor, FLOOR_REQUESTS)
        if not idle.ok:
            return zero(idle)
        lo, hi, best, miss = floor, start, idle, res
    while hi > 2.0 * lo and not math.isinf(hi):  # halve down from the start
        res = run(hi / 2.0)
        if res.ok:
            lo, best = hi / 2.0, res
        else:
            hi, miss = hi / 2.0, res
    while math.isinf(hi):  # double up from the start
        if lo * 2.0 > MAX_RATE:
            p.lower_bound = True
            break
        res = run(lo * 2.0)
        if res.ok:
            lo, best = lo * 2.0, res
        else:
            hi, miss = lo * 2.0, res
    while not p.lower_bound and hi / lo > RELATIVE_PRECISION:
        mid = math.sqrt(lo * hi)
        res = run(mid)
        if res.ok:
            lo, best = mid, res
        else:
            hi, miss = mid, res
    p.simulated, p.simulated_miss = lo, hi
    p.sim_ttft_p90, p.sim_tpot_p90 = best.ttft_p90, best.tpot_p90
    p.sim_requests, p.sim_preemptions = best.requests, best.preemptions
    if miss is not None:
        p.sim_reason = miss.broke
    if p.simulated > 0:
        p.error = (p.closed - p.simulated) / p.simulated
    p.seconds = time.perf_counter() - start_time
    return p


def _work(p: Point) -> Point:
    return _simulated_capacity(p, p.slo)


# ---- points --------------------------------------------------------------------------------


def _tps(model: str, accelerator: str, only_tp: list[int] | None) -> list[int]:
    fitting = [tp for tp in (1, 2, 4, 8) if _deployment(model, accelerator, tp).fits]
    if only_tp:
        return [tp for tp in fitting if tp in only_tp]
    return fitting[:TP_PER_ACCELERATOR]


def make_points(models: list[str], accelerators: list[str], classes: list[tuple[str, int, int]],
                only_tp: list[int] | None, slos: list[SLO]) -> tuple[list[Point], list[dict]]:
    """Every (SLO, model, accelerator, TP, class) point with its closed-form capacity."""
    points, skipped = [], []
    inp = [c[1] for c in classes]
    out = [c[2] for c in classes]
    for slo in slos:
        for model in models:
            for acc in accelerators:
                tps = _tps(model, acc, only_tp)
                if not tps and slo is slos[0]:
                    why = _deployment(model, acc, 8).why_not() or f"no TP in {only_tp} fits"
                    skipped.append({"model": model, "accelerator": acc, "why": why})
                for tp in tps:
                    cap = class_capacity(_deployment(model, acc, tp), inp, out, slo)
                    for j, (name, i, o) in enumerate(classes):
                        points.append(Point(
                            model, acc, tp, name, i, o, slo.ttft, slo.tpot, slo.quantile,
                            closed=float(cap.rate[j]), closed_batch=float(cap.batch[j]),
                            closed_ttft=float(cap.ttft[j]), closed_tpot=float(cap.tpot[j]),
                            closed_reason=cap.reason[j]))
    return points, skipped


def run_points(points: list[Point], workers: int) -> list[Point]:
    # the costliest (long outputs at high rates) first, so the pool ends together; on local
    # workers (hetserve.pool), with this process's seed and knobs. (Not on Ray: its workers
    # cannot import this script's module.)
    order = sorted(points, key=lambda p: -(p.output_tokens + 1) * max(p.closed, 0.1))
    done = run_all(_work_with, (SEED, KNOBS), order, workers=workers, progress=_progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    key = {_ident(p): k for k, p in enumerate(points)}
    return sorted(done, key=lambda p: key[_ident(p)])


def _work_with(settings: tuple, p: Point) -> Point:
    global SEED, KNOBS
    if settings != (SEED, KNOBS):  # a worker that did not fork from this process
        SEED, KNOBS = settings
        _unit_gaps.cache_clear()
        _deployment.cache_clear()
    return _work(p)


def _ident(p: Point) -> tuple:
    return (p.ttft_limit, p.tpot_limit, p.quantile, p.model, p.accelerator, p.tp, p.cls)


def _progress(k: int, n: int) -> None:
    if sys.stderr.isatty():
        print(f"\r{k}/{n} points", end="", file=sys.stderr, flush=True)


# ---- summary -------------------------------------------------------------------------------


def optimistic(p: Point) -> bool:
    return p.closed > OPTIMISM_LIMIT * p.simulated


def summarise(points: list[Point]) -> dict:
    scored = [p for p in points if p.error is not None]
    any_nonzero = [p for p in points if p.closed > 0 or p.simulated > 0]
    opt = [p for p in any_nonzero if optimistic(p)]
    pess = [p for p in scored if p.closed < p.simulated / OPTIMISM_LIMIT]
    abs_err = [abs(p.error) for p in scored]
    worst = sorted(opt, key=lambda p: -(p.error if p.error is not None else math.inf))
    median = statistics.median(abs_err) if abs_err else None
    return {
        "points": len(points),
        "scored": len(scored),  # both capacities > 0
        "both_zero": sum(1 for p in points if p.closed == 0 and p.simulated == 0),
        "median_abs_error": median,
        "median_error": statistics.median([p.error for p in scored]) if scored else None,
        "within_10pct": sum(1 for e in abs_err if e <= 0.10),
        "optimistic": len(opt),  # closed > 1.10 x simulated (simulated 0 included)
        "optimistic_share": len(opt) / len(any_nonzero) if any_nonzero else None,
        "optimistic_over_25pct": sum(1 for p in opt if p.closed > 1.25 * p.simulated),
        "optimistic_over_50pct": sum(1 for p in opt if p.closed > 1.5 * p.simulated),
        "pessimistic": len(pess),  # closed < simulated / 1.10
        "max_error": max([p.error for p in scored], default=None),
        "worst_optimistic": [_key(p) for p in worst[:10]],
        "closed_zero_sim_positive": [_key(p) for p in points
                                     if p.closed == 0 and p.simulated > 0],
        "sim_zero_closed_positive": [_key(p) for p in points
                                     if p.simulated == 0 and p.closed > 0],
        "target_median_met": median is not None and median <= 0.10,
        "target_no_optimism_met": not opt,
    }


def _key(p: Point) -> dict:
    return {"model": p.model, "config": p.config, "class": p.cls, "closed": p.closed,
            "simulated": p.simulated, "error": p.error, "sim_binds": p.sim_reason,
            "closed_reason": p.closed_reason}


def breakdown(points: list[Point], attr: str) -> dict[str, dict]:
    """Per value of `attr`: scored points, median signed error, optimistic points."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(str(getattr(p, attr)), []).append(p)
    rows = {}
    for name, ps in groups.items():
        errs = [p.error for p in ps if p.error is not None]
        nonzero = [p for p in ps if p.closed > 0 or p.simulated > 0]
        rows[name] = {"scored": len(errs),
                      "median_error": statistics.median(errs) if errs else None,
                      "optimistic": sum(1 for p in nonzero if optimistic(p))}
    return rows


# ---- report --------------------------------------------------------------------------------


def _rate(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def _err(p: Point) -> str:
    if p.error is not None:
        return f"{p.error:+.1%}"
    if p.closed > 0:
        return "sim 0"
    return "both 0" if p.simulated == 0 else "closed 0"


def _pct(x: float | None, fmt: str = "+.0%") -> str:
    return "n/a" if x is None else format(x, fmt)


def print_table(points: list[Point]) -> None:
    """One line per config x class."""
    print(f"{'config':15s} {'class':14s} {'in/out':>10s} {'closed':>9s} {'sim':>9s} "
          f"{'error':>8s} {'B':>4s} {'sim q TTFT':>12s} {'TPOT':>7s}  "
          f"sim misses on / why 0")
    last = None
    for p in points:
        cfg = p.config if p.config != last else ""
        last = p.config
        flag = " !" if optimistic(p) else ""
        ttft = f"{p.sim_ttft_p90:.3f}s" if p.simulated > 0 else "-"
        tpot = f"{p.sim_tpot_p90 * 1e3:.1f}ms" if p.simulated > 0 else "-"
        sim = _rate(p.simulated) + (">" if p.lower_bound else "")
        why = p.sim_reason
        if p.closed == 0 and p.closed_reason:
            why = f"{why}  [closed 0: {p.closed_reason}]".strip()
        print(f"{cfg:15s} {p.cls:14s} {p.input_tokens:>5d}/{p.output_tokens:<4d} "
              f"{_rate(p.closed):>9s} {sim:>9s} {_err(p):>8s}{flag:2s}"
              f"{p.closed_batch:>4.0f} {ttft:>12s} {tpot:>7s}  {why}")


def print_matrix(points: list[Point]) -> None:
    """Error in % per config (rows) x class (columns); '!' marks optimistic points."""
    classes = list(dict.fromkeys(p.cls for p in points))
    cell = {(p.config, p.cls): p for p in points}
    print(f"{'config':15s} " + " ".join(f"{c[:8]:>8s}" for c in classes))
    for cfg in dict.fromkeys(p.config for p in points):
        cells = []
        for c in classes:
            q = cell.get((cfg, c))
            if q is None:
                cells.append("")
            elif q.error is not None:
                cells.append(f"{q.error * 100:+.0f}" + ("!" if optimistic(q) else " "))
            elif q.closed > 0:
                cells.append("S0!")
            else:
                cells.append("- " if q.simulated == 0 else "C0 ")
        print(f"{cfg:15s} " + " ".join(f"{c:>8s}" for c in cells))


def print_summary(label: str, s: dict) -> None:
    med = _pct(s["median_abs_error"], ".1%")
    share = _pct(s["optimistic_share"], ".1%")
    print(f"{label:14s} {s['points']} points, {s['scored']} scored (both > 0), {s['both_zero']} "
          f"both 0; median |error| {med}; {s['within_10pct']} within 10%; closed > 1.10 x "
          f"simulated: {s['optimistic']} ({share} of non-zero points; > 1.25 x: "
          f"{s['optimistic_over_25pct']}, > 1.5 x: {s['optimistic_over_50pct']}); "
          f"closed < simulated / 1.10: {s['pessimistic']}")


def print_report(points: list[Point], quiet: bool) -> dict:
    """Print tables and summaries per SLO; return the summaries (for the JSON)."""
    out = {}
    for label in dict.fromkeys(p.slo_label for p in points):
        mine = [p for p in points if p.slo_label == label]
        models = list(dict.fromkeys(p.model for p in mine))
        for model in models:
            theirs = [p for p in mine if p.model == model]
            if not quiet:
                print(f"\n== {model}, {label}: closed form vs simulated capacity, req/s, "
                      f"one replica; error = (closed - sim) / sim; '!' closed > 1.10 x sim")
                print_table(theirs)
            print(f"\n== {model}, {label}: error % ('-' both 0, 'S0' simulated 0, 'C0' closed 0)")
            print_matrix(theirs)
        summary = summarise(mine)
        per_model = {m: summarise([p for p in mine if p.model == m]) for m in models}
        groups = {attr: breakdown(mine, attr) for attr in ("cls", "accelerator", "tp")}
        out[label] = {"summary": summary, "per_model": per_model, "breakdown": groups}
        print(f"\n== summary, {label}")
        for attr, title in (("cls", "class"), ("accelerator", "accelerator"), ("tp", "TP")):
            print(f"by {title} (median signed error, scored, optimistic): " + "; ".join(
                f"{name} {_pct(g['median_error'])} ({g['scored']}, {g['optimistic']})"
                for name, g in groups[attr].items()))
        for model, s in [*per_model.items(), ("all", summary)]:
            print_summary(model, s)
        print(f"worst optimistic points (closed > {OPTIMISM_LIMIT:.2f} x simulated):")
        for k in summary["worst_optimistic"]:
            err = "sim 0" if k["error"] is None else f"{k['error']:+.1%}"
            print(f"  {k['model']:14s} {k['config']:15s} {k['class']:14s} closed "
                  f"{_rate(k['closed']):>7s} sim {_rate(k['simulated']):>7s} {err:>8s}  "
                  f"(sim misses on {k['sim_binds'] or '-'})")
        if not summary["worst_optimistic"]:
            print("  none")
        for title, rows in (("closed 0, simulated > 0", summary["closed_zero_sim_positive"]),
                            ("simulated 0, closed > 0", summary["sim_zero_closed_positive"])):
            print(f"{title}: {len(rows)}" + "".join(
                f"\n  {k['model']:14s} {k['config']:15s} {k['class']:14s} closed "
                f"{_rate(k['closed'])} sim {_rate(k['simulated'])}  "
                f"{k['closed_reason'] or k['sim_binds']}" for k in rows))
        print(f"target median |error| <= 10%: "
              f"{'met' if summary['target_median_met'] else 'MISSED'} "
              f"({_pct(summary['median_abs_error'], '.1%')}); closed never > 1.10 x simulated: "
              f"{'met' if summary['target_no_optimism_met'] else 'MISSED'} "
              f"({summary['optimistic']} points)")
    return out


# ---- main ----------------------------------------------------------------------------------


def _names(text: str | None, known: list[str], what: str) -> list[str] | None:
    if not text:
        return None
    out = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        match = [k for k in known if k.lower() == name.lower()]
        if not match:
            _bad(f"--{what}: unknown {name!r}; expected one of {', '.join(known)}")
        out.append(match[0])
    return out


def _tp_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    tps = [t.strip() for t in text.split(",")]
    if not all(t in ("1", "2", "4", "8") for t in tps):
        _bad(f"--tp: expected TP degrees out of 1, 2, 4, 8, got {text!r}")
    return [int(t) for t in tps]


def _slo(text: str) -> SLO:
    """'2s:50ms', '2:0.05' or '2s:50ms@0.99' (the quantile; default 0.9) -> SLO."""
    def seconds(v: str) -> float:
        v = v.strip().lower()
        if v.endswith("ms"):
            return float(v[:-2]) / 1e3
        return float(v[:-1] if v.endswith("s") else v)
    try:
        limits, _, quantile = text.partition("@")
        ttft, tpot = limits.split(":")
        return SLO(seconds(ttft), seconds(tpot), float(quantile) if quantile else 0.9)
    except (ValueError, HetserveError):
        _bad(f"--slo: expected TTFT:TPOT[@QUANTILE] such as 2s:50ms@0.99, got {text!r}")


def _bad(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit 2 (as the hetserve CLI)."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    global SEED, KNOBS
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a subset: A10G, L40S, H100-SXM and the first SLO only (< 60 s)")
    ap.add_argument("--model", help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--accelerators", help="comma-separated catalog names")
    ap.add_argument("--classes", help=f"comma-separated, of {', '.join(c[0] for c in CLASSES)}")
    ap.add_argument("--tp", help="comma-separated TP degrees (default: the two smallest that fit)")
    ap.add_argument("--slo", action="append",
                    help="TTFT:TPOT[@QUANTILE] limits (quantile default 0.9), repeatable "
                         "(default: 2s:50ms, 0.5s:25ms and 2s:50ms@0.99; the first is the "
                         "headline)")
    ap.add_argument("--knobs", default="8192:256",
                    help="max_num_batched_tokens:max_num_seqs of every replica (default "
                         "8192:256, vLLM's)")
    default_seed = SEED
    ap.add_argument("--seed", type=int, default=SEED, help="arrival seed (noise check)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="write the JSON here (default: results/ on a full run only)")
    ap.add_argument("--quiet", action="store_true", help="omit the per-point tables")
    args = ap.parse_args(argv)

    catalog_names = [a.name for a in _catalog()]
    models = _names(args.model, MODELS, "model") or MODELS
    accs = _names(args.accelerators, catalog_names, "accelerators") or \
        (QUICK_ACCELERATORS if args.quick else ACCELERATORS)
    class_names = _names(args.classes, [c[0] for c in CLASSES], "classes")
    classes = [c for c in CLASSES if class_names is None or c[0] in class_names]
    only_tp = _tp_list(args.tp)
    slos = [_slo(s) for s in args.slo] if args.slo else (SLOS[:1] if args.quick else SLOS)
    full = not (args.quick or args.model or args.accelerators or args.classes or args.tp
                or args.slo or args.seed != default_seed or args.knobs != "8192:256")

    SEED = args.seed  # read by _unit_gaps in this process and in the (forked) workers
    try:
        KNOBS = tuple(int(v) for v in args.knobs.split(":"))  # read by _deployment, likewise
        assert len(KNOBS) == 2 and min(KNOBS) >= 1
    except (ValueError, AssertionError):
        _bad(f"--knobs: expected CHUNK:SEQS such as 512:256, got {args.knobs!r}")
    sources = _sources()  # what this process imported (the files may change while it runs)
    start = time.perf_counter()
    points, skipped = make_points(models, accs, classes, only_tp, slos)
    if not points:
        _bad("no points: " + "; ".join(f"{k['model']} on {k['accelerator']}: {k['why']}"
                                       for k in skipped))
    points = run_points(points, max(1, args.workers))
    wall = time.perf_counter() - start
    summaries = print_report(points, args.quiet)
    for s in skipped:
        print(f"skipped {s['model']} on {s['accelerator']}: {s['why']}")
    print(f"{len(points)} points, {sum(p.simulations for p in points)} simulations, "
          f"{wall:.1f} s wall ({args.workers} workers)")

    out = Path(args.out) if args.out else (RESULTS if full else None)
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    headline = slo_label(slos[0])
    out.write_text(json.dumps(_finite({
        "headline_slo": headline,
        "summary": summaries[headline]["summary"],
        "per_slo": summaries,
        "slos": [{"label": slo_label(s), "ttft": s.ttft, "tpot": s.tpot,
                  "quantile": s.quantile} for s in slos],
        "knobs": {"max_num_batched_tokens": KNOBS[0], "max_num_seqs": KNOBS[1]},
        "method": {"seed": SEED, "min_requests": MIN_REQUESTS,
                   "output_tokens": OUTPUT_TOKENS, "floor_requests": FLOOR_REQUESTS,
                   "zero_start": ZERO_START, "floor": FLOOR, "span_s": SPAN_S,
                   "lifetimes": LIFETIMES, "max_requests": MAX_REQUESTS, "warmup": WARMUP,
                   "cooldown": COOLDOWN, "relative_precision": RELATIVE_PRECISION,
                   "max_rate": MAX_RATE, "optimism_limit": OPTIMISM_LIMIT},
        "models": models, "accelerators": accs,
        "classes": [{"name": n, "input_tokens": i, "output_tokens": o} for n, i, o in classes],
        "skipped": skipped,
        "wall_seconds": wall, "workers": args.workers,
        "sources": sources,
        "command": " ".join(["python", "benchmarks/capacity_fidelity.py", *argv]),
        "machine": f"{platform.processor() or platform.machine()}, Python "
                   f"{platform.python_version()}",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "points": [asdict(p) for p in points],
    }), indent=1) + "\n")
    print(f"wrote {out}")


def _sources() -> dict[str, str]:
    """sha256 (12 hex) of the modules measured: the closed form moves while others edit it."""
    import hetserve.perf.capacity
    import hetserve.perf.model
    import hetserve.sim.engine
    out = {}
    for mod in (hetserve.perf.capacity, hetserve.perf.model, hetserve.sim.engine):
        path = Path(mod.__file__)
        out[f"{path.parent.name}/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return out


def _finite(obj):
    """JSON without Infinity/NaN (null instead)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


if __name__ == "__main__":
    main()
