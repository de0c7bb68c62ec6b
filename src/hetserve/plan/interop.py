"""Published problem formats: Mélange's input (formulation A) and the ICML'25 abstract problem
(formulation B), each mapped onto the same MILP core."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hetserve.errors import HetserveError, load_json
from hetserve.plan.milp import Problem, max_scale, min_cost


def _read_json(path: Path | str) -> dict:
    data = load_json(path)
    if not isinstance(data, dict):
        raise HetserveError(f"{path}: expected a JSON object")
    return data


def _need(data: dict, key: str, path, kind=None):
    if key not in data:
        raise HetserveError(f"{path}: missing field '{key}'")
    if kind is not None and not isinstance(data[key], kind):
        raise HetserveError(f"{path}: field '{key}' must be a {kind.__name__}")
    return data[key]


def solve_melange(path: Path | str, continuous: bool = False) -> dict:
    """Mélange's input: gpu_info {name: {cost, tputs}}, workload_distribution, total_request_rate.

    By default shares follow Mélange's own formulation when the file gives slice_factor (each of
    slice_factor equal slices of a bucket goes wholly to one GPU type), which reproduces Mélange's
    published answers; `continuous` (or no slice_factor) solves the relaxation, formulation A,
    which is never dearer."""
    data = _read_json(path)
    gpus = _need(data, "gpu_info", path, dict)
    dist = np.asarray(_need(data, "workload_distribution", path, list), dtype=np.float64)
    rate = float(_need(data, "total_request_rate", path))
    shape = dist.shape
    names, cost, caps = [], [], []
    for name, info in gpus.items():
        if "cost" not in info:
            raise HetserveError(f"{path}: gpu_info.{name}: missing field 'cost'")
        tputs = np.asarray(info.get("tputs", np.zeros(shape)), dtype=np.float64)
        if tputs.shape != shape:
            raise HetserveError(f"{path}: gpu_info.{name}.tputs: expected shape {list(shape)} "
                                f"like workload_distribution, got {list(tputs.shape)}")
        names.append(name)
        cost.append(float(info["cost"]))
        caps.append(np.nan_to_num(tputs).ravel())
    demand = rate * dist.ravel()
    cap = np.array(caps)
    active = demand > 0
    missing = np.nonzero(active & (cap.max(axis=0) <= 0))[0]
    if len(missing):
        bucket = list(np.unravel_index(int(missing[0]), shape))
        raise HetserveError(f"{path}: no GPU type can serve bucket {bucket} (zero throughput)")
    slices = None if continuous else data.get("slice_factor")
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
    data = _read_json(path)
    types = _need(data, "gpu_types", path, dict)
    workloads = _need(data, "workloads", path, dict)
    configs = _need(data, "configs", path, dict)
    budget = data.get("budget")
    tnames, wnames, cnames = list(types), list(workloads), list(configs)
    usage = np.zeros((len(cnames), len(tnames)))
    cap = np.zeros((len(cnames), len(wnames)))
    for i, (cname, cfg) in enumerate(configs.items()):
        for t, n in _need(cfg, "gpus", f"{path}: configs.{cname}", dict).items():
            if t not in types:
                raise HetserveError(f"{path}: configs.{cname}.gpus: unknown GPU type '{t}'")
            usage[i, tnames.index(t)] = n
        for w, h in _need(cfg, "throughput", f"{path}: configs.{cname}", dict).items():
            if w not in workloads:
                raise HetserveError(f"{path}: configs.{cname}.throughput: unknown workload '{w}'")
            cap[i, wnames.index(w)] = h
    price = usage @ np.array([float(_need(types[t], "price", f"{path}: gpu_types.{t}"))
                              for t in tnames])
    avail = np.array([float(types[t].get("available", np.inf)) for t in tnames])
    demand = np.array([float(workloads[w]) for w in wnames])
    p = Problem(cnames, price, cap, demand, wnames, usage, tnames, avail,
                float(budget) if budget is not None else None)
    if p.budget is None and not np.isfinite(avail).any():
        raise HetserveError(f"{path}: give a budget or availability, else the makespan is 0")
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
