"""The planning MILPs on plain arrays, solved exactly with HiGHS (docs/design.md, section 3).

A problem has configs c (price per replica, devices of each accelerator type per replica), request
classes w (demand: req/s, or requests to finish) and cap[c][w] (req/s one replica of c sustains
for class w; 0: it cannot serve w). Variables: integer replicas y_c and continuous routing shares
x_cw (only where cap > 0).

min_cost (formulation A): minimise sum price_c y_c
    sum_c x_cw = 1                                 every class fully routed
    sum_w x_cw * demand_w / cap_cw <= y_c           no config over capacity
    x_cw <= y_c                                     no share without a replica
    sum_c price_c y_c <= budget,  sum_c d_cn y_c <= available_n
  With `slices=S`, shares are multiples of 1/S (Mélange's own formulation: each of S equal
  slices of a class goes wholly to one config), as integer slice counts.

max_scale (formulation B): the largest lambda such that lambda * demand is served, with
u_cw = lambda * x_cw (exact linearisation of the bilinear makespan model):
    sum_c u_cw = lambda                             every class scaled alike
    sum_w u_cw * demand_w / cap_cw <= y_c
    budget and availability as above.
  With demand = requests to finish, the makespan is 1 / lambda.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import highspy
import numpy as np

from hetserve.pool import cores

INF = highspy.kHighsInf
MIP_GAP = 1e-4  # relative gap at which HiGHS stops on throughput plans (its default)
COST_ABS_GAP = 5e-4  # $/h: cost plans are proven optimal to below a tenth of a cent per hour
TAIL_PENALTY = 2e-3  # $/h per best-effort class: a class loses its promise only to save more


_local = threading.local()


@contextmanager
def _stdout_to_devnull() -> Iterator[None]:
    """File descriptor 1 points at /dev/null inside the block (C code writes there directly)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no usable fd 1: nothing to protect
        yield
        return
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


_creating = threading.Lock()  # one thread at a time moves file descriptor 1


def _highs() -> highspy.Highs:
    """One HiGHS instance per thread, reused. HiGHS >= 1.16 prints a banner on standard output
    when an instance is created, before output_flag can be set: it goes to /dev/null."""
    h = getattr(_local, "highs", None)
    if h is None:
        with _creating, _stdout_to_devnull():
            h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        _local.highs = h
    return h


