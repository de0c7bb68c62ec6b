"""Request traces: arrival time, prompt tokens and generated tokens per request."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from hetserve.errors import HetserveError, check_rate, read_text, suggest

BUNDLED = {
    "azure-conv": "azure_conv.csv",
    "azure-code": "azure_code.csv",
}
AZURE_HEADER = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
MAX_TOKENS = 10_000_000  # a prompt or output longer than this is a broken row, not a request


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival; arrivals in seconds from the first request."""

    name: str
    arrivals: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    models: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.arrivals)

    @property
    def duration(self) -> float:
        """Seconds from first to last arrival; a trace shorter than a second counts as one."""
        span = float(self.arrivals[-1] - self.arrivals[0]) if len(self) > 1 else 0.0
        return max(span, 1.0)

    @property
    def rate(self) -> float:
        """Mean arrival rate, requests per second."""
        return len(self) / self.duration

    def scaled_to_rate(self, rate: float) -> Trace:
        """The same requests with arrival times compressed or stretched to a mean rate."""
        rate = check_rate(rate)
        return replace(self, arrivals=self.arrivals * (self.rate / rate))

    def with_poisson_arrivals(self, rate: float, seed: int = 0) -> Trace:
        """The same requests, in order, arriving as a Poisson process at `rate` req/s."""
        rate = check_rate(rate)
        return replace(self, arrivals=_poisson(np.random.default_rng(seed), rate, len(self)))

    def for_model(self, model: str, match: Callable[[str], bool] | None = None) -> Trace:
        """Requests whose model label is `model` (or passes `match`, e.g. ModelSpec.matches);
        all of them when the trace has no model column. A model with no request is an error
        that lists the labels the trace has."""
        if self.models is None:
            return self
        labels = np.unique(self.models)
        wanted = [x for x in labels if (match(str(x)) if match else str(x) == model)]
        if not wanted:
            shown = ", ".join(str(x) for x in labels[:8]) + (", ..." if len(labels) > 8 else "")
            raise HetserveError(f"{self.name}: no requests for model {model} (the trace's "
                                f"model field has: {shown})")
        keep = np.isin(self.models, wanted)
        return replace(
            self,
            arrivals=self.arrivals[keep] - (self.arrivals[keep][0] if keep.any() else 0.0),
            input_tokens=self.input_tokens[keep],
            output_tokens=self.output_tokens[keep],
            models=self.models[keep],
        )


def _poisson(rng: np.random.Generator, rate: float, n: int) -> np.ndarray:
    """Arrival times of a Poisson process at `rate`, the first at 0."""
    gaps = rng.exponential(1.0 / rate, size=n)
    return np.cumsum(gaps) - gaps[0]


def _finish(name: str, t: list, i: list, o: list, m: list | None) -> Trace:
    if not t:
        raise HetserveError(f"{name}: the trace has no requests")
    arrivals = np.asarray(t, dtype=np.float64)
    order = np.argsort(arrivals, kind="stable")
    arrivals = arrivals[order]
    models = np.asarray(m, dtype=object)[order] if m is not None else None
    return Trace(
        name=name,
        arrivals=arrivals - arrivals[0],
        input_tokens=np.asarray(i, dtype=np.int64)[order],
        output_tokens=np.asarray(o, dtype=np.int64)[order],
        models=models,
    )


