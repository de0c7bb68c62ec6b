"""The day drawn: accelerator mix of the adaptive plan, rate, and attainment and cost per window
of every policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hetserve.autoscale.replay import DayResult
from hetserve.errors import HetserveError, check_plot


def plot_day(results: list[DayResult], path: Path | str, window: float,
             outages=()) -> None:
    """`outages` (autoscale.day.Outage) are shaded grey on every panel."""
    check_plot(path, "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    first = results[0]
    hours = np.array([w.start for w in first.windows]) / 3600.0
    types = sorted({t for w in first.windows for t in w.devices})
    step = window / 3600.0

    def ext(h, values):  # a step per window, the last one drawn to its end
        return np.append(h, h[-1] + step), np.append(values, values[-1])

    stack = np.array([ext(hours, [w.devices.get(t, 0) for w in first.windows])[1]
                      for t in types])
    axes[0].stackplot(ext(hours, hours)[0], stack, labels=types, step="post")
    axes[0].set_ylabel("devices")
    axes[0].set_title(f"{first.policy}: accelerator mix per window")
    axes[0].legend(loc="upper left", fontsize=8, ncol=3)
    axes[1].step(*ext(hours, [w.rate for w in first.windows]), where="post", color="black")
    axes[1].set_ylabel("req/s arriving")
    styles = ["-", "--", ":", "-."]  # policies that match for hours stay visible
    for k, r in enumerate(results):
        h = np.array([w.start for w in r.windows]) / 3600.0
        att = [w.met / w.requests if w.requests else np.nan for w in r.windows]
        look = {"ls": styles[k % len(styles)], "lw": 1.8 - 0.3 * (k % len(styles))}
        axes[2].step(*ext(h, np.array(att) * 100), where="post", label=r.policy, **look)
        axes[3].step(*ext(h, [w.cost_usd * 3600.0 / window for w in r.windows]),
                     where="post", label=f"{r.policy}: ${r.cost_usd:,.2f} in all", **look)
    axes[2].axhline(99, color="grey", lw=0.8, ls="--")
    axes[2].set_ylabel("% within SLO")
    axes[2].set_ylim(max(0, min(np.nanmin([w.met / w.requests for r in results
                                           for w in r.windows if w.requests]) * 100, 99) - 1),
                     100.2)
    axes[2].legend(fontsize=8)
    axes[3].set_ylabel("$ per hour")
    axes[3].set_xlabel("hour of the day")
    axes[3].legend(fontsize=8)
    axes[3].set_xlim(0, hours[-1] + step)
    for o in outages:
        for ax in axes:
            ax.axvspan(o.start / 3600.0, o.end / 3600.0, color="grey", alpha=0.15, lw=0)
        axes[0].text((o.start + o.end) / 7200.0, axes[0].get_ylim()[1] * 0.95,
                     "outage: " + ", ".join(f"{k}={v}" for k, v in o.available.items()),
                     ha="center", va="top", fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as exc:
        raise HetserveError(f"--plot {path}: cannot write it ({exc})") from None
    finally:
        plt.close(fig)