@dataclass
class Problem:
    configs: list[str]
    price: np.ndarray  # [C] $/h per replica
    cap: np.ndarray  # [C, W] req/s per replica (0: cannot serve)
    demand: np.ndarray  # [W] req/s (min_cost) or relative demand (max_scale)
    classes: list[str] = field(default_factory=list)
    usage: np.ndarray | None = None  # [C, N] devices of each type per replica
    types: list[str] = field(default_factory=list)
    available: np.ndarray | None = None  # [N], inf: no limit
    budget: float | None = None
    # best effort (min_cost only): tail[c][w] > 0 where class w may be served by c without its
    # latency promise (req/s per replica), if w is chosen as a tail class; of the class groups
    # in tail_groups, (class indices, slack) each, the chosen classes' request shares
    # (tail_share) add up to at most the slack
    tail: np.ndarray | None = None  # [C, W]
    tail_share: np.ndarray | None = None  # [W]
    tail_groups: list[tuple[np.ndarray, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.price = np.asarray(self.price, dtype=np.float64)
        self.cap = np.asarray(self.cap, dtype=np.float64).reshape(len(self.configs), -1)
        self.demand = np.asarray(self.demand, dtype=np.float64)
        if not self.classes:
            self.classes = [f"w{j}" for j in range(self.cap.shape[1])]
        if self.usage is None:
            self.usage = np.zeros((len(self.configs), 0))
            self.types = []
        if self.available is None:
            self.available = np.full(len(self.types), np.inf)
        self.available = np.asarray(self.available, dtype=np.float64)
        if self.tail is None:
            self.tail = np.zeros_like(self.cap)
        self.tail = np.where(self.cap > 0, 0.0, np.asarray(self.tail, dtype=np.float64))
        if self.tail_share is None:
            self.tail_share = np.zeros(self.cap.shape[1])

    def restricted(self, keep: np.ndarray) -> Problem:
        """The same problem with only the configs where keep is True."""
        return replace(self, configs=[c for c, k in zip(self.configs, keep, strict=True) if k],
                       price=self.price[keep], cap=self.cap[keep], usage=self.usage[keep],
                       tail=self.tail[keep])

    def block(self, ci: np.ndarray, wi: np.ndarray) -> Problem:
        """The configs ci and classes wi alone (no budget or availability rows)."""
        inside = {int(w): k for k, w in enumerate(wi)}
        groups = [(np.array([inside[int(w)] for w in g if int(w) in inside]), s)
                  for g, s in self.tail_groups]
        return Problem([self.configs[i] for i in ci], self.price[ci],
                       self.cap[np.ix_(ci, wi)], self.demand[wi], [self.classes[w] for w in wi],
                       tail=self.tail[np.ix_(ci, wi)], tail_share=self.tail_share[wi],
                       tail_groups=[(g, s) for g, s in groups if len(g)])


MAX_REPLICAS = 100_000  # per config, and for a whole load: more is a typo, past HiGHS's range
DOMINANCE_ROWS = 64  # configs compared with all the others of their component at once


def undominated(p: Problem) -> np.ndarray:
    """The configs (a mask) that no other config makes redundant. c' dominates c when it costs
    no more, has at least c's capacity on every class (within the SLO and best effort) and
    uses no more devices of any type with an availability limit, better in one of these (or
    equal in all and listed earlier). A plan using c can use c' in its place, as many replicas
    and the same shares, at no more cost, within the budget and every limit (but MAX_REPLICAS
    per config: see _capped): the optimum of either objective is among the undominated
    configs. Only configs that share a class can dominate one another, so they are compared
    within the connected parts of the config-class graph (one model's configs, in the
    planner's problems)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    C, W = p.cap.shape
    serves = (p.cap > 0) | (p.tail > 0)
    ci, wi = np.nonzero(serves)
    graph = coo_matrix((np.ones(len(ci)), (ci, C + wi)), shape=(C + W, C + W))
    _, part = connected_components(graph, directed=False)
    limited = np.isfinite(p.available)
    better = np.hstack([p.cap, p.tail, -p.price[:, None], -p.usage[:, limited]])  # larger: better
    keep = np.ones(C, dtype=bool)
    for comp in np.unique(part[:C]):
        idx = np.nonzero(part[:C] == comp)[0]
        f = better[idx]
        for a in range(0, len(idx), DOMINANCE_ROWS):
            rows = np.arange(a, min(a + DOMINANCE_ROWS, len(idx)))
            covers = (f[None, :, :] >= f[rows, None, :]).all(-1)  # [row, j]: j >= row
            strictly = (f[None, :, :] > f[rows, None, :]).any(-1)
            earlier = np.arange(len(idx))[None, :] < rows[:, None]
            keep[idx[rows]] = ~(covers & (strictly | earlier)).any(-1)
    return keep


def _capped(keep: np.ndarray, sol: Solution) -> bool:
    """Whether a plan solved without the dominated configs may have lost by it: the swap
    `undominated` relies on holds within every limit but MAX_REPLICAS per config, so a plan
    with a config at that cap (or none found) is solved again with them all."""
    return not keep.all() and (sol.status == "infeasible" or (
        sol.ok and int(sol.replicas.max(initial=0)) >= MAX_REPLICAS))


def _expand(p: Problem, keep: np.ndarray, sol: Solution) -> Solution:
    """A solution of p.restricted(keep) as one of p."""
    if keep.all():
        return sol
    C, W = p.cap.shape
    y, shares = np.zeros(C, int), np.zeros((C, W))
    y[keep], shares[keep] = sol.replicas, sol.shares
    return replace(sol, replicas=y, shares=shares)


def replicas_floor(cap: np.ndarray, demand: np.ndarray) -> float:
    """Replicas any plan needs at least: every class on its best config, fractions summed
    (classes no config serves within the SLO are left to best effort, not counted)."""
    best = cap.max(axis=0)
    served = (demand > 0) & (best > 0)
    return float(np.sum(demand[served] / best[served]))


@dataclass
class Solution:
    status: str  # optimal, infeasible, time_limit, ...
    replicas: np.ndarray  # [C] integer
    shares: np.ndarray  # [C, W]
    cost: float  # $/h
    scale: float  # lambda (max_scale); 1.0 for min_cost
    bound: float  # proven bound on the objective: the least possible cost, or the largest scale
    seconds: float
    maximised: bool = False  # the objective is the scale (max_scale), else the cost
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # best-effort classes

    @property
    def ok(self) -> bool:
        return self.status in ("optimal", "time_limit") and np.isfinite(self.cost)

    @property
    def objective(self) -> float:
        """What was optimised: the scale, or the cost plus TAIL_PENALTY per best-effort class."""
        return self.scale if self.maximised else self.cost + TAIL_PENALTY * len(self.tail)

    @property
    def abs_gap(self) -> float:
        """How far this plan may be from the optimum, in the objective's unit ($/h or scale)."""
        return abs(self.bound - self.objective) if np.isfinite(self.bound) else np.inf

    @property
    def gap(self) -> float:
        """The relative gap: abs_gap over the objective's value."""
        value = self.objective
        return self.abs_gap / abs(value) if value else (0.0 if self.abs_gap == 0 else np.inf)


def _solve(cost, lo, hi, integer, rows, cols, vals, row_lo, row_hi, maximise, time_limit,
           rel_gap=MIP_GAP, abs_gap=0.0):
    """Solve with HiGHS; rows/cols/vals are the constraint matrix in COO form."""
    n = len(cost)
    order = np.lexsort((rows, cols))
    rows, cols, vals = rows[order], cols[order], vals[order]
    start = np.searchsorted(cols, np.arange(n + 1))
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = len(row_lo)
    lp.col_cost_ = np.asarray(cost, dtype=np.float64)
    lp.col_lower_ = np.asarray(lo, dtype=np.float64)
    lp.col_upper_ = np.asarray(hi, dtype=np.float64)
    lp.row_lower_ = np.asarray(row_lo, dtype=np.float64)
    lp.row_upper_ = np.asarray(row_hi, dtype=np.float64)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = start.astype(np.int32)
    lp.a_matrix_.index_ = rows.astype(np.int32)
    lp.a_matrix_.value_ = vals.astype(np.float64)
    lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                       for i in integer]
    if maximise:
        lp.sense_ = highspy.ObjSense.kMaximize
    h = _highs()
    h.clearModel()
    h.setOptionValue("time_limit", float(time_limit))
    h.setOptionValue("mip_rel_gap", float(rel_gap))
    h.setOptionValue("mip_abs_gap", float(abs_gap))
    h.setOptionValue("threads", 1)
    h.passModel(lp)
    t0 = time.perf_counter()
    h.run()
    seconds = time.perf_counter() - t0
    status = h.getModelStatus()
    names = {
        highspy.HighsModelStatus.kOptimal: "optimal",
        highspy.HighsModelStatus.kInfeasible: "infeasible",
        highspy.HighsModelStatus.kTimeLimit: "time_limit",
        highspy.HighsModelStatus.kUnboundedOrInfeasible: "infeasible",
    }
    name = names.get(status, h.modelStatusToString(status).lower())
    info = h.getInfo()
    has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
    values = np.asarray(h.getSolution().col_value) if has_solution else None
    if not has_solution:
        bound = np.nan
    elif any(integer):
        bound = float(info.mip_dual_bound)
    else:  # a linear program solved to optimality: its value is the bound
        bound = float(info.objective_function_value)
    return name, values, bound, seconds


def _build(p: Problem, scale_mode: bool, slices: int | None):
    """Columns: y (C), then one share column per servable (c, w) (within the SLO, then best
    effort), then a binary per tail class (cost mode), then lambda if scale_mode."""
    C, W = p.cap.shape
    ci, wi = np.nonzero(p.cap > 0)
    K_slo = len(ci)
    tails = [] if scale_mode else [(g, s) for g, s in p.tail_groups if len(g)]
    tail_classes = np.array(sorted({int(w) for g, _ in tails for w in g}), dtype=int)
    ti, tw = np.nonzero(p.tail[:, tail_classes] > 0) if len(tail_classes) else ([], [])
    ti, tw = np.asarray(ti, dtype=int), tail_classes[np.asarray(tw, dtype=int)]
    load = np.concatenate([p.demand[wi] / p.cap[ci, wi], p.demand[tw] / p.tail[ti, tw]])
    ci, wi = np.concatenate([ci, ti]), np.concatenate([wi, tw])
    K = len(ci)
    Z = len(tail_classes)
    n = C + K + Z + (1 if scale_mode else 0)
    step = 1.0 / slices if slices else 1.0
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    row_lo: list[float] = []
    row_hi: list[float] = []
    # (1) routing: sum_c x_cw = 1 (or = lambda)
    rows.append(wi)
    cols.append(C + np.arange(K))
    vals.append(np.full(K, step))
    if scale_mode:
        rows.append(np.arange(W))
        cols.append(np.full(W, n - 1))
        vals.append(np.full(W, -1.0))
        row_lo += [0.0] * W
        row_hi += [0.0] * W
    else:
        row_lo += [1.0] * W
        row_hi += [1.0] * W
    r = W
    # (2) capacity: sum_w load x - y <= 0
    rows += [r + ci, r + np.arange(C)]
    cols += [C + np.arange(K), np.arange(C)]
    vals += [load * step, -np.ones(C)]
    row_lo += [-INF] * C
    row_hi += [0.0] * C
    r += C
    if not scale_mode:  # (2b) a share needs a replica: x_cw <= y_c (binds only when the load
        rows += [r + np.arange(K), r + np.arange(K)]  # is below the solver's tolerance)
        cols += [C + np.arange(K), ci]
        vals += [np.full(K, step), -np.ones(K)]
        row_lo += [-INF] * K
        row_hi += [0.0] * K
        r += K
    if Z:  # (2c) best effort only for a chosen tail class: x_cw <= z_w
        z_of = {int(w): C + K + k for k, w in enumerate(tail_classes)}
        cols_t = np.arange(K_slo, K)
        rows += [r + np.arange(len(cols_t)), r + np.arange(len(cols_t))]
        cols += [C + cols_t, np.array([z_of[int(w)] for w in wi[K_slo:]], dtype=int)]
        vals += [np.full(len(cols_t), step), -np.ones(len(cols_t))]
        row_lo += [-INF] * len(cols_t)
        row_hi += [0.0] * len(cols_t)
        r += len(cols_t)
        for group, slack in tails:  # (2d) the tail classes of a model within its slack
            members = [int(w) for w in group if int(w) in z_of]
            rows.append(np.full(len(members), r))
            cols.append(np.array([z_of[w] for w in members], dtype=int))
            vals.append(p.tail_share[members])
            row_lo.append(-INF)
            row_hi.append(slack)
            r += 1
    # (3) budget
    if p.budget is not None:
        rows.append(np.full(C, r))
        cols.append(np.arange(C))
        vals.append(p.price)
        row_lo.append(-INF)
        row_hi.append(p.budget)
        r += 1
    # (4) availability
    for t in range(len(p.types)):
        if np.isfinite(p.available[t]):
            used = np.nonzero(p.usage[:, t])[0]
            rows.append(np.full(len(used), r))
            cols.append(used)
            vals.append(p.usage[used, t])
            row_lo.append(-INF)
            row_hi.append(p.available[t])
            r += 1
    lo = np.zeros(n)
    # shares are at most 1 (or `slices` slices); in scale mode u = lambda x is unbounded
    share_hi = float(slices) if slices else (INF if scale_mode else 1.0)
    hi = np.concatenate([np.full(C, float(MAX_REPLICAS)), np.full(K, share_hi), np.ones(Z),
                         [INF] if scale_mode else []])
    integer = [True] * C + [bool(slices)] * K + [True] * Z + ([False] if scale_mode else [])
    coo = (np.concatenate(rows), np.concatenate(cols), np.concatenate(vals))
    return n, (ci, wi, tail_classes), coo, row_lo, row_hi, lo, hi, integer


def _no_plan(p: Problem, status: str, bound: float, seconds: float,
             maximised: bool = False) -> Solution:
    """A solution without a plan (infeasible, or none found in time)."""
    C, W = p.cap.shape
    return Solution(status, np.zeros(C, int), np.zeros((C, W)), np.inf, 0.0, bound, seconds,
                    maximised)


def _unpack(p: Problem, status, values, bound, seconds, idx, step, scale_mode) -> Solution:
    C, W = p.cap.shape
    if values is None:
        return _no_plan(p, status, bound, seconds, scale_mode)
    ci, wi, tail_classes = idx
    y = np.round(values[:C]).astype(int)
    shares = np.zeros((C, W))
    np.add.at(shares, (ci, wi), values[C:C + len(ci)] * step)
    z = values[C + len(ci):C + len(ci) + len(tail_classes)]
    tail = tail_classes[z > 0.5]
    scale = float(values[-1]) if scale_mode else 1.0
    if scale_mode and scale > 0:
        shares /= scale
    shares[shares < 1e-12] = 0.0
    return Solution(status, y, shares, float(p.price @ y), scale, bound, seconds, scale_mode,
                    tail)


def min_cost(p: Problem, slices: int | None = None, time_limit: float = 60.0,
             abs_gap: float = COST_ABS_GAP, rel_gap: float = 0.0, prune: bool = True
             ) -> Solution:
    """Formulation A: the cheapest replicas and routing that serve every class's demand, proven
    optimal to within `abs_gap` $/h (or `rel_gap` of the cost, where given). Dominated configs
    are left out of the MILP (`undominated`) unless prune is False."""
    keep = undominated(p) if prune else np.ones(len(p.configs), dtype=bool)
    full, p = p, p.restricted(keep) if not keep.all() else p
    n, idx, (rows, cols, vals), row_lo, row_hi, lo, hi, integer = _build(p, False, slices)
    cost = np.zeros(n)
    cost[: len(p.configs)] = p.price
    tails = len(idx[2])
    cost[n - tails:] = TAIL_PENALTY
    status, values, bound, seconds = _solve(cost, lo, hi, integer, rows, cols, vals, row_lo,
                                            row_hi, False, time_limit, rel_gap=rel_gap,
                                            abs_gap=abs_gap)
    step = 1.0 / slices if slices else 1.0
    sol = _expand(full, keep, _unpack(p, status, values, bound, seconds, idx, step, False))
    if _capped(keep, sol):
        return min_cost(full, slices, time_limit, abs_gap, rel_gap, prune=False)
    return sol


Blocks = list[tuple[np.ndarray, np.ndarray]]  # (config indices, class indices) per block


def in_threads(fn, items: list) -> list:
    """fn over items in threads, one a core (HiGHS lets go of the GIL while it solves); within
    such a thread, one after another (no more solves at once than cores)."""
    workers = min(len(items), cores())
    if workers <= 1 or getattr(_local, "pooled", False):
        return [fn(x) for x in items]

    def run(x):
        _local.pooled = True
        return fn(x)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, items))


