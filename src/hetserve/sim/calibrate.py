"""Compare the performance model with published serving measurements.

Each measurement names an accelerator, model, TP degree, request shape, client concurrency and a
metric (TTFT, inter-token latency, output throughput or end-to-end latency). The benchmarks
behind them run a closed loop of that many clients, each sending its next request as soon as the
last one finishes; this module runs the simulator in closed-loop mode (one replica, that many
clients) and reads off the same metric. Rows without lengths use DEFAULT_SHAPE.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from hetserve.catalog import Accelerator, Catalog
from hetserve.errors import HetserveError, Record, read_csv_records
from hetserve.models import Dtype, ModelSpec, get_model
from hetserve.perf import Deployment
from hetserve.perf.model import check_engine
from hetserve.route import make_router
from hetserve.sim.engine import Engine, Request
from hetserve.sim.simulate import SimFleet, run_closed, run_open
from hetserve.workload.trace import MAX_TOKENS

DEFAULT_SHAPE = (512, 256)  # prompt, output tokens where a measurement does not state them
METRICS = {"ttft": "ms", "itl": "ms", "e2e_latency": "ms", "output_throughput": "tok/s"}
MAX_CONCURRENCY = 4096  # clients simulated per measurement
FIELDS = ("id", "gpu", "n_gpus", "tp", "model", "dtype", "input_tokens", "output_tokens",
          "concurrency", "metric", "value", "unit")


class Measurement(Record):
    """One row of a measurements CSV (columns FIELDS, plus engine and source)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(min_length=1)
    gpu: str = Field(min_length=1)
    n_gpus: int = Field(ge=1)
    tp: int = Field(ge=1)
    model: str = Field(min_length=1)
    dtype: Dtype
    input_tokens: int = Field(default=DEFAULT_SHAPE[0], ge=1, le=MAX_TOKENS)
    output_tokens: int = Field(default=DEFAULT_SHAPE[1], ge=1, le=MAX_TOKENS)
    concurrency: int = Field(ge=1, le=MAX_CONCURRENCY)
    engine: str = ""
    metric: Literal["ttft", "itl", "e2e_latency", "output_throughput"]
    value: float = Field(gt=0)
    unit: str
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Measurement:
        if self.unit != METRICS[self.metric]:
            raise ValueError(f"{self.metric} must be in {METRICS[self.metric]}, got "
                             f"'{self.unit}'")
        if self.n_gpus % self.tp:
            raise ValueError(f"n_gpus {self.n_gpus} is not a multiple of tp {self.tp}")
        return self


@dataclass(frozen=True)
class Point:
    id: str
    metric: str
    predicted: float
    measured: float

    @property
    def error(self) -> float:
        """Signed relative error (predicted - measured) / measured."""
        return (self.predicted - self.measured) / self.measured


def default_data() -> Path:
    return Path(str(resources.files("hetserve.perf") / "data" / "published_measurements.csv"))


def read_measurements(path: Path | str | None = None) -> list[Measurement]:
    path = Path(path) if path else default_data()
    rows = read_csv_records(path, Measurement, FIELDS, lower=("dtype",))
    seen: set[str] = set()
    for r in rows:
        if r.id in seen:
            raise HetserveError(f"{path}: id '{r.id}' appears twice (ids name the rows held "
                                "back and compared)")
        seen.add(r.id)
    return rows


@dataclass(frozen=True)
class LoopResult:
    """What a load generator reads off one load point (closed or open loop)."""

    ttft: float  # mean, s
    itl: float  # mean inter-token latency, s
    e2e_latency: float  # mean, s
    output_throughput: float  # tok/s over the measured window


# A client's next request reaches the engine this long after its last one finished (the
# response's last bytes, then the next request, on a LAN). Any gap at all matters: the engine
# has started its next step by then, so the prompt waits for the step after (as on a real
# engine); with none, every finished request's successor joined the very next step, and the
# simulated closed loop ran TTFT half and ITL 15% above what an emulated engine measured
# over HTTP (tests/test_profile.py).
CLIENT_GAP = 1e-3


def closed_loop(dep: Deployment, clients: int, prompt: int, output: int,
                rounds: int = 4) -> LoopResult:
    """Simulate `clients` users each sending (prompt, output) requests back to back.

    Real clients are not in lockstep: their first requests are spread evenly over the latency of
    one request alone, so that prefills do not all land in the same step. The first `clients`
    completions warm the engine up; the next `rounds * clients` (at least 16) are measured, while
    every client still has a request in flight."""
    alone = float(dep.prefill_time(prompt) + (output - 1) * dep.decode_step_time(1, prompt))
    warmup, measure = clients, max(rounds * clients, 16)
    fleet = SimFleet([Engine(dep)], [[0]])
    run_closed(fleet, make_router("round-robin", fleet), [(prompt, output)], clients,
               total=clients + warmup + measure, stagger=alone, gap=CLIENT_GAP)
    done = fleet.done[warmup:warmup + measure]
    window = max(done[-1].finish - fleet.done[warmup - 1].finish, 1e-9)
    return LoopResult(
        ttft=statistics.fmean(r.ttft for r in done),
        itl=statistics.fmean(r.tpot for r in done) if output > 1 else 0.0,
        e2e_latency=statistics.fmean(r.latency for r in done),
        output_throughput=sum(r.output_tokens for r in done) / window,
    )


