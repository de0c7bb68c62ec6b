"""What a simulation measured: summaries of the run, per replica group and per class (from the
replay's Tally: exact counts, latency percentiles exact up to a million requests and from
t-digests past that), and per-request latencies when the replay kept them.

A request meets its SLO when its TTFT and its TPOT (mean time per output token after the first)
are both within its model's limits; requests no replica could hold count as misses. Cost is the
plan's hourly price over the span of traffic the requests stand for (first to last arrival, plus
one mean gap; `billed_seconds`), as a fleet serving that rate steadily pays for it: the drain
after the last arrival is not charged. A short replay of a trace still shows the rate of the
stretch it replays (`offered_rate`): azure-conv's first 500 requests come at 3.5 req/s of a plan
for 5, so tokens per dollar read 7.8M of the plan's 12.7M, 12.6M over 20,000. Utilisation is
the share of the whole window (first arrival to last completion, `simulated_seconds`) a replica
is running a step (any request in flight); kv_usage the mean share of its KV cache held
(vllm:kv_cache_usage_perc).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hetserve.errors import HetserveError
from hetserve.sim.tally import Tally

REQUEST_COLUMNS = ("model", "group", "cls", "replica", "arrival", "input_tokens",
                   "output_tokens", "scheduled", "first_token", "finish", "preemptions")


@dataclass(frozen=True)
class GroupInfo:
    id: str
    model: int  # index into SimResult.models
    label: str  # accelerator and parallelism
    replicas: int
    usd_per_hour: float
    busy_seconds: float  # summed over the group's replicas
    kv_block_seconds: float  # KV blocks held, integrated over time, summed over replicas
    kv_blocks: int  # KV blocks of one replica
    preemptions: int


@dataclass
class SimResult:
    models: list[str]
    classes: list[list[str]]  # per model: class names
    slo: list[tuple[float, float]]  # per model: (ttft, tpot) limits, s
    groups: list[GroupInfo]
    tally: Tally  # counters and latency quantiles per (model, group, class)
    # per request, when the replay kept them (simulate(per_request=True)): columns "model",
    # "group" (-1: rejected, no replica could hold it), "cls" (-1: a class the plan does not
    # list), "replica", "arrival", "input_tokens", "output_tokens", "scheduled",
    # "first_token", "finish" (nan: never), "preemptions"
    requests: dict[str, np.ndarray] | None = None
    router: str = "plan"
    arrivals: str = "trace"
    wall_seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    # per model: how much slower than modelled its engines stepped (plan --step-margin)
    step_margin: dict[str, float] = field(default_factory=dict)

    # ---- per request -------------------------------------------------------------------
    def __len__(self) -> int:
        return self.tally.requests

    def column(self, name: str) -> np.ndarray:
        if self.requests is None:
            raise HetserveError("per-request results were not kept: simulate with "
                                "per_request=True (--per-request)")
        return self.requests[name]

    def __getattr__(self, name: str) -> np.ndarray:  # model, cls, group, arrival, finish, ...
        if name in REQUEST_COLUMNS:
            return self.column(name)
        raise AttributeError(name)

    @property
    def completed(self) -> np.ndarray:
        return ~np.isnan(self.finish)

    @property
    def ttft(self) -> np.ndarray:
        return self.first_token - self.arrival

    @property
    def tpot(self) -> np.ndarray:
        """Mean time per output token after the first; 0 for one-token outputs."""
        steps = np.maximum(self.output_tokens - 1, 1)
        return np.where(self.output_tokens > 1, (self.finish - self.first_token) / steps, 0.0)

    @property
    def e2e(self) -> np.ndarray:
        return self.finish - self.arrival

    @property
    def queueing(self) -> np.ndarray:
        return self.scheduled - self.arrival

    @property
    def met(self) -> np.ndarray:
        """Per request: completed within both SLO limits of its model."""
        limits = np.array(self.slo, dtype=np.float64).reshape(-1, 2)
        ttft_lim, tpot_lim = limits[self.model, 0], limits[self.model, 1]
        with np.errstate(invalid="ignore"):
            return self.completed & (self.ttft <= ttft_lim) & (self.tpot <= tpot_lim)

    # ---- window and money --------------------------------------------------------------
    @property
    def attainment(self) -> float:
        """The share of all requests that met their SLO (nan: none)."""
        return self.tally.stats()["slo_attainment"]

    def model_attainment(self) -> dict[str, float]:
        """Per model with requests in the run: the share of them that met its SLO."""
        out = {name: self.tally.stats(lambda key, m=m: key[0] == m)["slo_attainment"]
               for m, name in enumerate(self.models)}
        return {name: share for name, share in out.items() if not math.isnan(share)}

    @property
    def window(self) -> float:
        """Seconds from the first arrival to the last completion."""
        return self.tally.window

    @property
    def usd_per_hour(self) -> float:
        return sum(g.usd_per_hour for g in self.groups)

    @property
    def billed(self) -> float:
        """Seconds the fleet is paid for: the span of traffic (Tally.span)."""
        return self.tally.span

    @property
    def cost_usd(self) -> float:
        return self.usd_per_hour * self.billed / 3600.0

    # ---- summaries ---------------------------------------------------------------------
    def summary(self) -> dict:
        """The whole run: the keys `hetserve simulate --json` prints at its top level."""
        out = self.tally.stats()
        everything = self.tally.total()
        window = self.window
        replicas = sum(g.replicas for g in self.groups)
        out.update(
            rejected=self.tally.total(lambda key: key[1] < 0).requests,
            unplanned=self.tally.total(lambda key: key[2] < 0).requests,
            simulated_seconds=window,
            billed_seconds=self.billed,
            offered_rate=len(self) / self.billed if self.billed else 0.0,
            output_tokens_per_second=everything.output_tokens / self.billed
            if self.billed else 0.0,
            utilisation=sum(g.busy_seconds for g in self.groups) / (replicas * window)
            if replicas and window else 0.0,
            kv_usage=sum(g.kv_block_seconds / g.kv_blocks for g in self.groups)
            / (replicas * window) if replicas and window else 0.0,
            usd_per_hour=self.usd_per_hour,
            cost_usd=self.cost_usd,
            tokens_per_dollar=everything.tokens / self.cost_usd if self.cost_usd > 0 else 0.0,
            router=self.router,
            arrivals=self.arrivals,
            wall_seconds=self.wall_seconds,
            requests_per_wall_second=len(self) / self.wall_seconds if self.wall_seconds else 0.0,
            exact_percentiles=self.tally.exact,
            step_margin=self.step_margin,
        )
        return out | self.extra

    def group_rows(self) -> list[dict]:
        window = self.window or 1e-9
        rows = []
        for k, g in enumerate(self.groups):
            row = {"group": g.id, "model": self.models[g.model], "config": g.label,
                   "replicas": g.replicas}
            row |= self.tally.stats(lambda key, k=k: key[1] == k)
            row["utilisation"] = g.busy_seconds / (g.replicas * window)
            row["kv_usage"] = g.kv_block_seconds / (g.kv_blocks * g.replicas * window)
            row["preemptions"] = g.preemptions
            row["usd_per_hour"] = g.usd_per_hour
            row["cost_usd"] = g.usd_per_hour * self.billed / 3600.0
            rows.append(row)
        return rows

    def class_rows(self) -> list[dict]:
        rows = []
        for m, names in enumerate(self.classes):
            for c, name in [*enumerate(names), (-1, "unplanned")]:
                stats = self.tally.stats(lambda key, m=m, c=c: key[0] == m and key[2] == c)
                if not stats["requests"]:
                    continue
                label = name if len(self.models) == 1 else f"{self.models[m]}:{name}"
                rows.append({"class": label} | stats)
        return rows

    def as_dict(self) -> dict:
        return self.summary() | {"groups": self.group_rows(), "classes": self.class_rows()}

    def per_request(self) -> dict[str, list]:
        """Columns of per-request results (for --per-request CSV)."""
        return {
            "model": [self.models[m] for m in self.model],
            "class": [self.classes[m][c] if c >= 0 else "unplanned"
                      for m, c in zip(self.model, self.cls, strict=True)],
            "group": [self.groups[g].id if g >= 0 else "rejected" for g in self.group],
            "replica": self.replica.tolist(),
            "arrival": self.arrival.tolist(),
            "input_tokens": self.input_tokens.tolist(),
            "output_tokens": self.output_tokens.tolist(),
            "queueing": self.queueing.tolist(),
            "ttft": self.ttft.tolist(),
            "tpot": self.tpot.tolist(),
            "e2e": self.e2e.tolist(),
            "preemptions": self.preemptions.tolist(),
            "met_slo": self.met.tolist(),
        }
