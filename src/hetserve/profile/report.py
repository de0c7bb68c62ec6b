"""A profile against the performance model: per point, what was measured, what the model's
defaults predict and what the fitted coefficients predict; and a plot against load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hetserve.catalog import Catalog
from hetserve.errors import HetserveError, check_plot
from hetserve.models import get_model
from hetserve.perf import Deployment
from hetserve.profile.file import CapacityPoint, Profile, ProfilePoint
from hetserve.profile.fit import Observation, prefill_capacities, with_fit

METRICS = ("ttft", "itl", "output_throughput")


def deployment_of(prof: Profile, catalog: Catalog, where: str = "profile") -> Deployment:
    """The deployment a profile measured, with the catalog's (unfitted) coefficients; errors
    name `where` (the profile's file)."""
    try:
        acc = catalog.get(prof.accelerator)
    except HetserveError as exc:
        raise HetserveError(f"{where}: field 'accelerator': {exc}") from None
    acc = acc.model_copy(update={"fits": tuple(
        f for f in acc.fits if not f.matches(prof.model, prof.tp, prof.pp, prof.engine,
                                             prof.dtype))})
    dep = Deployment(prof.spec or get_model(prof.model), acc, tp=prof.tp, pp=prof.pp,
                     dtype=prof.dtype, engine=prof.engine, max_seqs=prof.max_num_seqs,
                     chunk_tokens=prof.max_num_batched_tokens)
    if not dep.fits:
        raise HetserveError(f"profile of {dep.label}: {dep.why_not()}")
    return dep


@dataclass(frozen=True)
class Row:
    point: ProfilePoint
    measured: dict[str, float]
    model: dict[str, float]  # the model's own coefficients
    fitted: dict[str, float] | None  # the profile's fit


def _predict(dep: Deployment, p: ProfilePoint, cache: dict, latency: float = 0.0
             ) -> dict[str, float]:
    load = p.concurrency if p.mode == "closed" else p.rate
    return {m: Observation(p.label, p.mode, float(load), p.input_tokens, p.output_tokens, m,
                           1.0, p.seconds, tuple(p.sent_at), tuple(p.measured)
                           ).predict(dep, cache, latency) for m in METRICS}


def rows(prof: Profile, dep: Deployment) -> list[Row]:
    """Per point: measured; the model's defaults; the fit, with the client latency it found."""
    fitted = with_fit(dep, prof.fit) if prof.fit is not None else None
    latency = prof.fit_report.client_latency_ms * 1e-3 if prof.fit_report else 0.0
    base, tuned = {}, {}
    return [Row(p, {m: getattr(p, m) for m in METRICS}, _predict(dep, p, base),
                _predict(fitted, p, tuned, latency) if fitted is not None else None)
            for p in prof.points]


def plot_profile(prof: Profile, dep: Deployment, path: Path | str) -> None:
    """TTFT, ITL and throughput against concurrency (closed-loop points), one line per size:
    measured (dots), the fit (solid), the model's defaults (dashed)."""
    check_plot(path, "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [r for r in rows(prof, dep) if r.point.mode == "closed"]
    if not data:
        raise HetserveError("--plot: the profile has no closed-loop points to draw")
    sizes = sorted({(r.point.input_tokens, r.point.output_tokens) for r in data})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    titles = {"ttft": ("TTFT", "ms", 1e3), "itl": ("time between tokens", "ms", 1e3),
              "output_throughput": ("output throughput", "tokens/s", 1.0)}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes, METRICS, strict=True):
        name, unit, scale = titles[metric]
        for k, size in enumerate(sizes):
            pts = sorted((r for r in data if (r.point.input_tokens, r.point.output_tokens)
                          == size), key=lambda r: r.point.concurrency)
            x = [r.point.concurrency for r in pts]
            colour = colours[k % len(colours)]
            ax.plot(x, [r.measured[metric] * scale for r in pts], "o", color=colour,
                    label=f"{size[0]}/{size[1]} measured")
            if pts[0].fitted is not None:
                ax.plot(x, [r.fitted[metric] * scale for r in pts], "-", color=colour,
                        label=f"{size[0]}/{size[1]} fitted")
            ax.plot(x, [r.model[metric] * scale for r in pts], "--", color=colour, alpha=0.6,
                    label=f"{size[0]}/{size[1]} model defaults")
        ax.set_xscale("log", base=2)
        loads = sorted({r.point.concurrency for r in data})
        ax.set_xticks(loads, [str(c) for c in loads])
        if metric == "ttft":  # short and long prompts differ by 100x
            ax.set_yscale("log")
            name += ", log scale"
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel(f"{name} ({unit})")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{prof.model} on {dep.label}, {prof.engine}: measured at {prof.endpoint}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def capacity_rows(prof: Profile, dep: Deployment, fitted: Deployment | None
                  ) -> list[tuple[CapacityPoint, float, float | None]]:
    """Per imported capacity: the entry, the model's req/s, the fit's."""
    obs = [Observation(c.label, "capacity", 0.0, c.input_tokens, c.output_tokens, "capacity",
                       1.0, slo=c.slo) for c in prof.capacities]
    base, tuned = {}, {}
    prefill_capacities(dep, obs, base)
    if fitted is not None:
        prefill_capacities(fitted, obs, tuned)
    return [(c, o.predict(dep, base), o.predict(fitted, tuned) if fitted is not None else None)
            for c, o in zip(prof.capacities, obs, strict=True)]
