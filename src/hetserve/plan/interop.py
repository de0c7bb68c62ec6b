"""Published problem formats: Mélange's input (formulation A) and the ICML'25 abstract problem
(formulation B), each validated, then mapped onto the same MILP core."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from hetserve.errors import HetserveError, Record, load_record
from hetserve.plan.milp import MAX_REPLICAS, Problem, max_scale, min_cost, replicas_floor

NonNegative = Annotated[float, Field(ge=0)]
Grid = list[list[NonNegative]]


class MelangeGPU(Record):
    model_config = ConfigDict(extra="ignore")

    cost: float = Field(gt=0, description="$/h")
    tputs: Grid | None = Field(default=None, description="max req/s per bucket (0: cannot)")


class MelangeInput(Record):
    """Mélange's solver input: an unknown top-level key is refused (a typo would otherwise
    drop a setting); a GPU entry's keys other than cost and tputs are ignored."""

    gpu_info: dict[str, MelangeGPU] = Field(min_length=1)
    workload_distribution: Grid = Field(min_length=1)
    total_request_rate: float = Field(gt=0)
    slice_factor: int | None = Field(default=None, ge=1, le=1000)

    @model_validator(mode="after")
    def _shapes(self) -> MelangeInput:
        shape = _shape(self.workload_distribution, "workload_distribution")
        if sum(map(sum, self.workload_distribution)) <= 0:
            raise ValueError("workload_distribution: expected some bucket > 0")
        for name, gpu in self.gpu_info.items():
            if gpu.tputs is not None and _shape(gpu.tputs, f"gpu_info.{name}.tputs") != shape:
                raise ValueError(f"gpu_info.{name}.tputs: expected shape {list(shape)} like "
                                 f"workload_distribution, got {list(_shape(gpu.tputs, ''))}")
        return self


def _shape(grid: list[list[float]], where: str) -> tuple[int, int]:
    widths = {len(row) for row in grid}
    if len(widths) != 1 or 0 in widths:
        raise ValueError(f"{where}: expected rows of one non-zero length")
    return len(grid), widths.pop()


class AbstractType(Record):
    price: float = Field(gt=0)
    available: int | None = Field(default=None, ge=0)


class AbstractConfig(Record):
    gpus: dict[str, Annotated[int, Field(ge=1)]] = Field(min_length=1)
    throughput: dict[str, NonNegative] = Field(min_length=1)


class AbstractInput(Record):
    """The ICML'25 form: GPU types, workload demands, configs with measured throughputs."""

    gpu_types: dict[str, AbstractType] = Field(min_length=1)
    workloads: dict[str, Annotated[float, Field(gt=0)]] = Field(min_length=1)
    configs: dict[str, AbstractConfig] = Field(min_length=1)
    budget: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _names(self) -> AbstractInput:
        for cname, cfg in self.configs.items():
            for t in cfg.gpus:
                if t not in self.gpu_types:
                    raise ValueError(f"configs.{cname}.gpus: unknown GPU type '{t}'")
            for w in cfg.throughput:
                if w not in self.workloads:
                    raise ValueError(f"configs.{cname}.throughput: unknown workload '{w}'")
        return self


