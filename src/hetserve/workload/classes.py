"""Request classes: a grid of prompt-length x output-length buckets with a rate each."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hetserve.errors import HetserveError, check_rate
from hetserve.workload.trace import Trace

# Bucket i spans [edge[i], edge[i+1]); lengths past the last edge join the last bucket.
MAX_EDGES = 64  # per axis: a finer grid only slows planning down (256: minutes)
DEFAULT_INPUT_EDGES: tuple[int, ...] = (1, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
DEFAULT_OUTPUT_EDGES: tuple[int, ...] = (1, 16, 32, 64, 128, 256, 512, 1024, 32768)


def _label(lo: int, hi: int) -> str:
    def k(v: int) -> str:
        return f"{v // 1024}k" if v >= 1024 and v % 1024 == 0 else str(v)

    return f"{k(lo)}-{k(hi)}"


@dataclass(frozen=True)
class RequestClass:
    """One bucket of the grid, with what the trace put in it."""

    index: int
    input_range: tuple[int, int]
    output_range: tuple[int, int]
    count: int
    rate: float  # req/s
    mean_input: float
    mean_output: float

    @property
    def name(self) -> str:
        return f"in{_label(*self.input_range)}/out{_label(*self.output_range)}"


@dataclass(frozen=True)
class ClassGrid:
    input_edges: tuple[int, ...] = DEFAULT_INPUT_EDGES
    output_edges: tuple[int, ...] = DEFAULT_OUTPUT_EDGES

    def __post_init__(self) -> None:
        for label, edges in (("input", self.input_edges), ("output", self.output_edges)):
            if len(edges) > MAX_EDGES:
                raise HetserveError(f"--{label}-edges: {len(edges)} edges, expected at most "
                                    f"{MAX_EDGES}")
            if len(edges) < 2 or edges[0] < 1 or edges[-1] > 2**40 \
                    or any(b <= a for a, b in itertools.pairwise(edges)):
                raise HetserveError(
                    f"--{label}-edges: expected at least two increasing lengths >= 1, got {edges}"
                )

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.input_edges) - 1, len(self.output_edges) - 1

    def bucket(self, input_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        """Flat bucket index (input-major) of each request; nothing falls outside the grid."""
        ni, no = self.shape
        bi = np.clip(np.searchsorted(self.input_edges, input_tokens, side="right") - 1, 0, ni - 1)
        bo = np.clip(np.searchsorted(self.output_edges, output_tokens, side="right") - 1, 0, no - 1)
        return bi * no + bo


def parse_edges(text: str | None, default: Sequence[int], option: str) -> tuple[int, ...]:
    if not text:
        return tuple(default)
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise HetserveError(f"{option}: expected comma-separated integers, got '{text}'") from None


def grid_from_options(input_edges: str | None, output_edges: str | None) -> ClassGrid:
    """The class grid from --input-edges / --output-edges text (defaults where not given)."""
    return ClassGrid(parse_edges(input_edges, DEFAULT_INPUT_EDGES, "--input-edges"),
                     parse_edges(output_edges, DEFAULT_OUTPUT_EDGES, "--output-edges"))


@dataclass(frozen=True)
class Workload:
    """A trace grouped into request classes; rates scaled to `rate` when one is given."""

    trace: Trace
    grid: ClassGrid
    classes: tuple[RequestClass, ...]
    request_class: np.ndarray  # per request: position in `classes`
    rate: float

    @property
    def name(self) -> str:
        return self.trace.name


def classify(trace: Trace, grid: ClassGrid | None = None, rate: float | None = None) -> Workload:
    """Group a trace's requests into the non-empty classes of the grid."""
    grid = grid or ClassGrid()
    total_rate = check_rate(rate) if rate is not None else trace.rate
    flat = grid.bucket(trace.input_tokens, trace.output_tokens)
    counts = np.bincount(flat, minlength=grid.shape[0] * grid.shape[1])
    sum_in = np.bincount(flat, weights=trace.input_tokens, minlength=len(counts))
    sum_out = np.bincount(flat, weights=trace.output_tokens, minlength=len(counts))
    no = grid.shape[1]
    classes = []
    position = np.full(len(counts), -1)
    for b in np.flatnonzero(counts):
        bi, bo = divmod(int(b), no)
        position[b] = len(classes)
        classes.append(
            RequestClass(
                index=len(classes),
                input_range=(grid.input_edges[bi], grid.input_edges[bi + 1]),
                output_range=(grid.output_edges[bo], grid.output_edges[bo + 1]),
                count=int(counts[b]),
                rate=total_rate * counts[b] / len(trace),
                mean_input=float(sum_in[b] / counts[b]),
                mean_output=float(sum_out[b] / counts[b]),
            )
        )
    return Workload(trace, grid, tuple(classes), position[flat], total_rate)
