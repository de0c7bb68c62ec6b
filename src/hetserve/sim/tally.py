"""What a replay measured, in memory that does not grow with the trace.

Requests are tallied per cell (model, replica group, class) as they finish: exact counters
(requests, completed, within SLO, preemptions, tokens) and the latencies (TTFT, TPOT, e2e,
queueing). Latencies are kept as values while a tally holds at most EXACT_VALUES requests, so
percentiles of runs that size are exact; past it every cell turns its values into a t-digest
(fastdigest: mergeable, most accurate in the tails), and memory stays flat however long the
trace. Tallies merge: counters add, values concatenate, digests merge. A replay split across
processes therefore adds up to the counts one process makes, exactly.

A request meets its SLO when it completed with TTFT and TPOT (mean time per output token after
the first; 0 for one-token outputs) within its model's limits; a request no replica could hold
(group -1) counts as a miss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from fastdigest import TDigest

METRICS = ("ttft", "tpot", "e2e", "queue")
PERCENTILES = (50, 90, 99)
EXACT_VALUES = 1_000_000  # requests a tally keeps every latency of (32 MB); past it, digests
COUNTERS = ("requests", "completed", "met", "preemptions", "tokens", "output_tokens")


class Quantiles:
    """One latency's values: exact (a list of arrays) until `sketch()`, then a t-digest."""

    __slots__ = ("parts", "digest", "n")

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.digest: TDigest | None = None
        self.n = 0

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        self.n += len(values)
        if self.digest is None:
            self.parts.append(np.asarray(values, dtype=np.float64))
        else:
            self.digest.batch_update(values)

    def sketch(self) -> None:
        if self.digest is None:
            self.digest = TDigest.from_values(np.concatenate(self.parts)) if self.parts \
                else TDigest()
            self.parts = []

    def merge(self, other: Quantiles) -> None:
        if other.digest is not None:
            self.sketch()
            self.digest.merge_inplace(other.digest)
        elif self.digest is not None:
            if other.parts:
                self.digest.batch_update(np.concatenate(other.parts))
        else:
            self.parts += other.parts
        self.n += other.n

    def percentile(self, q: float) -> float:
        if not self.n:
            return math.nan
        if self.digest is not None:
            return float(self.digest.quantile(q / 100.0))
        if len(self.parts) > 1:  # once: later calls read the joined array
            self.parts = [np.concatenate(self.parts)]
        return float(np.percentile(self.parts[0], q))

    def __getstate__(self):  # a digest travels as bytes between processes
        return (self.parts, self.digest.to_bytes() if self.digest is not None else None, self.n)

    def __setstate__(self, state) -> None:
        self.parts, digest, self.n = state
        self.digest = TDigest.from_bytes(digest) if digest is not None else None


@dataclass
class Cell:
    requests: int = 0
    completed: int = 0
    met: int = 0
    preemptions: int = 0
    tokens: int = 0  # prompt + output tokens of the completed requests
    output_tokens: int = 0  # of the completed requests
    latency: dict[str, Quantiles] = field(default_factory=lambda: {m: Quantiles()
                                                                   for m in METRICS})

    def merge(self, other: Cell) -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for m in METRICS:
            self.latency[m].merge(other.latency[m])