def _joined(p: Problem, blocks: Blocks, sols: list[Solution], status: str, bound: float,
            seconds: float) -> Solution:
    """One solution from one solution per block."""
    C, W = p.cap.shape
    y, shares = np.zeros(C, int), np.zeros((C, W))
    tail: list[int] = []
    for (ci, wi), sol in zip(blocks, sols, strict=True):
        y[ci] = sol.replicas
        shares[np.ix_(ci, wi)] = sol.shares
        tail += [int(wi[w]) for w in sol.tail]
    return Solution(status, y, shares, float(p.price @ y), 1.0, bound, seconds,
                    tail=np.array(sorted(tail), dtype=int))


def min_cost_blocks(p: Problem, blocks: Blocks, abs_gap: float = COST_ABS_GAP,
                    rel_gap: float = 0.0, time_limit: float = 60.0) -> Solution:
    """min_cost of a problem whose (config, class) blocks share no constraint (no budget, no
    availability limit): each block solved alone (side by side, a thread a core), which is
    exact and much faster."""
    t0 = time.perf_counter()
    sols = in_threads(lambda b: min_cost(p.block(*b), abs_gap=abs_gap / len(blocks),  # gaps add up
                                    rel_gap=rel_gap, time_limit=time_limit), blocks)
    seconds = time.perf_counter() - t0
    failed = next((s for s in sols if not s.ok), None)
    if failed is not None:
        return _no_plan(p, failed.status, np.nan, seconds)
    # a block stopped at the time limit: so does the whole
    status = "optimal" if all(s.status == "optimal" for s in sols) else "time_limit"
    return _joined(p, blocks, sols, status, sum(s.bound for s in sols), seconds)


