"""Engine step times measured on a GPU, and the step-time coefficients fitted to them
(docs/design.md, section 5.8).

A step-times CSV holds one row per measured step shape: a model on `tp` devices of one
accelerator runs

- `prefill`: `batch` prompts of `tokens` tokens each, from an empty cache, in one forward pass;
- `decode`: one token for each of `batch` sequences that hold `tokens` tokens of context;
- `linear`: only the linear layers (the matmuls of every transformer layer) on `tokens` tokens,
  as operator-level profiles such as Vidur's measure them;

and `seconds` is the step's measured time (a median over repeats). The performance model
predicts the same step with `Deployment.step_time`, so the fit is a direct least-squares fit of
the deployment's four coefficients (eta_compute, eta_memory, step overhead, host time per
sequence) to the log step times: no simulator in the loop, unlike the end-to-end fit of
`profile.fit`. A row's `device` and `software` columns record what measured it (the GPU's
name, the driver, CUDA and framework versions).

Which rows pin which coefficient: a large prefill is compute-bound (eta_compute), a small-batch
decode step reads every weight (eta_memory plus the overhead), and decode steps across batch
sizes and contexts separate the overhead, the host time per sequence and the KV reads. `linear`
rows carry no overhead, so a file of only those fits the two efficiencies alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field

from hetserve.catalog import Catalog, Fit
from hetserve.errors import HetserveError, Record, csv_columns, read_csv_records
from hetserve.models import Dtype
from hetserve.perf import Deployment
from hetserve.profile.file import FitReport
from hetserve.profile.fit import (
    HOLD_BACK,
    DeploymentFit,
    as_fit,
    better_or_model,
    current_fit,
    median_abs,
    with_fit,
)
from hetserve.sim.calibrate import Point, engine_profile, row_hardware
from hetserve.workload.trace import MAX_TOKENS

STEP_FIELDS = ("id", "gpu", "model", "dtype", "tp", "phase", "batch", "tokens", "seconds")
# bounds of (eta_compute, eta_memory, overhead ms, us per sequence)
LOWER = np.array([1e-3, 1e-3, 0.0, 0.0])
UPPER = np.array([1.0, 1.0, 1000.0, 20_000.0])
MIN_STEP_ROWS = 4
MAX_BATCH = 65_536  # sequences in one step


class StepTime(Record):
    """One row of a step-times CSV (columns STEP_FIELDS, then optional ones)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(min_length=1)
    gpu: str = Field(min_length=1, description="accelerator name in the catalog")
    model: str = Field(min_length=1)
    dtype: Dtype
    tp: int = Field(ge=1)
    engine: str = "vllm"  # as measurements name it ("vLLM 0.8", "sglang"): engine_profile
    phase: Literal["prefill", "decode", "linear"]
    batch: int = Field(ge=1, le=MAX_BATCH, description="sequences in the step (linear: 1)")
    tokens: int = Field(ge=1, le=MAX_TOKENS, description="prefill: prompt tokens per sequence; "
                        "decode: context tokens per sequence; linear: tokens in the step")
    seconds: float = Field(ge=1e-7, le=3600.0, description="the step's time, median over "
                           "repeats (0.1 us to an hour)")
    device: str = Field(default="", description="what measured it: the GPU's own name")
    software: str = Field(default="", description="driver, CUDA, framework versions")
    source: str = ""

    @property
    def shape(self) -> str:
        what = {"prefill": "prompt", "decode": "context", "linear": "tokens"}[self.phase]
        return f"{self.phase} batch {self.batch} {what} {self.tokens}"


def is_step_file(path: Path | str) -> bool:
    """Whether a CSV is a step-times file (it has the `phase` and `seconds` columns)."""
    columns = csv_columns(path)
    return "phase" in columns and "seconds" in columns


def read_step_times(path: Path | str) -> list[StepTime]:
    rows = read_csv_records(path, StepTime, STEP_FIELDS, lower=("dtype", "phase"))
    seen: set[str] = set()
    for r in rows:
        if r.source.startswith("dry run"):
            raise HetserveError(f"{path}: row {r.id} is from a dry run ({r.source}); measure "
                                "on the GPU itself")
        if r.id in seen:
            raise HetserveError(f"{path}: id '{r.id}' appears twice (ids name the rows held "
                                "back and compared)")
        seen.add(r.id)
    return rows


def step_deployment(row: StepTime, catalog: Catalog) -> Deployment:
    """The deployment a row measured (an error naming the row if it does not fit)."""
    where = f"{row._where} (id {row.id})" if row._where else f"step time {row.id}"
    model, acc = row_hardware(where, row.model, row.gpu, catalog)
    try:
        dep = Deployment(model, acc, tp=row.tp, dtype=row.dtype,
                         kv_dtype="fp8" if row.dtype == "fp8" else "bf16",
                         engine=engine_profile(row.engine))
    except HetserveError as exc:
        raise HetserveError(f"{where}: {exc}") from None
    if not dep.fits:
        raise HetserveError(f"{where}: {dep.label} does not fit: {dep.why_not()}")
    return dep


