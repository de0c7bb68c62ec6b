"""Which accelerator serves which request class most cheaply: per config x class capacity under
the SLO, and tokens per dollar (prompt and generated tokens both count)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hetserve.catalog import Catalog
from hetserve.errors import HetserveError
from hetserve.models import ModelSpec
from hetserve.perf.capacity import SLO, Capacity, class_capacities
from hetserve.perf.model import TP_DEGREES, Deployment
from hetserve.workload import Workload


def tp_configs(model: ModelSpec, catalog: Catalog, dtype: str | None = None,
               engine: str = "vllm") -> list[Deployment]:
    """Every accelerator x TP (pp=1) on which the model fits, within the catalog's availability."""
    out = []
    for acc in catalog:
        available = catalog.availability(acc.name)
        for tp in TP_DEGREES:
            dep = Deployment(model, acc, tp=tp, dtype=dtype, engine=engine)
            if dep.fits and (available is None or dep.devices <= available):
                out.append(dep)
    return out


@dataclass(frozen=True)
class Estimate:
    model: ModelSpec
    workload: Workload
    slo: SLO
    configs: tuple[Deployment, ...]
    capacity: tuple[Capacity, ...]  # per config, arrays over classes
    rate: np.ndarray  # [config, class] req/s of one replica
    tokens_per_dollar: np.ndarray  # [config, class]
    best: np.ndarray  # per class: index of the most cost-efficient config (-1: none)

    def best_config(self, j: int) -> Deployment | None:
        return self.configs[self.best[j]] if self.best[j] >= 0 else None

    def unserved(self) -> list[int]:
        return [j for j, b in enumerate(self.best) if b < 0]

    def as_dict(self) -> dict:
        classes = []
        for j, c in enumerate(self.workload.classes):
            best = self.best_config(j)
            classes.append({
                "class": c.name,
                "input_range": list(c.input_range),
                "output_range": list(c.output_range),
                "mean_input": round(c.mean_input, 1),
                "mean_output": round(c.mean_output, 1),
                "requests": c.count,
                "rate": c.rate,
                "best": best.label if best else None,
                "configs": {
                    dep.label: {
                        "rate": float(self.rate[i, j]),
                        "tokens_per_dollar": float(self.tokens_per_dollar[i, j]),
                        "ttft": _finite(self.capacity[i].ttft[j]),
                        "tpot": _finite(self.capacity[i].tpot[j]),
                    }
                    for i, dep in enumerate(self.configs)
                    if self.rate[i, j] > 0
                },
            })
        return {
            "model": self.model.name,
            "workload": self.workload.name,
            "rate": self.workload.rate,
            "slo": {"ttft": self.slo.ttft, "tpot": self.slo.tpot,
                    "quantile": self.slo.quantile},
            "configs": [
                {
                    "name": d.label,
                    "accelerator": d.accelerator.name,
                    "tp": d.tp,
                    "pp": d.pp,
                    "usd_per_hour": d.usd_per_hour,
                    "kv_tokens": d.kv_capacity_tokens,
                }
                for d in self.configs
            ],
            "classes": classes,
        }


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def estimate(
    model: ModelSpec,
    workload: Workload,
    catalog: Catalog,
    slo: SLO,
    dtype: str | None = None,
    engine: str = "vllm",
) -> Estimate:
    configs = tp_configs(model, catalog, dtype, engine)
    if not configs and any(catalog.availability(a.name) is not None for a in catalog):
        raise HetserveError(f"{model.name} fits none of the available accelerators (--available "
                            "allows too few devices of the types it fits)")
    if not configs:
        reasons = "; ".join(
            f"{a.name}: {Deployment(model, a, tp=min(8, a.max_per_node), dtype=dtype).why_not()}"
            for a in list(catalog)[:3]
        )
        raise HetserveError(f"{model.name} fits no accelerator in the catalog at TP<=8 ({reasons})")
    inp = np.array([c.mean_input for c in workload.classes])
    out = np.array([c.mean_output for c in workload.classes])
    caps = tuple(class_capacities(configs, inp, out, slo))
    rate = np.vstack([c.rate for c in caps])
    price = np.array([d.usd_per_hour for d in configs])[:, None]
    with np.errstate(divide="ignore"):
        tpd = np.where(price > 0, rate * (inp + out)[None, :] * 3600.0 / price, 0.0)
    best = np.where(rate.max(axis=0) > 0, np.argmax(tpd, axis=0), -1)
    if (best < 0).all():
        raise HetserveError(slo_gap(configs, caps, workload, slo))
    return Estimate(model, workload, slo, tuple(configs), caps, rate, tpd, best)


def slo_gap(configs, caps, workload: Workload, slo: SLO) -> str:
    """Which limit no config meets, and by how much (for the busiest class)."""
    j = int(np.argmax([c.rate for c in workload.classes]))
    cls = workload.classes[j]
    ttft = min(c.best_ttft[j] for c in caps)
    tpot = min(c.best_tpot[j] for c in caps)
    if ttft > slo.ttft:
        fastest = configs[int(np.argmin([c.best_ttft[j] for c in caps]))].label
        return (f"no accelerator meets the TTFT limit {slo.ttft:g}s: for class {cls.name} the "
                f"fastest ({fastest}) needs {ttft:.3g}s, {ttft / slo.ttft:.2g}x the limit")
    if tpot > slo.tpot:
        fastest = configs[int(np.argmin([c.best_tpot[j] for c in caps]))].label
        return (f"no accelerator meets the TPOT limit {slo.tpot * 1e3:g}ms: for class {cls.name} "
                f"the fastest ({fastest}) needs {tpot * 1e3:.3g}ms, "
                f"{tpot / slo.tpot:.2g}x the limit")
    return f"no accelerator can serve class {cls.name}: {caps[0].reason[j]}"