class Tally:
    """Cells keyed (model, group, class), and the span of the run (first arrival to last
    completion)."""

    def __init__(self, slo: Sequence[tuple[float, float]]) -> None:
        self.slo = [tuple(map(float, s)) for s in slo]
        self.cells: dict[tuple[int, int, int], Cell] = {}
        self.first_arrival = math.inf
        self.last_arrival = -math.inf
        self.last_finish = -math.inf
        self.exact = True  # latencies kept as values (percentiles exact)

    @property
    def requests(self) -> int:
        return sum(c.requests for c in self.cells.values())

    def add(self, model: int, group: np.ndarray, cls: np.ndarray, arrival: np.ndarray,
            input_tokens: np.ndarray, output_tokens: np.ndarray, scheduled: np.ndarray,
            first_token: np.ndarray, finish: np.ndarray, preemptions: np.ndarray) -> None:
        """Tally requests of one model (arrays, one entry per request; nan times: never
        finished, as for requests no replica could hold)."""
        if not len(arrival):
            return
        self.first_arrival = min(self.first_arrival, float(arrival.min()))
        self.last_arrival = max(self.last_arrival, float(arrival.max()))
        done = ~np.isnan(finish)
        if done.any():
            self.last_finish = max(self.last_finish, float(finish[done].max()))
        ttft_lim, tpot_lim = self.slo[model]
        ttft = first_token - arrival
        multi = output_tokens > 1
        tpot = np.where(multi, (finish - first_token) / np.maximum(output_tokens - 1, 1), 0.0)
        with np.errstate(invalid="ignore"):
            met = done & (ttft <= ttft_lim) & (tpot <= tpot_lim)
        values = {"ttft": ttft, "tpot": tpot, "e2e": finish - arrival,
                  "queue": scheduled - arrival}
        pairs, inverse = np.unique(np.stack([group, cls], axis=1), axis=0, return_inverse=True)
        order = np.argsort(inverse.ravel(), kind="stable")
        bounds = np.searchsorted(inverse.ravel()[order], np.arange(len(pairs) + 1))
        for (g, c), lo, hi in zip(pairs.tolist(), bounds[:-1], bounds[1:], strict=True):
            sel = order[lo:hi]
            cell = self.cells.setdefault((model, g, c), Cell())
            d = sel[done[sel]]
            cell.requests += len(sel)
            cell.completed += len(d)
            cell.met += int(met[sel].sum())
            cell.preemptions += int(preemptions[sel].sum())
            cell.tokens += int(input_tokens[d].sum() + output_tokens[d].sum())
            cell.output_tokens += int(output_tokens[d].sum())
            for m in METRICS:
                cell.latency[m].add(values[m][d[multi[d]]] if m == "tpot" else values[m][d])
        self._bound()

    def merge(self, other: Tally) -> None:
        for key, cell in other.cells.items():
            self.cells.setdefault(key, Cell()).merge(cell)
        self.first_arrival = min(self.first_arrival, other.first_arrival)
        self.last_arrival = max(self.last_arrival, other.last_arrival)
        self.last_finish = max(self.last_finish, other.last_finish)
        self.exact = self.exact and other.exact
        self._bound()

    def _bound(self) -> None:
        """Past EXACT_VALUES requests (or merged with a sketched tally), every cell sketches."""
        if self.exact and self.requests <= EXACT_VALUES:
            return
        self.exact = False
        for cell in self.cells.values():
            for q in cell.latency.values():
                q.sketch()

    @property
    def window(self) -> float:
        """Seconds from the first arrival to the last completion (the last arrival when none
        completed)."""
        if self.first_arrival == math.inf:
            return 0.0
        end = self.last_finish if self.last_finish > -math.inf else self.last_arrival
        return float(max(end - self.first_arrival, 1e-9))

    @property
    def span(self) -> float:
        """Seconds of steady traffic the requests stand for: first to last arrival, plus one
        mean gap between arrivals (n arrivals mark n gaps), without the drain after the last
        arrival; the whole window where fewer than two arrived at distinct times."""
        if self.requests < 2 or not self.last_arrival > self.first_arrival:
            return self.window
        gaps = self.last_arrival - self.first_arrival
        return float(gaps * self.requests / (self.requests - 1))

    def total(self, keep: Callable[[tuple[int, int, int]], bool] = lambda key: True) -> Cell:
        """The cells whose key passes `keep`, merged (into a new cell)."""
        out = Cell()
        for key, cell in self.cells.items():
            if keep(key):
                out.merge(cell)
        return out

    def stats(self, keep: Callable[[tuple[int, int, int]], bool] = lambda key: True) -> dict:
        """Requests, completions, SLO attainment, latency percentiles, preemptions and goodput
        (req/s within the SLO) of the cells `keep` passes."""
        cell = self.total(keep)
        out: dict = {"requests": cell.requests, "completed": cell.completed,
                     "slo_attainment": cell.met / cell.requests if cell.requests else math.nan}
        for m in METRICS:
            for q in PERCENTILES:
                out[f"{m}_p{q}"] = cell.latency[m].percentile(q)
        out["preemptions"] = cell.preemptions
        out["goodput"] = cell.met / self.span if self.span else 0.0
        return out

    def keys(self) -> Iterable[tuple[int, int, int]]:
        return self.cells.keys()
