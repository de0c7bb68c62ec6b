"""Sustainable request rate of one replica per request class under p90 TTFT/TPOT limits.

The closed form is the steady state of the engine the simulator runs (hetserve.sim.engine:
continuous batching, chunked prefill within the token budget max_num_batched_tokens), at the
90th percentile of latencies, without simulating. docs/design.md section 4.3 derives it; in
short, at a load of `lambda` prompt chunks arriving per step (a Poisson count):

- B = k (O - 1) sequences decode (Little's law), k prompts per step are prefilled within the
  budget left by the decodes; every step is timed by Deployment's step physics (rooflines per
  operator, TP/PP communication, host overhead), so prompt tokens ride free only while weight
  reads hide them, and tau = E[step] over the Poisson count; X = k / tau req/s.
- TTFT: the step under way (none on an idle engine), the wait for prefill (a queue whose service
  is the prompt's own compute, p90 of M/D/1-like waits), and the prompt's own prefill steps.
- TPOT: a request's decode window carries every prompt prefilled while it decodes (those that
  queued behind it and those arriving meanwhile; their Poisson count at p90), each packed into
  full-budget steps, as a fixed point (a longer window gathers more prompts and a larger batch).
- The decoding batch at its p90 and the prompts in flight fit max_num_seqs and the KV cache; a
  cache holding few requests is a queue of that many slots (Erlang C) before prefill.

The capacity is X at the edge of the feasible loads: a coarse pass over six decades, then
bisection. It never exceeds the compute or bandwidth roofline and never drops on hardware with
more FLOPS, bandwidth and memory (tests/test_capacity_properties.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from statistics import NormalDist

import numpy as np

from hetserve.errors import HetserveError, positive
from hetserve.perf.model import Deployment, prompt_compute_time, step_time

DEFAULT_QUANTILE = 0.9  # latencies are limits on this share of requests unless an SLO says
GRID = 12  # points of the coarse pass over the load
GRID_SPAN = 1e-6  # the coarse pass spans [GRID_SPAN, 1] x the largest load that fits a step
WINDOW_ITERATIONS = 3  # of the decode window's fixed point
BISECTIONS = 10  # halvings of the log-load interval after the coarse pass (to ~0.1%)
# the largest ratio between two loads the search cannot tell apart (about 0.12%)
LOAD_RESOLUTION = GRID_SPAN ** (-1.0 / ((GRID - 1) * 2 ** BISECTIONS))
DEPLOYMENT_BATCH = 4  # deployments per vectorised coarse pass (arrays that stay in cache)
PAIR_BATCH = 2048  # (deployment, class) pairs bisected side by side
POISSON_WIDTH = 32  # counts of prompt chunks per step evaluated
POISSON_EXACT = 16.0  # means up to this use the exact Poisson pmf, larger ones a normal
HEAP_PAD = 64 << 20  # bytes glibc's malloc grows and keeps the heap by (_pad_heap)
KV_SERVERS = 64  # a KV cache holding at most this many requests is a queue of that many slots
OVERFLOW = 1e-4  # ... and more requests than it holds at full length stay this rare


@dataclass(frozen=True)
class SLO:
    """Latency limits in seconds (inf: no limit) that a share `quantile` of requests meets
    (0.9: p90 limits; a plan sets it from its attainment target)."""

    ttft: float = float("inf")
    tpot: float = float("inf")
    quantile: float = DEFAULT_QUANTILE

    def __post_init__(self) -> None:
        positive(self.ttft, "--ttft", allow_inf=True)
        positive(self.tpot, "--tpot", allow_inf=True)
        if not (isinstance(self.quantile, int | float) and 0.5 <= self.quantile < 1):
            raise HetserveError(f"SLO quantile: expected a share in [0.5, 1), got "
                                f"{self.quantile!r}")


@dataclass(frozen=True)
class Capacity:
    """Per class (arrays aligned with the classes given)."""

    rate: np.ndarray  # req/s one replica sustains within the SLO (0: cannot)
    batch: np.ndarray  # mean decoding batch at that rate
    ttft: np.ndarray  # predicted p90 TTFT at that rate (s)
    tpot: np.ndarray  # predicted p90 TPOT at that rate (s)
    best_ttft: np.ndarray  # TTFT of a request alone on an idle replica (the floor)
    best_tpot: np.ndarray  # TPOT of a request alone (the floor; 0 for one-token outputs)
    reason: tuple[str, ...]  # why the rate is 0 ('' where it is not)


@dataclass(frozen=True)
class SteadyState:
    """The engines at a load, per (deployment, load, class) (arrays broadcast)."""

    rate: np.ndarray  # X = k / tau, req/s
    batch: np.ndarray  # B, mean decoding sequences
    tpot: np.ndarray  # p90 TPOT, s
    ttft: np.ndarray  # p90 TTFT, s
    fits: np.ndarray  # decoding batch, prompts in flight and budget fit the engine


@dataclass(frozen=True)
class Engines:
    """Deployments side by side: what the steady state needs of each, as arrays over a leading
    axis (shaped to broadcast against [deployment, ...] arrays)."""

    coefficients: tuple[np.ndarray, ...]
    pp: np.ndarray
    budget: np.ndarray  # max_num_batched_tokens
    max_seqs: np.ndarray
    kv_tokens: np.ndarray

    @classmethod
    def of(cls, deps: Sequence[Deployment]) -> Engines:
        def col(values) -> np.ndarray:
            return np.asarray(values, dtype=np.float64)

        return cls(tuple(col(c) for c in zip(*(d.coefficients for d in deps), strict=True)),
                   col([d.pp for d in deps]), col([d.chunk_tokens for d in deps]),
                   col([d.max_seqs for d in deps]), col([d.kv_capacity_tokens for d in deps]))

    def shaped(self, ndim: int) -> Engines:
        """Each array as [deployments, 1, ...] with `ndim` axes in all."""
        def fit(a: np.ndarray) -> np.ndarray:
            return a.reshape(a.shape[:1] + (1,) * (ndim - 1))

        return Engines(tuple(fit(c) for c in self.coefficients), fit(self.pp),
                       fit(self.budget), fit(self.max_seqs), fit(self.kv_tokens))

    def take(self, index: np.ndarray) -> Engines:
        """The engines at `index` (repeats allowed), in that order."""
        return Engines(tuple(c[index] for c in self.coefficients), self.pp[index],
                       self.budget[index], self.max_seqs[index], self.kv_tokens[index])

    def step_time(self, *args):
        return step_time(self.coefficients, self.pp, *args)


def steady_state(engines: Engines, load, inp, out, quantile: float = DEFAULT_QUANTILE
                 ) -> SteadyState:
    """The engines' steady state when `load` prompt chunks arrive per step (the mean of a
    Poisson count, before the token budget caps a step) for classes of `inp` prompt and `out`
    output tokens, latencies at `quantile`. `load`, `inp` and `out` broadcast to
    [deployment, ...] arrays."""
    z = NormalDist().inv_cdf(quantile)
    lam, inp, out = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64)
                                          for a in (load, inp, out)))
    eng = engines.shaped(lam.ndim)
    per_count = engines.shaped(lam.ndim + 1)  # with the Poisson count's axis
    decode_steps = np.maximum(out - 1.0, 0.0)
    # the budget left by the decoding batch sets the chunk size, and the batch depends on the
    # rate: two passes of the fixed point, starting from an empty batch
    batch = np.zeros_like(lam)
    counts, pmf = _poisson(lam)  # [..., J]
    for _ in range(2):
        free = np.maximum(eng.budget - batch, 1.0)
        spans = np.ceil(inp / free)  # steps one prompt's prefill spans
        chunk = inp / spans
        tokens = np.minimum(counts * chunk[..., None], free[..., None])  # prompt tokens a step
        k = (pmf * tokens).sum(-1) / inp  # prompts per step: what the steps prefill
        batch = k * decode_steps
    room = eng.budget - batch >= 1.0
    context = batch * (inp + out / 2.0)
    b_, c_, ctx_, in_ = batch[..., None], chunk[..., None], context[..., None], inp[..., None]

    def timed(tokens):  # step times with `tokens` prompt tokens beside the decoding batch
        part = np.minimum(tokens, c_)
        return per_count.step_time(b_ + tokens, b_ + tokens / in_, ctx_, tokens * in_ / 2.0,
                                   part, part * part / 2.0)

    steps = timed(tokens)
    tau = (pmf * steps).sum(-1)
    rate = k / tau
    idle = eng.step_time(batch, batch, context)  # a step without prompt tokens
    busy = pmf[..., 1:].sum(-1)
    prefill_step = np.where(busy > 0, (pmf * steps)[..., 1:].sum(-1) / np.maximum(busy, 1e-300),
                            steps[..., -1])
    # prefill as a queue. While prompts queue, every step carries the decoding batch and a
    # full budget `free` of prompt tokens, so a prompt holds the engine for its share of such
    # steps (never less than the compute its tokens need), a share rho of the time at rate X.
    # Its wait at the quantile q is half the M/M/1 one, P(W > t) = rho exp(-(1 - rho) t /
    # service) (service times are nearly fixed), or at light load the rest of one service
    compute = prompt_compute_time(eng.coefficients, eng.pp, inp)
    full = timed(free[..., None])[..., 0]  # a step with a full budget of prompt tokens
    service = np.maximum(compute, inp * full / free)
    rho = rate * service
    with np.errstate(divide="ignore", invalid="ignore"):
        wait = np.where(rho < 1.0, service * np.maximum(0.0, np.log(rho / (1.0 - quantile)))
                        / (2.0 * (1.0 - rho)), np.inf)
        # at light load the wait is the rest of the one prompt being prefilled, if any
        # (arriving during it with probability rho, its rest uniform): the quantile of that
        # is more than half the M/M/1 one where few prompts queue
        wait = np.maximum(wait, service * np.maximum(0.0, 1.0 - (1.0 - quantile) / rho))
        typical_wait = idle / 2.0 + np.where(rho < 1.0, rho * service / (2.0 * (1.0 - rho)),
                                             np.inf)
    # the step under way when a request arrives: none on an idle engine
    busy_now = np.minimum(1.0, batch + k * spans)
    ttft = busy_now * idle + wait + spans * prefill_step
    # TPOT: a request's decode window is its m decode steps. Every prompt prefilled during it
    # lengthens them: those that arrived while it waited and was prefilled (its typical TTFT,
    # not the quantile one) and those arriving during the window (a fixed point: a longer
    # window gathers more). Their count n is Poisson, taken at its quantile. The window's steps
    # carry the request itself, the others decoding when it starts for about half of it (B of
    # them), the n prompts once prefilled for about half of it (at least B in all), and the
    # n prompts' s chunks each, a Poisson count per step (short prompts ride free on the weight
    # reads unless they clump; a long one's chunks fill their steps), at most `free` tokens.
    m = np.maximum(decode_steps, 1.0)
    before = typical_wait + spans * prefill_step

    def carrying(beside, tokens):  # steps beside `beside` decodes with `tokens` (last axis)
        part = np.minimum(tokens, chunk[..., None])
        b_, in_ = beside[..., None], inp[..., None]
        return per_count.step_time(b_ + tokens, b_ + tokens / in_, (beside * (inp + out / 2.0))
                                   [..., None], tokens * in_ / 2.0, part, part * part / 2.0)

    # from the mean window with each prompt packed into full steps, then at the quantile
    load = rate * inp * np.maximum(full - idle, 0.0) / free
    with np.errstate(divide="ignore", invalid="ignore"):
        window = np.where(load < 1.0, (m * idle + load * before) / (1.0 - load), np.inf)
    for _ in range(WINDOW_ITERATIONS):
        prompts = poisson_quantile(rate * (before + window), quantile)
        n = np.where(np.isfinite(prompts), prompts, 0.0)
        beside = 1.0 + np.maximum(batch, (batch + n) / 2.0)
        counts, pmf = _poisson(n * spans / m)  # chunks a step of the window carries
        # with an idle and a full step after the counts
        steps = carrying(beside, np.concatenate([np.minimum(counts * chunk[..., None],
                                                            free[..., None]),
                                                 np.stack([0.0 * free, free], -1)], -1))
        steps, plain, full_w = steps[..., :-2], steps[..., -2], steps[..., -1]
        # a clump past `free` tokens queues for later steps, which it fills: its excess takes
        # a full step's time per `free` tokens beyond an idle one, until every step is full
        excess = (pmf * np.maximum(counts * chunk[..., None] - free[..., None], 0.0)).sum(-1)
        mean = np.minimum((pmf * steps).sum(-1) + excess * (full_w - plain) / free, full_w)
        window = np.where(np.isfinite(prompts), m * mean, np.inf)
    tpot = np.where(out > 1.0, window / m, 0.0)
    # the decoding batch at its quantile under Poisson fluctuation, and prompts being filled.
    # A larger batch makes steps longer once they are compute- or KV-read-bound, so each
    # sequence stays longer and the batch grows more: near a roofline the batch fluctuates
    # like a processor-sharing queue, its spread growing by 1 / (1 - u), u the share of the
    # compute roofline (prompt and generated tokens through the layers) or of the KV-read
    # bandwidth (every generated token reading its context) that the load takes. Without
    # this, a replica sized to the edge of max_num_seqs or the KV cache queues unbounded.
    a_t, a_s, _, _, b_kv = eng.coefficients[:5]
    per_request = np.maximum(
        compute + decode_steps * (eng.pp * a_t + a_s),  # compute seconds
        decode_steps * b_kv * (inp + out / 2.0))  # KV-read seconds
    u = rate * per_request
    with np.errstate(divide="ignore"):
        peak = np.where(u < 1.0, batch + z * np.sqrt(batch) / np.maximum(1.0 - u, 1e-12),
                        np.inf)
    in_flight = peak + k * spans
    kv = peak * (inp + out / 2.0) + k * spans * inp
    # a KV cache that holds only a few such requests at once is a queue of that many servers:
    # a request waits for one to finish (Erlang C) before its prefill starts
    held = np.floor(eng.kv_tokens / (inp + out / 2.0))
    stay = spans * prefill_step + window  # s a request holds its blocks
    blocked, fits_kv = _kv_wait(rate * stay, held, stay, quantile)
    ttft = ttft + blocked
    # and more requests than it holds at their full length preempt one another: the engine
    # recomputes a preempted prompt, which slows every step, so more requests stay longer and
    # more are preempted (a collapse the simulator shows from about 1 Erlang on 8k-token
    # requests in a cache of five). The number in the system is Poisson (M/G/inf): it may
    # pass what the cache holds at most a share OVERFLOW of the time
    whole = np.floor(eng.kv_tokens / (inp + out))
    fits_kv &= (whole > KV_SERVERS) | (poisson_quantile(rate * stay, 1.0 - OVERFLOW) <= whole)
    fits = room & (rho < 1.0) & (in_flight <= eng.max_seqs) \
        & (kv <= eng.kv_tokens) & fits_kv
    return SteadyState(rate, batch, tpot, ttft, fits)


def _kv_wait(offered, servers, stay, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """The wait at `quantile` for one of `servers` KV slots held `stay` s each, `offered`
    Erlang of load (an M/M/c queue: P(W > t) = C exp(-(c - a) t / stay), C Erlang's delay
    probability), and whether the load fits (a < c). Slots past KV_SERVERS are left to the
    batch's spread above (Erlang's wait vanishes there before a load the spread allows)."""
    few = servers <= KV_SERVERS
    if not few.any():
        return np.zeros(np.broadcast(offered, servers).shape), np.ones(few.shape, dtype=bool)
    c = np.minimum(servers, KV_SERVERS)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(np.isfinite(offered), offered, np.inf)
        erlang_b = np.ones_like(a)
        for n in range(1, int(c[few].max()) + 1):  # Erlang B by its recursion, up to each c
            step = a * erlang_b / (n + a * erlang_b)
            erlang_b = np.where(n <= c, step, erlang_b)
        delay = c * erlang_b / (c - a * (1.0 - erlang_b))
        wait = np.maximum(0.0, np.log(delay / (1.0 - quantile))) * stay / (c - a)
    ok = ~few | (a < c)
    return np.where(few & ok, np.nan_to_num(wait, nan=0.0, posinf=0.0), 0.0), ok


@lru_cache(maxsize=16)
def _thresholds(quantile: float, top: int = 64) -> np.ndarray:
    """thresholds[n]: the mean above which a Poisson count's `quantile` exceeds n."""
    out = []
    for n in range(top):
        lo, hi = 0.0, 4.0 * n + 16.0
        for _ in range(60):  # P(N <= n; mu) falls as mu grows: find where it crosses quantile
            mid = (lo + hi) / 2.0
            term = total = math.exp(-mid)
            for j in range(1, n + 1):
                term *= mid / j
                total += term
            lo, hi = (mid, hi) if total >= quantile else (lo, mid)
        out.append(lo)
    return np.array(out)


