"""`hetserve autoscale`: a day of traffic through the simulator under the autoscaler."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from hetserve.errors import HetserveError, check_plot, positive

MAX_REQUESTS = 20_000_000  # a day's replay keeps every request: ~1 KB each


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
    step_margin: Annotated[float, typer.Option(
        "--step-margin", help="size every plan as if each engine step took this share longer "
        "than modelled (as plan --step-margin); replays run the engines so")] = 0.0,
    availability: Annotated[Path | None, typer.Option(
        "--availability", help="YAML list of {from: HH:MM, to: HH:MM, available: {TYPE: N}}")]
    = None,
    startup: Annotated[str, typer.Option(
        "--startup", help="time from asking for a replica to its serving")] = "3m",
    compare: Annotated[bool, typer.Option(
        "--compare/--no-compare", help="also replay the static peak plan, the single-type "
        "autoscaler and the queue-length scaler")] = True,
    shape_day: Annotated[bool, typer.Option(
        "--day/--as-is", help="shape the trace into a day (default), or replay its own "
        "timestamps (its first window is what the autoscaler has seen at the start)")] = True,
    seed: Annotated[int, typer.Option("--seed", help="arrivals and sizes")] = 0,
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG: mix, rate, attainment")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    gateway: Annotated[str | None, typer.Option(
        "--gateway", help="controller mode: follow this gateway's traffic (its /metrics) and "
        "move it to new plans (/admin/plan)")] = None,
    admin_token: Annotated[str | None, typer.Option(
        "--admin-token", help="the gateway's admin token")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="controller mode: kubernetes (kubectl steps; the default), ray (serve "
        "deploy) or emulate (replicas emulated in this process)")] = None,
    apply: Annotated[bool, typer.Option(
        "--apply", help="controller mode: run the kubectl steps (else print them)")] = False,
    namespace: Annotated[str | None, typer.Option(
        "--namespace", help="controller mode: kubernetes namespace (default: default)")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="controller mode: manifests folder (default: deploy)")] = None,
    interval: Annotated[str | None, typer.Option(
        "--interval", help="controller mode: read the metrics every (default: 15s)")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", help="replay the policies in this many local processes")] = 1,
) -> None:
    """Replay a day of traffic (the trace shaped into a diurnal curve) through the simulator
    under the adaptive autoscaler, with every transition in it, against the static peak plan,
    the single-type autoscaler and a queue-length scaler. With --gateway: follow a running
    gateway's traffic and move it to new plans (controller mode)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    from hetserve.autoscale import DayOptions, compare_day
    from hetserve.autoscale.day import diurnal_day, load_availability_series
    from hetserve.cli import build_catalog, parse_duration
    from hetserve.plan import model_demands
    from hetserve.workload import Trace, load_trace

    if gateway is not None:
        control(gateway, admin_token, model, workload, parse_duration(ttft, "--ttft"),
                parse_duration(tpot, "--tpot"), only, target or "kubernetes", apply,
                namespace or "default", out or Path("deploy"),
                parse_duration(window, "--window"), parse_duration(interval or "15s",
                                                                   "--interval"),
                parse_duration(startup, "--startup"), step_margin)
        return
    for given, option in ((admin_token, "--admin-token"), (target, "--target"),
                          (apply or None, "--apply"), (namespace, "--namespace"),
                          (out, "--out"), (interval, "--interval")):
        if given is not None:
            raise HetserveError(f"{option} applies only with --gateway (controller mode)")
    check_plot(plot)
    positive(workers, "--workers", integer=True)
    if isinstance(seed, bool) or seed < 0:
        raise HetserveError(f"--seed: expected an integer >= 0, got {seed}")
    if not shape_day and rate is not None:
        raise HetserveError("--rate shapes the day; with --as-is the trace's own times are "
                            "replayed")
    if not 0 < positive(hours, "--hours") <= 24:
        raise HetserveError(f"--hours: expected 0 < hours <= 24, got {hours:g}")
    opts = DayOptions(window=parse_duration(window, "--window"), ratio=ratio,
                      peak_hour=peak_hour, startup=parse_duration(startup, "--startup"))
    if opts.window < 60:
        raise HetserveError(f"--window: expected at least 1 minute, got {window}")
    if opts.window > hours * 3600.0:
        raise HetserveError(f"--window {window}: longer than the replay (--hours {hours:g}); "
                            f"expected at most {hours:g} h")
    catalog = build_catalog(None, None, None, only)
    (demand,) = model_demands(model, workload=workload, rate=rate,
                              ttft=parse_duration(ttft, "--ttft"),
                              tpot=parse_duration(tpot, "--tpot"), step_margin=step_margin)
    outages = load_availability_series(availability, catalog) if availability else []
    trace = load_trace(workload)
    expected = (rate or trace.rate) * hours * 3600.0
    if expected > MAX_REQUESTS:
        raise HetserveError(f"--rate/--hours: about {expected:,.0f} requests; a replay here "
                            f"holds at most {MAX_REQUESTS:,} (lower --rate or --hours)")
    if shape_day:
        day = diurnal_day(trace, ratio=ratio, peak_hour=peak_hour, mean_rate=rate,
                          warmup=opts.window, seed=seed, hours=hours)
    else:  # the trace's own times, its first window seen before the replay starts
        span = float(trace.arrivals[-1] - trace.arrivals[0])
        if span <= 2 * opts.window:
            raise HetserveError(f"--as-is: the trace spans {span / 60:.0f} min; it needs more "
                                f"than two windows ({2 * opts.window / 60:.0f} min)")
        day = Trace(trace.name, trace.arrivals - trace.arrivals[0] - opts.window,
                    trace.input_tokens, trace.output_tokens)
        hours = min(hours, (span - opts.window + 1.0) / 3600.0)  # (its last request too)
    started = time.perf_counter()
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[at]}"),
                  console=console, transient=True) as bar:
        task = bar.add_task("replaying", total=hours * 3600.0, at="")

        def tick(name: str, t: float) -> None:
            bar.update(task, completed=t, description=f"replaying: {name}",
                       at=f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}")

        if workers > 1:
            bar.update(task, description="replaying the policies side by side")
        results = compare_day(demand, catalog, day, opts, rate or trace.rate, outages,
                              compare, hours * 3600.0, tick, workers)
    wall = time.perf_counter() - started
    if as_json:
        print(json.dumps({"requests": results[0].requests, "wall_seconds": wall, "policies": [
            {"policy": r.policy, "cost_usd": r.cost_usd, "attainment": r.attainment,
             "changes": r.changes, "replay_seconds": r.wall_seconds,
             "windows": [w.__dict__ for w in r.windows]} for r in results]}, indent=2))
    else:
        from hetserve.cli import _console
        from hetserve.cli.tables import autoscale_table

        _console().print(autoscale_table(results, hours, demand, shape_day))
        print(f"{len(day):,} requests over {hours:.3g} h ({results[0].requests:,} scored: the "
              f"first window's {len(day) - results[0].requests:,} warm the policies up); "
              f"replayed in {wall:.1f} s")
    if plot:
        from hetserve.autoscale.report import plot_day

        plot_day(results, plot, opts.window, outages)
        print(f"wrote {plot}", file=sys.stderr if as_json else sys.stdout)


