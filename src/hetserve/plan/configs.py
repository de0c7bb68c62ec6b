"""Deployment configs per model: accelerator x TP (within a node) x PP (dividing the layers),
memory-feasible, with per-class capacity under the model's SLO; dominated configs dropped."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hetserve.catalog import Catalog
from hetserve.models import ModelSpec
from hetserve.perf import SLO, Deployment
from hetserve.perf.capacity import class_capacities
from hetserve.perf.model import TP_DEGREES
from hetserve.pool import cores, run_all
from hetserve.workload import Workload

MAX_PP = 8
PIECE_DEPLOYMENTS = 64  # deployments a worker measures at least (measure_all)
# Engine knobs the planner chooses per config: (max_num_batched_tokens, max_num_seqs). Small
# chunks bound how much one prompt's prefill stretches the steps of requests decoding beside
# it (long prompts under a tight TPOT); large ones prefill with fewer weight reads.
ENGINE_KNOBS: tuple[tuple[int, int], ...] = ((8192, 256), (2048, 256), (512, 256), (8192, 1024))


@dataclass(frozen=True)
class ModelDemand:
    """One model to serve: its request classes (with rates) and its SLO."""

    model: ModelSpec
    workload: Workload
    slo: SLO
    dtype: str | None = None
    max_devices: int | None = None  # per replica (tp x pp)
    # per class: over-provisioning for arrivals burstier than Poisson (workload.burst); empty:
    # none
    burst: tuple[float, ...] = ()
    engine: str = "vllm"  # the serving engine (perf.model.ENGINE_PROFILES)
    attainment: float = 1.0  # share of requests that must meet the SLO; the rest may not
    # capacities as if every step took (1 + step_margin) x the modelled time (Deployment)
    step_margin: float = 0.0

    def class_burst(self, w: int) -> float:
        return self.burst[w] if self.burst else 1.0

    @property
    def tail_share(self) -> np.ndarray:
        """Per class: its share of the model's requests."""
        counts = np.array([c.count for c in self.workload.classes], dtype=np.float64)
        return counts / counts.sum()

    @property
    def tail_classes(self) -> np.ndarray:
        """Classes small enough to be served best effort: each within the slack alone."""
        return np.nonzero(self.tail_share <= 1.0 - self.attainment + 1e-12)[0]


@dataclass(frozen=True)
class Config:
    model: str
    deployment: Deployment
    cap: np.ndarray  # req/s per replica for each class of its model
    tail: np.ndarray  # req/s per replica without a latency promise (tail classes only, else 0)

    @property
    def name(self) -> str:
        return f"{self.model} @ {self.deployment.label}"


def pp_degrees(model: ModelSpec) -> list[int]:
    return [p for p in range(1, MAX_PP + 1) if model.layers % p == 0]


def _dominated(cfgs: list[Config]) -> list[bool]:
    """c is dominated by c' of the same accelerator with no more devices and at least its
    capacity on every class (strictly better somewhere, or equal and listed earlier)."""
    out = np.zeros(len(cfgs), dtype=bool)
    accs = [c.deployment.accelerator.name for c in cfgs]
    for acc in dict.fromkeys(accs):
        idx = np.array([i for i, a in enumerate(accs) if a == acc])
        m = np.array([np.r_[cfgs[i].cap, cfgs[i].tail] for i in idx])  # [n, W]
        dev = np.array([cfgs[i].deployment.devices for i in idx])
        # [i, j]: j is at least as good as i everywhere, with no more devices
        covers = (m[None, :, :] >= m[:, None, :]).all(axis=2) & (dev[None, :] <= dev[:, None])
        strictly = (m[None, :, :] > m[:, None, :]).any(axis=2) | (dev[None, :] < dev[:, None])
        earlier = np.arange(len(idx))[None, :] < np.arange(len(idx))[:, None]
        out[idx] = (covers & (strictly | earlier)).any(axis=1)
    return out.tolist()


