"""A trace's requests as a stream of chunks, for as many requests as asked.

Arrivals are the trace's timestamps scaled to a rate ("trace"), as they are ("as-is"), or a
Poisson process at the rate ("poisson"). Past the trace's last row the trace repeats: its rows
again, in order, a copy's timestamps shifted by the trace's span and one mean gap (so the rate
holds); Poisson arrivals simply go on. Chunks are computed as they are read, so a day of
requests never sits in memory at once, and the first len(trace) arrivals are exactly those of
the trace itself (Trace.scaled_to_rate, Trace.with_poisson_arrivals).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from hetserve.errors import HetserveError
from hetserve.workload import Trace

ARRIVALS = ("trace", "as-is", "poisson")
CHUNK = 1 << 16  # requests per chunk


def check_arrivals(mode: str) -> str:
    if mode not in ARRIVALS:
        raise HetserveError(f"--arrivals '{mode}': expected one of {', '.join(ARRIVALS)}")
    return mode


def arrivals_for(trace: Trace, mode: str, rate: float | None, seed: int = 0) -> Trace:
    """The trace with arrivals as asked: scaled to `rate`, as they are, or Poisson at `rate`."""
    check_arrivals(mode)
    if mode == "as-is" or rate is None:  # (simulate refuses --rate with as-is)
        return trace
    if mode == "poisson":
        return trace.with_poisson_arrivals(rate, seed)
    return trace.scaled_to_rate(rate)


def chunks(trace: Trace, mode: str, rate: float | None, n: int, seed: int = 0,
           size: int = CHUNK) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(index of the chunk's first request, arrivals, trace rows) for requests 0..n-1."""
    rows = len(trace)
    if not rows or n <= 0:
        return
    if check_arrivals(mode) == "poisson" and rate is not None:
        rng = np.random.default_rng(seed)  # the same draws as Trace.with_poisson_arrivals
        carry, first = 0.0, None
        for start in range(0, n, size):
            gaps = rng.exponential(1.0 / rate, size=min(size, n - start))
            if first is None:
                first = gaps[0]
                sums = np.cumsum(gaps)
            else:
                sums = np.cumsum(np.concatenate(([carry], gaps)))[1:]
            carry = sums[-1]
            idx = np.arange(start, start + len(gaps))
            yield start, sums - first, idx % rows
        return
    timed = arrivals_for(trace, mode, rate, seed)
    base = timed.arrivals - timed.arrivals[0]
    gap = base[-1] / (rows - 1) if rows > 1 and base[-1] > 0 else 1.0 / (rate or trace.rate)
    period = base[-1] + gap  # a copy starts one mean gap after the last arrival
    for start in range(0, n, size):
        idx = np.arange(start, min(start + size, n))
        row = idx % rows
        yield start, base[row] + (idx // rows) * period, row
