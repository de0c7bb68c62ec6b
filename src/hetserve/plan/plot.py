"""Cost by accelerator: the heterogeneous plan next to each homogeneous baseline."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from hetserve.errors import check_plot  # noqa: E402
from hetserve.plan.planfile import Plan  # noqa: E402

SCALE_LIMIT = 4.0  # the axis ends at this multiple of the plan's (or best baseline's) cost


def _held(plan: Plan, overall, per_model) -> str:
    """', 99.7% in SLO' (with ', misses' where a model falls short of its target), or ''."""
    if overall is None:
        return ""
    short = plan.short_of_target(overall, per_model)
    return f", {overall:.2%} in SLO" + (", misses the target" if short else "")


def plot_plan_costs(plan: Plan, path: Path | str) -> None:
    """Bars of $/h, stacked by accelerator: the plan, then each homogeneous baseline, cheapest
    first, with their simulated attainment where proven (a baseline that misses its target is
    hatched). Bars past SCALE_LIMIT times the cheaper of the plan and the best baseline are cut
    at the axis's end, their cost written beside them."""
    check_plot(path, "plot")
    bars = [("hetserve plan", {g.accelerator: 0.0 for g in plan.groups},
             _held(plan, plan.slo_attainment, plan.model_attainment))]
    for g in plan.groups:
        bars[0][1][g.accelerator] += g.usd_per_hour
    for b in plan.baselines:
        if b.usd_per_hour is not None:
            bars.append((f"only {b.accelerator}", {b.accelerator: b.usd_per_hour},
                         _held(plan, b.slo_attainment, b.model_attainment)))
    bars = [bars[0], *sorted(bars[1:], key=lambda x: sum(x[1].values()))]
    accs = list(dict.fromkeys(a for _, parts, _ in bars for a in parts))
    palette = plt.get_cmap("tab20").colors
    colour = {a: palette[i % len(palette)] for i, a in enumerate(accs)}
    totals = [sum(parts.values()) for _, parts, _ in bars]
    limit = min(max(totals), SCALE_LIMIT * min(totals[0], min(totals[1:], default=totals[0])))
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(bars) + 1.6))
    for row, (_, parts, held) in enumerate(bars):
        shrink = min(1.0, limit / totals[row])  # a bar past the limit ends at it
        left = 0.0
        for acc, usd in parts.items():
            ax.barh(row, usd * shrink, left=left, color=colour[acc], edgecolor="white",
                    hatch="//" if "misses" in held else None)
            left += usd * shrink
        cut = " (off the scale)" if shrink < 1.0 else ""
        ax.text(left, row, f" ${totals[row]:.2f}/h{held}{cut}", va="center", fontsize=8)
    ax.set_yticks(range(len(bars)), [b[0] for b in bars])
    ax.invert_yaxis()
    ax.set_xlabel("$ per hour")
    what = "throughput" if plan.objective == "throughput" else "cost"
    models = ", ".join(f"{m.name} @ {m.rate * plan.scale:.3g} req/s" for m in plan.models)
    saving = ""
    if plan.savings is not None:
        word = "cheaper than" if plan.objective == "cost" else "more throughput than"
        saving = f"\n{plan.savings:.1%} {word} the best homogeneous plan ({plan.best_homogeneous})"
    ax.set_title(f"Plan ({what} objective): {models}{saving}", fontsize=10)
    handles = [Patch(color=colour[a], label=a) for a in accs]
    if any("misses" in held for _, _, held in bars):
        handles.append(Patch(facecolor="white", edgecolor="grey", hatch="//",
                             label="misses its target"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_xlim(0, limit * 1.45)  # room for the labels
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
