"""Latency CDFs per replica group (TTFT and TPOT), with the SLO limits marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hetserve.errors import check_plot
from hetserve.sim.report import SimResult


def plot_latency_cdf(result: SimResult, path: Path | str) -> None:
    check_plot(path, "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    done = result.completed
    met = result.met
    ttft, tpot = result.ttft, result.tpot
    colors = plt.get_cmap("tab10")
    for k, g in enumerate(result.groups):
        mask = done & (result.group == k)
        if not mask.any():
            continue
        label = (f"{g.id}: {g.replicas} x {g.label} ({int(mask.sum())} req, "
                 f"{met[result.group == k].mean():.1%} in SLO)")
        for ax, values, sel in ((axes[0], ttft, mask),
                                (axes[1], tpot * 1e3, mask & (result.output_tokens > 1))):
            x = np.sort(values[sel])
            if len(x):
                ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", color=colors(k % 10),
                        label=label)
    styles = ["--", ":", "-.", (0, (5, 1, 1, 1))]
    for m, (ttft_lim, tpot_lim) in enumerate(result.slo):
        tag = f", {result.models[m]}" if len(result.models) > 1 else ""
        ls = styles[m % len(styles)]
        axes[0].axvline(ttft_lim, color="black", ls=ls, lw=1,
                        label=f"TTFT limit {ttft_lim:g} s{tag}")
        axes[1].axvline(tpot_lim * 1e3, color="black", ls=ls, lw=1,
                        label=f"TPOT limit {tpot_lim * 1e3:g} ms{tag}")
    summary = result.summary()
    for ax, title, unit in ((axes[0], "time to first token", "s"),
                            (axes[1], "time per output token", "ms")):
        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 20, 0.1: not 2x10^1, 10^-1
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(FuncFormatter(  # and 2, 5 x 10^k between the decades
            lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** np.floor(np.log10(v))) in (2, 5)
            else ""))
        ax.set_ylim(0, 1.01)
        ax.set_xlabel(f"{title} ({unit}, log scale)")
        ax.set_ylabel("share of requests")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    extra = [(h, la) for h, la in zip(*axes[1].get_legend_handles_labels(), strict=True)
             if la.startswith("TPOT limit")]
    fig.legend(handles + [h for h, _ in extra], labels + [la for _, la in extra],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{summary['requests']} requests, router {result.router}, arrivals "
                 f"{result.arrivals}: {summary['slo_attainment']:.1%} within SLO, "
                 f"${summary['cost_usd']:.2f} for {summary['billed_seconds']:.0f} s of "
                 f"traffic at {summary['offered_rate']:.3g} req/s",
                 fontsize=10)
    rows = (len(labels) + len(extra) + 1) // 2
    fig.tight_layout(rect=(0, 0.01 + 0.04 * rows, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