def predict_steps(dep: Deployment, rows: Sequence[StepTime]) -> np.ndarray:
    """The model's seconds for each row's step, in one vectorised call per phase."""
    out = np.zeros(len(rows))
    phase = np.array([r.phase for r in rows])
    b = np.array([r.batch for r in rows], dtype=np.float64)
    n = np.array([r.tokens for r in rows], dtype=np.float64)
    pre, dec, lin = phase == "prefill", phase == "decode", phase == "linear"
    if pre.any():
        pairs = n[pre] * n[pre] / 2.0
        out[pre] = dep.step_time(b[pre] * n[pre], b[pre], prefill_pairs=b[pre] * pairs,
                                 chunk=n[pre], chunk_pairs=pairs)
    if dec.any():
        out[dec] = dep.step_time(b[dec], b[dec], decode_ctx=b[dec] * n[dec])
    if lin.any():  # the layers' matmuls alone: no LM head, attention or overhead
        a_t, _, w, *_ = dep.coefficients
        m = dep.model
        w_layers = w * m.layers * m.layer_params / m.matmul_params
        out[lin] = np.maximum(a_t * n[lin], w_layers)
    return out


def step_errors(dep: Deployment, rows: Sequence[StepTime]) -> np.ndarray:
    """Signed relative errors (predicted - measured) / measured."""
    measured = np.array([r.seconds for r in rows])
    return predict_steps(dep, rows) / measured - 1.0


def held_back_rows(rows: Sequence[StepTime], hold_back: float) -> set[str]:
    """Ids of every k-th row (k = 1 / hold_back) in order of phase and shape: held back from
    the fit to show it generalises."""
    if hold_back <= 0 or len(rows) < 2 * MIN_STEP_ROWS:
        return set()
    step = max(2, round(1.0 / hold_back))
    ordered = sorted(rows, key=lambda r: (r.phase, r.batch, r.tokens, r.id))
    return {r.id for k, r in enumerate(ordered) if k % step == step - 1}


def fit_steps(dep: Deployment, rows: Sequence[StepTime], hold_back: float = HOLD_BACK
              ) -> tuple[Fit, FitReport]:
    """The coefficients that best reproduce the step times (least squares on log seconds),
    fitted on all but a held-back share of the rows, with the median |error| before (the
    model's coefficients) and after, on both parts. With only `linear` rows, the overhead and
    the host time keep the model's values."""
    from scipy.optimize import least_squares

    held = held_back_rows(rows, hold_back)
    train = [r for r in rows if r.id not in held]
    test = [r for r in rows if r.id in held]
    free = 2 if all(r.phase == "linear" for r in train) else 4
    if len(train) < max(free, MIN_STEP_ROWS):
        raise HetserveError(f"{len(train)} step times to fit {free} coefficients: measure more "
                            "shapes (batch sizes, prompt lengths, contexts)")
    start = current_fit(dep)
    x0 = np.array([start.eta_compute, start.eta_memory, start.step_overhead_ms,
                   start.seq_host_us])
    scale = np.array([1.0, 1.0, 1.0, 100.0])
    log_measured = np.log([r.seconds for r in train])

    def full(z: np.ndarray) -> np.ndarray:
        x = x0.copy()
        x[:free] = z * scale[:free]
        return np.clip(x, LOWER, UPPER)

    def residuals(z: np.ndarray) -> np.ndarray:
        d = with_fit(dep, as_fit(dep, full(z)))
        return np.log(predict_steps(d, train)) - log_measured

    lo, hi = (LOWER / scale)[:free], (UPPER / scale)[:free]
    # the rooflines' max() makes the cost piecewise smooth: start from the model's values and
    # from a point past the other side of the knees, keep the better
    starts = [x0, np.array([x0[0] / 2, x0[1] / 2, 0.2, 100.0])]
    found = min((least_squares(residuals, np.clip(z / scale, LOWER / scale, UPPER / scale
                                                  )[:free], bounds=(lo, hi), x_scale="jac",
                                 loss="soft_l1", f_scale=0.05)
                 for z in starts), key=lambda r: r.cost)
    fitted = as_fit(dep, full(found.x))
    after = with_fit(dep, fitted)
    report = FitReport(
        before=median_abs(step_errors(dep, train)), after=median_abs(step_errors(after, train)),
        held_back_before=median_abs(step_errors(dep, test)) if test else None,
        held_back_after=median_abs(step_errors(after, test)) if test else None,
        held_back=sorted(r.shape for r in test))
    return better_or_model(dep, fitted, report)


def _groups(rows: Sequence[StepTime], catalog: Catalog) -> dict[Deployment, list[StepTime]]:
    groups: dict[Deployment, list[StepTime]] = {}
    for r in rows:
        groups.setdefault(step_deployment(r, catalog), []).append(r)
    return groups


def compare_steps(rows: Sequence[StepTime], catalog: Catalog) -> list[Point]:
    """The model's step time against each measured one (ms)."""
    out = []
    for dep, group in _groups(rows, catalog).items():
        predicted = predict_steps(dep, group)
        out += [Point(r.id, f"{r.phase} step", p * 1e3, r.seconds * 1e3)
                for r, p in zip(group, predicted, strict=True)]
    return out


def fit_step_times(rows: Sequence[StepTime], catalog: Catalog, hold_back: float = HOLD_BACK
                   ) -> list[DeploymentFit]:
    """Fit every deployment of a step-times file that has at least MIN_STEP_ROWS rows; the
    rest are listed unfitted."""
    out = []
    for dep, group in _groups(rows, catalog).items():
        label = f"{dep.label} {dep.model.name} {dep.weight_dtype} steps"
        if len(group) < MIN_STEP_ROWS:
            out.append(DeploymentFit(label, dep.accelerator.name, len(group), None, None))
            continue
        got, report = fit_steps(dep, group, hold_back)
        out.append(DeploymentFit(label, dep.accelerator.name, len(group), got, report))
    return out