def candidate_deployments(demand: ModelDemand, catalog: Catalog) -> list[Deployment]:
    """Every memory-feasible deployment of the model on the catalog, in a fixed order: by
    accelerator, TP, PP and engine knobs, within the devices a replica may use."""
    deps = []
    for acc in catalog:
        available = catalog.availability(acc.name)
        for tp in TP_DEGREES:
            for pp in pp_degrees(demand.model):
                if (demand.max_devices and tp * pp > demand.max_devices) or \
                        (available is not None and tp * pp > available):
                    continue
                for chunk, seqs in ENGINE_KNOBS:
                    dep = Deployment(demand.model, acc, tp=tp, pp=pp, dtype=demand.dtype,
                                     engine=demand.engine, chunk_tokens=chunk, max_seqs=seqs,
                                     step_margin=demand.step_margin)
                    if dep.fits:
                        deps.append(dep)
    return deps


def measure_deployments(demand: ModelDemand, deps: Sequence[Deployment]) -> list[Config]:
    """The configs of `deps` that serve at least one class of the model, with their modelled
    capacities (each deployment's independent of the others')."""
    inp = np.array([c.mean_input for c in demand.workload.classes])
    out = np.array([c.mean_output for c in demand.workload.classes])
    cfgs = []
    tails = demand.tail_classes
    free = class_capacities(deps, inp[tails], out[tails], SLO()) if len(tails) else None
    for k, (dep, capacity) in enumerate(zip(
            deps, class_capacities(deps, inp, out, demand.slo), strict=True)):
        tail = np.zeros(len(inp))
        if free is not None:
            tail[tails] = free[k].rate
        if capacity.rate.max() > 0 or tail.max() > 0:
            cfgs.append(Config(demand.model.name, dep, capacity.rate, tail))
    return cfgs


def measure_configs(demand: ModelDemand, catalog: Catalog) -> list[Config]:
    """Every memory-feasible config that serves at least one class of the model, with its
    modelled capacities (dominated ones included). The costly step: compute once, select often."""
    return measure_deployments(demand, candidate_deployments(demand, catalog))


def _measure(catalog: Catalog, piece: tuple[ModelDemand, int, int]) -> list[Config]:
    demand, start, stop = piece
    return measure_deployments(demand, candidate_deployments(demand, catalog)[start:stop])


def measure_all(demands: Sequence[ModelDemand], catalog: Catalog,
                measured: Mapping[str, list[Config]] | None = None) -> dict[str, list[Config]]:
    """measure_configs of every model (by name) not in `measured`, in worker processes (one a
    core): the models side by side, and a model's deployments split into pieces of at least
    PIECE_DEPLOYMENTS where there are more cores than models. The same configs as one process
    computes (each deployment's capacities are its own)."""
    out = dict(measured or {})
    missing = list({d.model.name: d for d in demands if d.model.name not in out}.values())
    workers = cores()
    pieces = []
    for d in missing:
        n = len(candidate_deployments(d, catalog))
        parts = max(1, min(n // PIECE_DEPLOYMENTS, math.ceil(2 * workers / len(missing))))
        edges = np.linspace(0, n, parts + 1).round().astype(int)
        pieces += [(d, int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    got = run_all(_measure, catalog, pieces, workers=workers)
    for (d, _, _), cfgs in zip(pieces, got, strict=True):  # every model has a piece at least
        out.setdefault(d.model.name, []).extend(cfgs)
    return out


def enumerate_configs(demand: ModelDemand, catalog: Catalog, keep_dominated: bool = False,
                      derate: Mapping[str, float] | None = None,
                      measured: list[Config] | None = None) -> list[Config]:
    """The configs of `measure_configs` (or `measured`, its result for this demand and catalog)
    with their capacities times `derate[config name]` (or `derate["*"]`) and
    `derate["config name|class"]` where given, before dominated configs are dropped."""
    cfgs = measure_configs(demand, catalog) if measured is None else measured
    if derate:  # by name, else the "*" entry; then "name|class" per class
        cfgs = [Config(c.model, c.deployment, c.cap * derate.get(c.name, derate.get("*", 1.0))
                       * np.array([derate.get(f"{c.name}|{w.name}", 1.0)
                                   for w in demand.workload.classes]), c.tail) for c in cfgs]
    if keep_dominated:
        return cfgs
    return [c for c, dom in zip(cfgs, _dominated(cfgs), strict=True) if not dom]
