"""Plots for estimates: the best accelerator per request class on the input x output grid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from hetserve.errors import check_plot  # noqa: E402
from hetserve.perf.estimate import Estimate  # noqa: E402


def _edge_label(v: int) -> str:
    return f"{v // 1024}k" if v >= 1024 and v % 1024 == 0 else str(v)


def plot_best_map(est: Estimate, path: Path | str) -> None:
    check_plot(path, "plot")
    grid = est.workload.grid
    ni, no = grid.shape
    winners = sorted({est.configs[b].label for b in est.best if b >= 0})
    code = np.full((ni, no), np.nan)
    text = [["" for _ in range(no)] for _ in range(ni)]
    for j, c in enumerate(est.workload.classes):
        bi = grid.input_edges.index(c.input_range[0])
        bo = grid.output_edges.index(c.output_range[0])
        b = est.best[j]
        if b < 0:
            code[bi, bo] = -1
            text[bi][bo] = "none\nmeets SLO"
            continue
        code[bi, bo] = winners.index(est.configs[b].label)
        share = 100.0 * c.count / len(est.workload.trace)
        pct = f"{share:.1f}%" if share >= 0.1 else "<0.1%"
        text[bi][bo] = (f"{est.configs[b].label}\n{est.tokens_per_dollar[b, j] / 1e6:.1f}M tok/$"
                        f"\n{pct} of requests")
    palette = plt.get_cmap("tab10" if len(winners) <= 10 else "tab20").colors
    cmap = ListedColormap(["#dddddd", *palette[: max(len(winners), 1)]])
    fig, ax = plt.subplots(figsize=(1.6 * no + 2.5, 0.9 * ni + 2.0))
    ax.imshow(np.where(np.isnan(code), np.nan, code + 1), cmap=cmap, vmin=0,
              vmax=len(winners), aspect="auto", origin="lower")
    for bi in range(ni):
        for bo in range(no):
            if text[bi][bo]:
                ax.text(bo, bi, text[bi][bo], ha="center", va="center", fontsize=7)
    ax.set_xticks(np.arange(no + 1) - 0.5, [_edge_label(e) for e in grid.output_edges])
    ax.set_yticks(np.arange(ni + 1) - 0.5, [_edge_label(e) for e in grid.input_edges])
    ax.set_xlabel("output tokens")
    ax.set_ylabel("prompt tokens")
    slo = est.slo
    ax.set_title(f"Most cost-efficient accelerator per request class\n{est.model.name} on "
                 f"{est.workload.name}, TTFT <= {slo.ttft:g}s, TPOT <= {slo.tpot * 1e3:g}ms "
                 "(empty: no requests)", fontsize=10)
    handles = [Patch(color=palette[i], label=w) for i, w in enumerate(winners)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