def _positive_int(value, where: str, field: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not 0 < number <= MAX_TOKENS or number != int(number):
        raise HetserveError(f"{where}: {field} must be an integer from 1 to {MAX_TOKENS:,}, "
                            f"got {value!r}")
    return int(number)


def _timestamp(value, where: str, field: str = "TIMESTAMP") -> float:
    """Seconds: a finite number, or an ISO-8601 date-time."""
    if isinstance(value, bool):
        number = math.nan
    else:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            try:
                number = np.datetime64(str(value).strip(), "ns").astype(np.int64) / 1e9
            except (ValueError, OverflowError):
                number = math.nan
    if not math.isfinite(number) or abs(number) > 1e12:
        raise HetserveError(f"{where}: {field} must be seconds or an ISO date-time, "
                            f"got {value!r}")
    return number


def read_azure_csv(path: Path | str, name: str | None = None) -> Trace:
    """A trace in the Azure LLM inference schema: TIMESTAMP,ContextTokens,GeneratedTokens."""
    path = Path(path)
    t: list[float] = []
    i: list[int] = []
    o: list[int] = []
    lines = read_text(path).splitlines()
    try:
        reader = csv.reader(lines)
        header = [h.strip() for h in next(reader, [])]
        missing = [h for h in AZURE_HEADER if h not in header]
        if missing:
            raise HetserveError(
                f"{path}: line 1: expected header {','.join(AZURE_HEADER)}, missing {missing[0]}"
            )
        ct, ci, co = (header.index(h) for h in AZURE_HEADER)
        for lineno, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            where = f"{path}: line {lineno}"
            if len(row) < len(header):
                raise HetserveError(f"{where}: expected {len(header)} fields, got {len(row)}")
            t.append(_timestamp(row[ct], where))
            i.append(_positive_int(row[ci], where, "ContextTokens"))
            o.append(_positive_int(row[co], where, "GeneratedTokens"))
    except csv.Error as exc:
        raise HetserveError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    return _finish(name or str(path), t, i, o, None)


def read_jsonl(path: Path | str, name: str | None = None) -> Trace:
    """A JSONL trace: one object per line with timestamp, input_tokens, output_tokens[, model]."""
    path = Path(path)
    t: list[float] = []
    i: list[int] = []
    o: list[int] = []
    m: list[str] = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HetserveError(f"{where}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise HetserveError(f"{where}: nested too deeply") from None
        if not isinstance(row, dict):
            raise HetserveError(f"{where}: expected a JSON object")
        for key in ("timestamp", "input_tokens", "output_tokens"):
            if key not in row:
                raise HetserveError(f"{where}: missing field '{key}'")
        model = row.get("model", "")
        if not isinstance(model, str):
            raise HetserveError(f"{where}: model must be a string, got {model!r}")
        t.append(_timestamp(row["timestamp"], where, "timestamp"))
        i.append(_positive_int(row["input_tokens"], where, "input_tokens"))
        o.append(_positive_int(row["output_tokens"], where, "output_tokens"))
        m.append(model)
    models = m if any(m) else None
    return _finish(name or str(path), t, i, o, models)


def bundled_path(name: str) -> Path:
    return Path(str(resources.files("hetserve.workload") / "data" / BUNDLED[name]))


def load_trace(source: str | Path) -> Trace:
    """A bundled workload by name (azure-conv, azure-code) or a trace file (.csv or .jsonl)."""
    key = str(source).lower()
    if key in BUNDLED:
        return read_azure_csv(bundled_path(key), name=key)
    path = Path(source)
    if not path.exists() and ("/" in str(source) or os.sep in str(source) or path.suffix):
        read_text(path)  # a path, not a name: "cannot read (No such file or directory)"
    if not path.exists():
        raise HetserveError(
            f"unknown workload '{source}'{suggest(str(source), BUNDLED)} (or a .csv/.jsonl trace)"
        )
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return read_jsonl(path, name=str(source))
    return read_azure_csv(path, name=str(source))


def synthetic(
    n: int,
    rate: float,
    input_median: float = 1000.0,
    input_sigma: float = 1.0,
    output_median: float = 128.0,
    output_sigma: float = 0.8,
    max_tokens: int = 32768,
    seed: int = 0,
    name: str = "synthetic",
) -> Trace:
    """Poisson arrivals at `rate` with lognormal prompt and output lengths (for tests)."""
    rng = np.random.default_rng(seed)
    arrivals = _poisson(rng, rate, n)
    lengths = [
        np.clip(np.round(rng.lognormal(np.log(med), sig, size=n)), 1, max_tokens).astype(np.int64)
        for med, sig in ((input_median, input_sigma), (output_median, output_sigma))
    ]
    return Trace(name, arrivals, lengths[0], lengths[1])
