"""How much burstier than Poisson a trace's arrivals are, at the time scale of a latency limit.

The performance model's capacities assume Poisson arrivals. Real traces come in bursts (the
Azure code trace, time-scaled to 40 req/s, has 1-second counts with 92 times the variance of a
Poisson process). A fluid queue fed by the trace, one unit of work per request, finds the
service rate at which a share `quantile` of requests wait at most `slack` seconds; the same on
a Poisson process of the same rate gives the rate that Poisson already needs. Their ratio, at
least 1, is the factor by which a plan must over-provision for the trace's bursts.

That covers waits. A request's TPOT depends instead on the load while it decodes: a stretch of
minutes at twice the mean rate (azure-conv's short prompts, time-scaled to 10 req/s, come at
1.9x for 40 s) slows every step in it without any queue building. So each request also sees
the rate of the arrivals within its lifetime around it (TTFT limit plus output x TPOT limit);
the quantile of that over requests, relative to a Poisson process's, is the second factor.
"""

from __future__ import annotations

import numpy as np

BISECTIONS = 40


def fluid_waits(arrivals: np.ndarray, rate: float) -> np.ndarray:
    """Per request (arrivals sorted): its wait in a fluid queue served at `rate` requests per
    second, one unit of work each (the reflected walk of arrivals minus service)."""
    walk = np.arange(1, len(arrivals) + 1) - rate * arrivals
    floor = np.minimum.accumulate(np.minimum(walk - 1.0, 0.0))  # the queue empties here
    return (walk - floor - 1.0) / rate


def service_rate(arrivals: np.ndarray, slack: float, quantile: float) -> float:
    """The least fluid service rate at which `quantile` of requests wait at most `slack` s."""
    span = max(float(arrivals[-1] - arrivals[0]), 1.0)
    lo, hi = 0.5 * len(arrivals) / span, len(arrivals) / min(slack, span) + 1.0
    for _ in range(BISECTIONS):
        mid = np.sqrt(lo * hi)
        if np.quantile(fluid_waits(arrivals, mid), quantile) <= slack:
            hi = mid
        else:
            lo = mid
    return hi


def _with_poisson(arrivals: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The arrivals sorted, and a Poisson process of the same rate and count (seeded); None
    where there is no burst to speak of (fewer than two, or a rate past floating point's
    comfort)."""
    arrivals = np.sort(np.asarray(arrivals, dtype=np.float64))
    if len(arrivals) < 2:
        return None
    rate = len(arrivals) / max(float(arrivals[-1] - arrivals[0]), 1.0)
    if not 1e-9 < rate < 1e9:
        return None
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, len(arrivals))
    return arrivals, np.cumsum(gaps) - gaps[0]


def burst_factor(arrivals: np.ndarray, slack: float, quantile: float, seed: int = 0) -> float:
    """The trace's service rate over a Poisson process's of the same rate and length (>= 1)."""
    pair = _with_poisson(arrivals, seed) if np.isfinite(slack) else None
    if pair is None:
        return 1.0
    trace, poisson = pair
    return max(1.0, service_rate(trace, slack, quantile) / service_rate(poisson, slack, quantile))


def seen_rates(arrivals: np.ndarray, span: float) -> np.ndarray:
    """Per request (arrivals sorted): the arrivals within span / 2 either side, per second."""
    ahead = np.searchsorted(arrivals, arrivals + span / 2.0, side="right")
    behind = np.searchsorted(arrivals, arrivals - span / 2.0, side="left")
    return (ahead - behind) / span


def window_factor(arrivals: np.ndarray, span: float, quantile: float, seed: int = 0) -> float:
    """The `quantile` over requests of the rate each sees within `span` around it, over a
    Poisson process's of the same rate and length (>= 1)."""
    pair = _with_poisson(arrivals, seed) if np.isfinite(span) and span > 0 else None
    if pair is None:
        return 1.0
    trace, poisson = pair
    return max(1.0, float(np.quantile(seen_rates(trace, span), quantile))
               / float(np.quantile(seen_rates(poisson, span), quantile)))


def class_burst_factors(arrivals: np.ndarray, request_class: np.ndarray, classes: int,
                        slack: float, quantile: float, spans: np.ndarray | None = None,
                        least: int = 200) -> np.ndarray:
    """Per class: the larger of the burst factor of its own arrivals (waits within `slack`)
    and, with `spans` (per class: a request's lifetime, s), the window factor at that span; at
    least the whole trace's. A plan routes by class, so a replica group sees its classes'
    bursts, and a trace's mix drifts (azure-conv's short-prompt classes double their share for
    minutes). Classes with fewer than `least` requests take the whole trace's factors (too few
    to measure their own)."""
    arrivals = np.asarray(arrivals, dtype=np.float64)
    whole = burst_factor(arrivals, slack, quantile)
    out = np.full(classes, whole)
    for w in range(classes):
        mine = arrivals[request_class == w]
        if spans is not None:
            out[w] = max(out[w], window_factor(arrivals, float(spans[w]), quantile))
        if len(mine) >= least:
            out[w] = max(out[w], burst_factor(mine, slack, quantile))
            if spans is not None:
                out[w] = max(out[w], window_factor(mine, float(spans[w]), quantile))
    return out