LINKED_GAP = 1e-3  # linked blocks: stop once proven within this share of the optimum
LINKED_ROUNDS = 40  # subgradient steps at most


def min_cost_linked(p: Problem, blocks: Blocks, rel_gap: float = LINKED_GAP,
                    abs_gap: float = COST_ABS_GAP, time_limit: float = 60.0,
                    block_gap: float = 0.0) -> Solution:
    """min_cost of blocks linked only by availability limits and a budget, by Lagrangian
    relaxation (docs/design.md, 3.3), proven to within rel_gap of the optimum (or abs_gap $/h).

    Each block is first solved alone. Where those plans fit the limits and the budget together
    they are the optimum; a budget below their bounds' sum is short whatever the plan. Otherwise
    a price lam_t on each limited type's devices makes each block its own problem again: the
    blocks' bounds at any lam >= 0, less lam . available, bound the joint cost from below, and
    each block's plan at each lam is a column of a small master MILP that picks one plan per
    block within the limits and the budget (the best joint plan found). lam follows
    subgradient steps (Polyak's, aimed at the master's cost) until the two bounds meet, time
    runs out or LINKED_ROUNDS pass. A block whose own plan uses no limited type keeps it at
    every lam (its cost does not change, every other plan's only rises): only the others are
    solved again. Status "optimal" when the bounds met; otherwise "time_limit", with the best
    plan found (cost inf when the master found none) and the lower bound. block_gap: the
    relative gap of the blocks solved alone (0: to abs_gap $/h in all, as min_cost_blocks)."""
    t0 = time.perf_counter()
    subs = [p.block(*b) for b in blocks]  # (without the budget and availability rows)

    def left() -> float:  # seconds of the time limit left (at least one, to finish a step)
        return max(time_limit - (time.perf_counter() - t0), 1.0)

    def solve(k: int, lam: np.ndarray) -> Solution:
        sub = subs[k] if not lam.any() else replace(subs[k], price=subs[k].price + use[k] @ lam)
        sol = min_cost(sub, abs_gap=abs_gap / len(blocks),
                       rel_gap=rel_gap / 2 if lam.any() else block_gap, time_limit=left())
        return replace(sol, cost=float(subs[k].price @ sol.replicas))  # at the true prices

    limited = np.nonzero(np.isfinite(p.available))[0]
    avail = p.available[limited]
    use = [p.usage[ci][:, limited] for ci, _ in blocks]  # [block][config, limited type]
    lam = np.zeros(len(limited))
    at = in_threads(lambda k: solve(k, lam), list(range(len(blocks))))  # each block's plan at lam
    C, W = p.cap.shape
    failed = next((s for s in at if not s.ok), None)
    if failed is not None:
        return _no_plan(p, failed.status, np.nan, time.perf_counter() - t0)
    base = [s.bound for s in at]  # each block's bound at lam = 0
    lower = sum(base)
    # the bounds count TAIL_PENALTY per best-effort class; a budget bounds the price alone
    penalties = TAIL_PENALTY * sum(len(g) for g, _ in p.tail_groups)
    if p.budget is not None and lower - penalties > p.budget + abs_gap:
        return _no_plan(p, "infeasible", lower, time.perf_counter() - t0)
    columns = [[s] for s in at]
    moving = [k for k, s in enumerate(at) if (use[k].T @ s.replicas).any()]
    chosen, upper = _master(p, columns, use, avail, left())
    value, theta, stall = lower, 1.0, 0

    def proven() -> bool:
        return bool(np.isfinite(upper) and upper - lower <= max(rel_gap * upper, abs_gap))

    last = time.perf_counter() - t0  # how long a round takes (the first: the blocks alone)
    # a round starts only when one as long as the last still ends within the time limit
    while not proven() and moving and time.perf_counter() - t0 + last < time_limit \
            and len(columns[moving[0]]) <= LINKED_ROUNDS:
        began = time.perf_counter()
        slope = sum(use[k].T @ at[k].replicas for k in range(len(blocks))) - avail
        if not slope.any():
            break
        aim = upper if np.isfinite(upper) else 1.05 * lower
        step = np.maximum(0.0, lam + theta * (aim - value) / float(slope @ slope) * slope)
        if np.array_equal(step, lam):  # the limits are slack at these prices: nothing moves
            break
        lam = step
        again = in_threads(lambda k, lam=lam: solve(k, lam), moving)
        for k, sol in zip(moving, again, strict=True):
            at[k] = sol
            if sol.ok:
                columns[k].append(sol)
        if not all(at[k].ok for k in moving):
            break
        value = sum(base[k] for k in range(len(blocks)) if k not in moving) \
            + sum(at[k].bound for k in moving) - float(lam @ avail)
        if value > lower + 1e-9:
            lower, stall = value, 0
        else:
            stall += 1
            if stall >= 2:  # no progress: shorter steps, until they are too short to matter
                theta, stall = theta / 2.0, 0
                if theta < 1.0 / 16:
                    break
        chosen, upper = _master(p, columns, use, avail, left())
        last = time.perf_counter() - began
    best = _joined(p, blocks, chosen, "time_limit", lower, 0.0) if chosen is not None \
        else None
    if not proven():  # the plans found may combine better: every config they use, jointly
        keep = np.zeros(C, dtype=bool)
        for (ci, _), col in zip(blocks, columns, strict=True):
            for sol in col:
                keep[ci[sol.replicas > 0]] = True
        sub = min_cost(p.restricted(keep), abs_gap=abs_gap, time_limit=left())
        if sub.ok and (best is None or sub.objective < best.objective):
            best, upper = _expand(p, keep, sub), sub.objective
    seconds = time.perf_counter() - t0
    if best is None:
        return _no_plan(p, "time_limit", lower, seconds)
    return replace(best, status="optimal" if proven() else "time_limit",
                   bound=min(lower, upper), seconds=seconds)