def solve_melange(path: Path | str, continuous: bool = False) -> dict:
    """Mélange's input: gpu_info {name: {cost, tputs}}, workload_distribution, total_request_rate.

    By default shares follow Mélange's own formulation when the file gives slice_factor (each of
    slice_factor equal slices of a bucket goes wholly to one GPU type), which reproduces Mélange's
    published answers; `continuous` (or no slice_factor) solves the relaxation, formulation A,
    which is never dearer."""
    data = load_record(path, MelangeInput)
    dist = np.asarray(data.workload_distribution, dtype=np.float64)
    total = float(dist.sum())
    if abs(total - 1.0) > 1e-3:  # shares of total_request_rate: any other sum scales the load
        raise HetserveError(f"{path}: workload_distribution: shares add up to {total:g}, "
                            "expected 1")
    shape = dist.shape
    names = list(data.gpu_info)
    cost = [gpu.cost for gpu in data.gpu_info.values()]
    caps = [np.asarray(gpu.tputs if gpu.tputs is not None else np.zeros(shape),
                       dtype=np.float64).ravel() for gpu in data.gpu_info.values()]
    demand = data.total_request_rate * dist.ravel()
    cap = np.array(caps)
    active = demand > 0
    missing = np.nonzero(active & (cap.max(axis=0) <= 0))[0]
    if len(missing):
        bucket = [int(i) for i in np.unravel_index(int(missing[0]), shape)]
        raise HetserveError(f"{path}: no GPU type can serve bucket {bucket} (zero throughput)")
    floor = replicas_floor(cap, demand)
    if floor > MAX_REPLICAS:
        raise HetserveError(f"{path}: total_request_rate {data.total_request_rate:g} needs at "
                            f"least {floor:.3g} GPUs (more than {MAX_REPLICAS:,})")
    slices = None if continuous else data.slice_factor
    p = Problem(names, cost, cap[:, active], demand[active])
    sol = min_cost(p, slices=int(slices) if slices else None)
    if not sol.ok:
        raise HetserveError(f"{path}: solver status {sol.status}")
    shares = np.zeros((len(names), dist.size))
    shares[:, active] = sol.shares
    return {
        "cost": round(sol.cost, 10),
        "gpus": {n: int(y) for n, y in zip(names, sol.replicas, strict=True)},
        "shares": {n: shares[i].reshape(shape).tolist() for i, n in enumerate(names)},
        "solve_seconds": sol.seconds,
        "mode": "continuous" if slices is None else f"slices={int(slices)}",
    }


def solve_abstract(path: Path | str) -> dict:
    """The ICML'25 form: gpu_types {price, available}, workloads {demand}, configs {gpus,
    throughput}, budget. Minimises the makespan exactly (formulation B)."""
    data = load_record(path, AbstractInput)
    tnames, wnames, cnames = list(data.gpu_types), list(data.workloads), list(data.configs)
    usage = np.zeros((len(cnames), len(tnames)))
    cap = np.zeros((len(cnames), len(wnames)))
    for i, cfg in enumerate(data.configs.values()):
        for t, n in cfg.gpus.items():
            usage[i, tnames.index(t)] = n
        for w, h in cfg.throughput.items():
            cap[i, wnames.index(w)] = h
    price = usage @ np.array([data.gpu_types[t].price for t in tnames])
    avail = np.array([np.inf if data.gpu_types[t].available is None
                      else float(data.gpu_types[t].available) for t in tnames])
    demand = np.array([data.workloads[w] for w in wnames])
    p = Problem(cnames, price, cap, demand, wnames, usage, tnames, avail, data.budget)
    missing = [w for j, w in enumerate(wnames) if not (cap[:, j] > 0).any()]
    if missing:
        raise HetserveError(f"{path}: no config has throughput for workload '{missing[0]}'")
    unlimited = (usage > 0) & np.isinf(avail)[None, :]  # [config, type]
    unbounded = [c for i, c in enumerate(cnames) if (cap[i] > 0).any() and unlimited[i].any()]
    if p.budget is None and unbounded:
        raise HetserveError(f"{path}: give a budget, or an 'available' count for every GPU type "
                            f"of config '{unbounded[0]}', else the makespan is 0")
    sol = max_scale(p)
    if not sol.ok or sol.scale <= 0:
        raise HetserveError(f"{path}: no config fits the budget and availability")
    return {
        "makespan": 1.0 / sol.scale,
        "replicas": {c: int(y) for c, y in zip(cnames, sol.replicas, strict=True)},
        "shares": {c: {w: float(sol.shares[i, j]) for j, w in enumerate(wnames)
                       if sol.shares[i, j] > 0}
                   for i, c in enumerate(cnames) if sol.replicas[i] > 0},
        "cost": sol.cost,
        "solve_seconds": sol.seconds,
    }