def control(gateway: str, admin_token: str | None, model: str, workload: str, ttft: float,
            tpot: float, only, target: str, apply: bool, namespace: str, out: Path,
            window: float, interval: float, startup: float, step_margin: float = 0.0) -> None:
    """Controller mode: follow the gateway's traffic until Ctrl-C."""
    import asyncio

    from hetserve.autoscale.controller import (
        Controller,
        Emulators,
        KubernetesSteps,
        RaySteps,
    )
    from hetserve.autoscale.policy import Replanner
    from hetserve.cli import build_catalog
    from hetserve.deploy import Options
    from hetserve.plan import model_demands

    if not admin_token:
        raise HetserveError("--gateway: give --admin-token (the gateway's, for /admin/plan)")
    if target not in ("kubernetes", "ray", "emulate"):
        raise HetserveError(f"--target {target!r}: expected kubernetes, ray or emulate")
    (demand,) = model_demands(model, workload=workload, ttft=ttft, tpot=tpot,
                              step_margin=step_margin)
    policy = Replanner(demand, build_catalog(None, None, None, only), startup=startup)

    async def main() -> None:
        import aiohttp

        from hetserve.plan.planfile import parse_plan

        ctl = Controller(gateway.rstrip("/"), admin_token, policy, None, window=window,
                         interval=interval, say=lambda line: print(line, flush=True))
        if target == "emulate":
            ctl.capacity = Emulators()
        elif target == "ray":
            ctl.capacity = RaySteps(Options(), str(out), apply)
        else:
            ctl.capacity = KubernetesSteps(Options(namespace=namespace), str(out), apply)
            async with aiohttp.ClientSession() as session:
                now = await ctl.get(session, "/admin/plan", admin=True)
            ctl.capacity.start(parse_plan(now["plan"], f"{gateway}/admin/plan"))
        capacity = ctl.capacity
        stop = asyncio.Event()
        live = apply or target == "emulate"  # emulated capacity is real, here
        print(f"following {gateway} every {interval:g} s, deciding every {window:g} s "
              f"({'moving the gateway' if live else 'dry run: printing the steps'}); Ctrl-C "
              "stops" + (" (the emulated replicas stop with this process)"
                         if target == "emulate" else ""), flush=True)
        try:
            await ctl.run(stop)
        finally:
            if target == "emulate":
                await capacity.close()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop following
        asyncio.run(main())
