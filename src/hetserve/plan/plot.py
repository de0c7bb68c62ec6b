"""Cost by accelerator: the heterogeneous plan next to each homogeneous baseline."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hetserve.plan.planfile import Plan  # noqa: E402


def plot_plan_costs(plan: Plan, path: Path | str) -> None:
    bars = [("hetserve plan", {g.accelerator: 0.0 for g in plan.groups})]
    for g in plan.groups:
        bars[0][1][g.accelerator] += g.usd_per_hour
    for b in plan.baselines:
        if b.usd_per_hour is not None:
            bars.append((f"only {b.accelerator}", {b.accelerator: b.usd_per_hour}))
    bars = [bars[0], *sorted(bars[1:], key=lambda x: sum(x[1].values()))]
    accs = list(dict.fromkeys(a for _, parts in bars for a in parts))
    palette = plt.get_cmap("tab20").colors
    colour = {a: palette[i % len(palette)] for i, a in enumerate(accs)}
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(bars) + 1.6))
    for row, (_, parts) in enumerate(bars):
        left = 0.0
        for acc, usd in parts.items():
            ax.barh(row, usd, left=left, color=colour[acc], edgecolor="white",
                    label=acc if row == 0 or acc not in bars[0][1] else None)
            left += usd
        ax.text(left, row, f" ${left:.2f}/h", va="center", fontsize=8)
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
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_xlim(0, max(sum(p.values()) for _, p in bars) * 1.18)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