def _master(p: Problem, columns: list[list[Solution]], use: list[np.ndarray],
            avail: np.ndarray, time_limit: float) -> tuple[list[Solution] | None, float]:
    """One plan per block from its columns: the least objective within the limited types'
    availability and the budget. (chosen plans, their objective) or (None, inf)."""
    flat = [(k, s) for k, col in enumerate(columns) for s in col]
    n = len(flat)
    objective = np.array([s.objective for _, s in flat])
    rows = [np.array([k for k, _ in flat])]  # one plan per block
    cols = [np.arange(n)]
    vals = [np.ones(n)]
    row_lo, row_hi = [1.0] * len(columns), [1.0] * len(columns)
    r = len(columns)
    used = np.array([use[k].T @ s.replicas for k, s in flat]).reshape(n, len(avail))
    for t in range(len(avail)):
        rows.append(np.full(n, r))
        cols.append(np.arange(n))
        vals.append(used[:, t])
        row_lo.append(-INF)
        row_hi.append(float(avail[t]))
        r += 1
    if p.budget is not None:
        rows.append(np.full(n, r))
        cols.append(np.arange(n))
        vals.append(np.array([s.cost for _, s in flat]))
        row_lo.append(-INF)
        row_hi.append(p.budget)
    status, values, _, _ = _solve(objective, np.zeros(n), np.ones(n), [True] * n,
                                  np.concatenate(rows), np.concatenate(cols),
                                  np.concatenate(vals), row_lo, row_hi, False, time_limit,
                                  rel_gap=0.0)
    if values is None:
        return None, np.inf
    pick = values > 0.5
    chosen: list[Solution | None] = [None] * len(columns)
    for (k, s), on in zip(flat, pick, strict=True):
        if on:
            chosen[k] = s
    return chosen, float(objective[pick].sum())  # type: ignore[return-value]


def max_scale(p: Problem, time_limit: float = 60.0, gap: float = MIP_GAP, prune: bool = True
              ) -> Solution:
    """Formulation B: the largest uniform scale of the demand within budget and availability
    (dominated configs left out unless prune is False, as in min_cost)."""
    if p.budget is None and not np.isfinite(p.available).any():
        raise ValueError("max_scale needs a budget or availability limits")
    keep = undominated(p) if prune else np.ones(len(p.configs), dtype=bool)
    full, p = p, p.restricted(keep) if not keep.all() else p
    n, idx, (rows, cols, vals), row_lo, row_hi, lo, hi, integer = _build(p, True, None)
    cost = np.zeros(n)
    cost[-1] = 1.0
    status, values, bound, seconds = _solve(cost, lo, hi, integer, rows, cols, vals, row_lo,
                                            row_hi, True, time_limit, rel_gap=gap)
    sol = _expand(full, keep, _unpack(p, status, values, bound, seconds, idx, 1.0, True))
    if _capped(keep, sol):
        return max_scale(full, time_limit, gap, prune=False)
    return sol