def poisson_quantile(mu, quantile: float) -> np.ndarray:
    """The `quantile` of a Poisson(mu) count (exact while below the 64th count, normal
    beyond)."""
    mu = np.asarray(mu, dtype=np.float64)
    table = _thresholds(quantile)
    exact = np.searchsorted(table, mu, side="left").astype(np.float64)
    normal = np.ceil(mu + NormalDist().inv_cdf(quantile) * np.sqrt(mu))
    return np.where(mu > table[-1], normal, exact)


def _poisson(lam: np.ndarray, width: int = POISSON_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """Counts and probabilities of a Poisson(lam): exact from 0 to width - 1 for a mean up to
    POISSON_EXACT (4 sigma inside the window), a normal over +-4 sigma beyond."""
    lam = np.maximum(np.asarray(lam, dtype=np.float64), 0.0)
    big = lam > POISSON_EXACT

    def exact(mean: np.ndarray) -> np.ndarray:  # each count lam / count times the one before
        out = np.empty(mean.shape + (width,))
        out[..., 0] = 1.0
        np.cumprod(np.minimum(mean[..., None], POISSON_EXACT) / np.arange(1.0, float(width)),
                   -1, out=out[..., 1:])
        return out

    counts = np.arange(float(width))  # broadcasts against [..., width] where all are exact
    pmf = exact(lam)
    if big.any():  # the few rows past POISSON_EXACT: a normal, computed for them alone
        counts = np.broadcast_to(counts, lam.shape + (width,)).copy()
        mean = lam[big][:, None]
        counts[big] = np.maximum(mean + np.sqrt(mean) * np.linspace(-4.0, 4.0, width), 0.0)
        pmf[big] = np.exp(-((counts[big] - mean) ** 2) / (2.0 * np.maximum(mean, 1e-300)))
    return counts, pmf / pmf.sum(-1, keepdims=True)


def class_capacity(dep: Deployment, mean_input, mean_output, slo: SLO) -> Capacity:
    return class_capacities([dep], mean_input, mean_output, slo)[0]


def class_capacities(deps: Sequence[Deployment], mean_input, mean_output, slo: SLO
                     ) -> list[Capacity]:
    """class_capacity of each deployment, computed side by side (vectorised over deployments,
    classes and loads)."""
    inp = np.atleast_1d(np.asarray(mean_input, dtype=np.float64))
    out = np.atleast_1d(np.asarray(mean_output, dtype=np.float64))
    n = len(inp)
    results: list[Capacity | None] = [None] * len(deps)
    fitting = []
    for i, dep in enumerate(deps):
        if dep.fits:
            fitting.append(i)
        else:
            zero, inf = np.zeros(n), np.full(n, np.inf)
            results[i] = Capacity(zero, zero, inf, inf, inf, inf, (dep.why_not() or "",) * n)
    if fitting:
        for i, cap in zip(fitting, _capacities([deps[i] for i in fitting], inp, out, slo),
                          strict=True):
            results[i] = cap
    return results  # type: ignore[return-value]


@cache
def _pad_heap() -> None:
    """Have glibc's malloc grow the heap, and keep it, HEAP_PAD bytes at a time. The search
    allocates and frees many arrays of 0.1-1 MB; by default the heap grows and shrinks by what
    each needs and their pages fault in again every time, a quarter of a first search's time
    (9.3 s against 6.7 s for one model's 1,116 configs). Nothing where malloc is another."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(None)
        # setting the pad also fixes glibc's mmap threshold where it stands (128 KB unless
        # freed large blocks raised it), and 0.1-1 MB arrays would then be mapped afresh each
        # time: set it too, to its largest
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-2, HEAP_PAD)  # M_TOP_PAD


def _capacities(deps: list[Deployment], inp: np.ndarray, out: np.ndarray, slo: SLO
                ) -> list[Capacity]:
    _pad_heap()
    engines = Engines.of(deps)
    n = len(inp)
    limit = np.array([min(d.kv_capacity_tokens, d.model.max_context) for d in deps])[:, None]
    one_fits = inp[None, :] + out[None, :] <= limit  # [D, n]

    def feasible_rates(eng, load, inp, out, fits):  # arrays that broadcast with load's shape
        st = steady_state(eng, load, inp, out, slo.quantile)
        ok = st.fits & (st.ttft <= slo.ttft) & ((st.tpot <= slo.tpot) | (out <= 1)) & fits
        return st, np.where(ok, st.rate, 0.0)

    # chunk arrivals per step up to what fills the budget (decodes within max_num_seqs): a
    # coarse pass over six decades, then bisection to the edge of the feasible loads above the
    # best coarse point (the rate rises with the load until a limit binds)
    budget, seqs = engines.budget[:, None], engines.max_seqs[:, None]
    top = np.minimum(budget / np.minimum(inp, budget), seqs / np.maximum(out - 1.0, 1.0)) \
        * np.ceil(inp / budget)  # [D, n]
    coarse = np.geomspace(GRID_SPAN, 1.0, GRID)[None, :, None] * top[:, None, :]  # [D, K, n]
    rates = np.zeros(coarse.shape)
    light = SteadyState(*(np.zeros(one_fits.shape) for _ in range(4)),
                        np.zeros(one_fits.shape, dtype=bool))  # at the lightest load
    for start in range(0, len(deps), DEPLOYMENT_BATCH):  # bounds the arrays' memory
        part = slice(start, start + DEPLOYMENT_BATCH)
        st, rates[part] = feasible_rates(engines.take(np.arange(len(deps))[part]), coarse[part],
                                         inp[None, None, :], out[None, None, :],
                                         one_fits[part, None, :])
        for whole, got in zip((light.rate, light.batch, light.tpot, light.ttft, light.fits),
                              (st.rate, st.batch, st.tpot, st.ttft, st.fits), strict=True):
            whole[part] = got[:, 0, :]
    best = np.argmax(rates, axis=1)  # [D, n]
    pick = np.take_along_axis
    # bisect only the (deployment, class) pairs the coarse pass found feasible, side by side
    d, c = np.nonzero(pick(rates, best[:, None, :], 1)[:, 0, :] > 0)
    lo = pick(coarse, best[:, None, :], 1)[d, 0, c]
    hi = pick(coarse, np.minimum(best + 1, GRID - 1)[:, None, :], 1)[d, 0, c]  # top: no more
    at_edge, st = _bisect(lambda k, load: feasible_rates(
        engines.take(d[k]), load, inp[c[k]], out[c[k]], one_fits[d[k], c[k]]), lo, hi)
    feasible = np.zeros(one_fits.shape, dtype=bool)
    feasible[d, c] = at_edge > 0
    rate, batch = np.zeros(one_fits.shape), np.zeros(one_fits.shape)
    ttft, tpot = np.full(one_fits.shape, np.inf), np.full(one_fits.shape, np.inf)
    rate[d, c], batch[d, c], ttft[d, c], tpot[d, c] = at_edge, st.batch, st.ttft, st.tpot
    out_list = []
    for i, dep in enumerate(deps):
        alone_ttft = np.asarray(dep.prefill_time(inp), dtype=np.float64)
        alone_tpot = np.where(out > 1, dep.decode_step_time(1.0, inp + out / 2.0), 0.0)
        reasons = tuple("" if feasible[i, j] else _reason(
            dep, slo, inp[j], out[j], one_fits[i, j], alone_ttft[j], alone_tpot[j],
            light.fits[i, j], light.ttft[i, j], light.tpot[i, j]) for j in range(n))
        ok = feasible[i]
        out_list.append(Capacity(
            rate=np.where(ok, rate[i], 0.0), batch=np.where(ok, batch[i], 0.0),
            ttft=np.where(ok, ttft[i], np.inf), tpot=np.where(ok, tpot[i], np.inf),
            best_ttft=alone_ttft, best_tpot=alone_tpot, reason=reasons))
    return out_list


def _bisect(rates_at, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, SteadyState]:
    """Bisect each pair's load between lo (feasible) and hi in log space, PAIR_BATCH pairs at a
    time (arrays that stay in cache); the rates at the feasible edge and the steady state there.
    rates_at(index, load) -> (SteadyState, feasible rate or 0) for the pairs at `index`."""
    rate = np.zeros(len(lo))
    st = SteadyState(*(np.zeros(len(lo)) for _ in range(4)), np.zeros(len(lo), dtype=bool))
    for start in range(0, len(lo), PAIR_BATCH):
        k = np.arange(start, min(start + PAIR_BATCH, len(lo)))
        a, b = lo[k], hi[k]
        for _ in range(BISECTIONS):
            mid = np.sqrt(a * b)
            up = rates_at(k, mid)[1] > 0
            a, b = np.where(up, mid, a), np.where(up, b, mid)
        got, rate[k] = rates_at(k, a)
        for whole, part in zip((st.rate, st.batch, st.tpot, st.ttft, st.fits),
                               (got.rate, got.batch, got.tpot, got.ttft, got.fits), strict=True):
            whole[k] = part
    return rate, st


def _reason(dep: Deployment, slo: SLO, inp: float, out: float, fits: bool, alone_ttft: float,
            alone_tpot: float, light_fits: bool, light_ttft: float, light_tpot: float) -> str:
    """Why a class gets no capacity on `dep`: the first limit that binds, with its numbers."""
    if not fits:
        limit = min(dep.kv_capacity_tokens, dep.model.max_context)
        return f"a {inp + out:.0f}-token request exceeds {limit} tokens"
    if alone_ttft > slo.ttft:
        return f"TTFT {alone_ttft:.3g}s for a request alone > limit {slo.ttft:.3g}s"
    if out > 1 and alone_tpot > slo.tpot:
        return f"TPOT {alone_tpot * 1e3:.3g}ms for a request alone > limit {slo.tpot * 1e3:.3g}ms"
    if not light_fits:
        return (f"KV cache: {dep.kv_capacity_tokens} tokens hold too few {inp + out:.0f}-token "
                "requests with headroom for bursts")
    if light_ttft > slo.ttft:
        return (f"TTFT {light_ttft:.3g}s at the lightest load > limit {slo.ttft:.3g}s "
                f"(alone: {alone_ttft:.3g}s)")
    return (f"TPOT {light_tpot * 1e3:.3g}ms at the lightest load (prefill interleaved) > "
            f"limit {slo.tpot * 1e3:.3g}ms (alone: {alone_tpot * 1e3:.3g}ms)")