def replay(dep: Deployment, sent_at: Sequence[float], measured: Sequence[bool], prompt: int,
           output: int, closed_clients: int | None = None) -> LoopResult:
    """Replay requests sent at these times (seconds) on one replica; the means over the
    `measured` ones, and throughput as hetserve.profile measures it: closed loop (with
    `closed_clients`), clients x tokens per request / mean latency; open loop, the measured
    requests' tokens from the first arrival to the last finish."""
    fleet = SimFleet([Engine(dep)], [[0]])
    requests = [Request(k, float(a), prompt, output) for k, a in enumerate(sent_at)]
    run_open(fleet, make_router("round-robin", fleet), requests)
    if len(fleet.done) < len(requests):
        raise HetserveError(f"{dep.label}: requests of {prompt} + {output} tokens do not fit")
    done = [r for r, m in zip(requests, measured, strict=True) if m]
    latency = statistics.fmean(r.latency for r in done)
    if closed_clients:
        throughput = closed_clients * output / latency
    else:
        throughput = sum(r.output_tokens for r in done) / max(
            max(r.finish for r in done) - min(r.arrival for r in done), 1e-9)
    return LoopResult(
        ttft=statistics.fmean(r.ttft for r in done),
        itl=statistics.fmean(r.tpot for r in done) if output > 1 else 0.0,
        e2e_latency=latency, output_throughput=throughput)


def engine_profile(engine: str) -> str:
    """Which ENGINE_PROFILES entry a measurement's engine column names."""
    text = engine.lower()
    if "trt" in text or "tensorrt" in text or "nim" in text:
        return "trt-llm"
    if "sglang" in text:
        return "sglang"
    found = re.search(r"vllm\s*v?(\d+)\.(\d+)", text)
    if found and (int(found[1]), int(found[2])) < (0, 6):
        return "vllm-v0"
    return "vllm"


def of_engine(rows: list, engine: str | None, data: Path | str | None) -> list:
    """The rows (with an `engine` column) of one engine, all with engine None; none left is
    an error."""
    if engine is None:
        return rows
    check_engine(engine)
    kept = [r for r in rows if engine_profile(r.engine) == engine]
    if not kept:
        raise HetserveError(f"--engine {engine}: no measurement of that engine in "
                            f"{data or default_data()}")
    return kept


def row_hardware(where: str, model: str, gpu: str, catalog: Catalog
                 ) -> tuple[ModelSpec, Accelerator]:
    """The model and accelerator a measured row names (an error naming the row and field)."""
    try:
        spec = get_model(model)
    except HetserveError as exc:
        raise HetserveError(f"{where}: model: {exc}") from None
    try:
        return spec, catalog.get(gpu)
    except HetserveError as exc:
        raise HetserveError(f"{where}: gpu: {exc}") from None


def measured_deployment(m: Measurement, catalog: Catalog) -> Deployment:
    """The deployment a measurement ran on, as the model sees it (an error naming the row if
    it does not fit or the request does not fit its KV cache)."""
    where = f"{m._where} (id {m.id})" if m._where else f"measurement {m.id}"
    model, acc = row_hardware(where, m.model, m.gpu, catalog)
    dep = Deployment(
        model,
        acc,
        tp=m.tp,
        pp=m.n_gpus // m.tp,
        dtype=m.dtype,
        kv_dtype="fp8" if m.dtype == "fp8" else "bf16",
        engine=engine_profile(m.engine),
    )
    if not dep.fits:
        raise HetserveError(f"{where}: {dep.label} does not fit: {dep.why_not()}")
    if m.input_tokens + m.output_tokens > dep.kv_capacity_tokens:
        raise HetserveError(f"{where}: a {m.input_tokens + m.output_tokens}-token "
                            f"request exceeds the KV cache of {dep.label} "
                            f"({dep.kv_capacity_tokens} tokens)")
    return dep


def predict(m: Measurement, catalog: Catalog) -> float:
    """The model's value for a measurement, in the measurement's unit."""
    dep = measured_deployment(m, catalog)
    res = closed_loop(dep, m.concurrency, m.input_tokens, m.output_tokens)
    value = getattr(res, m.metric)
    return value * 1e3 if METRICS[m.metric] == "ms" else value


def calibrate(catalog: Catalog, data: Path | str | None = None,
              engine: str | None = None) -> list[Point]:
    """Model against measurement for every row (with `engine`: the rows of that engine)."""
    rows = of_engine(read_measurements(data), engine, data)
    points = []
    for m in rows:
        try:
            points.append(Point(m.id, m.metric, predict(m, catalog), m.value))
        except HetserveError as exc:
            if m._where:  # the message names the file and line already
                raise
            raise HetserveError(f"{data or default_data()}: {exc}") from None
    return points


def median_abs_error(points: list[Point]) -> float:
    return statistics.median(abs(p.error) for p in points)
