"""`hetserve autoscale`: a day of traffic through the simulator under the autoscaler."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from hetserve.errors import HetserveError, positive


def autoscale_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="model name")] = "llama-3.1-8b",
    workload: Annotated[str, typer.Option(
        "--workload", help="trace shaped into the day: azure-conv, azure-code or a file")]
    = "azure-conv",
    rate: Annotated[float | None, typer.Option(
        "--rate", help="the day's mean req/s (default: the trace's own)")] = None,
    ratio: Annotated[float, typer.Option(
        "--peak-ratio", help="highest over lowest rate of the day")] = 3.0,
    peak_hour: Annotated[float, typer.Option("--peak-hour", help="hour of the peak")] = 14.0,
    hours: Annotated[float, typer.Option("--hours", help="replay this much of the day")] = 24.0,
    window: Annotated[str, typer.Option("--window", help="re-plan every (e.g. 15m)")] = "15m",
    ttft: Annotated[str, typer.Option("--ttft", help="TTFT limit, e.g. 2s")] = "2s",
    tpot: Annotated[str, typer.Option("--tpot", help="TPOT limit, e.g. 50ms")] = "50ms",
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="accelerator types to choose from")] = None,
    availability: Annotated[Path | None, typer.Option(
        "--availability", help="YAML list of {from: HH:MM, to: HH:MM, available: {TYPE: N}}")]
    = None,
    startup: Annotated[str, typer.Option(
        "--startup", help="time from asking for a replica to its serving")] = "3m",
    compare: Annotated[bool, typer.Option(
        "--compare/--no-compare", help="also replay the static peak plan, the single-type "
        "autoscaler and the queue-length scaler")] = True,
    seed: Annotated[int, typer.Option("--seed", help="arrivals and sizes")] = 0,
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG: mix, rate, attainment")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Replay a day of traffic (the trace shaped into a diurnal curve) through the simulator
    under the adaptive autoscaler, with every transition in it, against the static peak plan,
    the single-type autoscaler and a queue-length scaler."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    from hetserve.autoscale import DayOptions, compare_day
    from hetserve.autoscale.day import diurnal_day, load_availability_series
    from hetserve.cli import build_catalog, parse_duration
    from hetserve.plan import model_demands
    from hetserve.workload import load_trace

    if not 0 < positive(hours, "--hours") <= 24:
        raise HetserveError(f"--hours: expected 0 < hours <= 24, got {hours:g}")
    opts = DayOptions(window=parse_duration(window, "--window"), ratio=ratio,
                      peak_hour=peak_hour, startup=parse_duration(startup, "--startup"))
    if opts.window < 60:
        raise HetserveError(f"--window: expected at least 1 minute, got {window}")
    catalog = build_catalog(None, None, None, only)
    (demand,) = model_demands(model, workload=workload, rate=rate,
                              ttft=parse_duration(ttft, "--ttft"),
                              tpot=parse_duration(tpot, "--tpot"))
    outages = load_availability_series(availability) if availability else []
    for o in outages:
        for name in o.available:
            catalog.get(name)  # an unknown type names itself
    day = diurnal_day(load_trace(workload), ratio=ratio, peak_hour=peak_hour, mean_rate=rate,
                      warmup=opts.window, seed=seed, hours=hours)
    started = time.perf_counter()
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[at]}"),
                  console=console, transient=True) as bar:
        task = bar.add_task("replaying", total=hours * 3600.0, at="")

        def tick(name: str, t: float) -> None:
            bar.update(task, completed=t, description=f"replaying: {name}",
                       at=f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}")

        results = compare_day(demand, catalog, day, opts, outages, compare, hours * 3600.0,
                              tick)
    wall = time.perf_counter() - started
    if as_json:
        print(json.dumps({"requests": results[0].requests, "wall_seconds": wall, "policies": [
            {"policy": r.policy, "cost_usd": r.cost_usd, "attainment": r.attainment,
             "changes": r.changes, "replay_seconds": r.wall_seconds,
             "windows": [w.__dict__ for w in r.windows]} for r in results]}, indent=2))
    else:
        from hetserve.cli.tables import autoscale_table

        Console().print(autoscale_table(results, hours, demand))
        print(f"{len(day):,} requests over {hours:g} h ({results[0].requests:,} scored); "
              f"replayed in {wall:.1f} s")
    if plot:
        from hetserve.autoscale.report import plot_day

        plot_day(results, plot, opts.window)
        print(f"wrote {plot}")
