"""Command line: hetserve profile (measure an endpoint, fit, report)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from hetserve.cli.run import deployment_from_options
from hetserve.errors import HetserveError, check_output, check_plot, positive
from hetserve.profile.file import MAX_CONCURRENCY
from hetserve.workload.trace import MAX_TOKENS

DEFAULT_SIZES = "256:96,2048:96,8192:32"  # a short and two long prompts: see profile/fit.py
DEFAULT_CONCURRENCY = "1,4,16,64"


def _ints(text: str, option: str, most: int | None = None) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise HetserveError(f"{option} {text!r}: expected integers like 1,4,16") from None
    for v in values:
        positive(v, option, integer=True)
        if most is not None and v > most:
            raise HetserveError(f"{option} {text!r}: expected at most {most:,}, got {v:,}")
    return values


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(","):
        inp, sep, outp = part.strip().partition(":")
        try:
            size = (int(inp), int(outp))
        except ValueError:
            size = (0, 0)
        if not sep or min(size) < 1 or max(size) > MAX_TOKENS:
            raise HetserveError(f"--sizes {text!r}: expected PROMPT:OUTPUT token pairs like "
                                f"512:128,2048:128, each at most {MAX_TOKENS:,}")
        out.append(size)
    return tuple(out)


def _rates(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise HetserveError(f"--rates {text!r}: expected req/s like 0.5,2") from None
    return tuple(positive(v, "--rates") for v in values)


def profile_cmd(
    endpoint: Annotated[str | None, typer.Option(
        "--endpoint", help="base URL of an OpenAI-compatible server (http://host:port)")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="the model's name in hetserve (bundled name or config.json)")]
    = None,
    accelerator: Annotated[str | None, typer.Option(
        "--accelerator", "-a", help="catalog name of the accelerator it runs on")] = None,
    tp: Annotated[int, typer.Option("--tp", help="tensor-parallel degree")] = 1,
    pp: Annotated[int, typer.Option("--pp", help="pipeline-parallel degree")] = 1,
    dtype: Annotated[str | None, typer.Option("--dtype", help="weight dtype")] = None,
    engine: Annotated[str, typer.Option(
        "--engine", help="vllm, vllm-v0, sglang or trt-llm")] = "vllm",
    max_seqs: Annotated[int, typer.Option(
        "--max-num-seqs", help="the engine's max_num_seqs")] = 256,
    chunk: Annotated[int, typer.Option(
        "--max-num-batched-tokens", help="the engine's token budget per step")] = 8192,
    sizes: Annotated[str, typer.Option(
        "--sizes", help="PROMPT:OUTPUT token pairs to measure")] = DEFAULT_SIZES,
    concurrency: Annotated[str, typer.Option(
        "--concurrency", help="closed-loop client counts")] = DEFAULT_CONCURRENCY,
    rates: Annotated[str | None, typer.Option(
        "--rates", help="open-loop Poisson rates, req/s")] = None,
    seconds: Annotated[float, typer.Option(
        "--seconds-per-point", help="how long each point sends requests")] = 10.0,
    timeout: Annotated[float, typer.Option(
        "--timeout", help="seconds one request may take before the measurement fails")]
    = 120.0,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Bearer token")] = None,
    served_model: Annotated[str | None, typer.Option(
        "--served-model", help="the model's name at the endpoint (default: the one it serves)")]
    = None,
    hold_back: Annotated[float, typer.Option(
        "--hold-back", help="share of the load shapes held back from the fit, to check it")]
    = 0.25,
    catalog: Annotated[Path | None, typer.Option(
        "--catalog", help="YAML file extending/overriding the catalog")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="write the profile here")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="print an existing profile: measured vs predicted")] = None,
    refit: Annotated[Path | None, typer.Option(
        "--fit", help="fit an existing profile's points again and save it")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="with --report: latency and throughput against load (PNG)")] = None,
    melange: Annotated[Path | None, typer.Option(
        "--import-melange", help="Mélange solver input: fit a profile to one GPU's throughput "
        "matrix (gpu_info.NAME.tputs) instead of measuring")] = None,
    gpu: Annotated[str | None, typer.Option(
        "--gpu", help="--import-melange: the gpu_info entry (default: --accelerator)")] = None,
    input_edges: Annotated[str | None, typer.Option(
        "--input-edges", help="--import-melange: prompt-token edges of the matrix's rows")]
    = None,
    output_edges: Annotated[str | None, typer.Option(
        "--output-edges", help="--import-melange: output-token edges of its columns")] = None,
    ttft: Annotated[str | None, typer.Option(
        "--ttft", help="--import-melange: the TTFT limit the matrix was measured at")] = None,
    tpot: Annotated[str | None, typer.Option(
        "--tpot", help="--import-melange: the TPOT limit it was measured at")] = None,
    quantile: Annotated[float, typer.Option(
        "--quantile", help="--import-melange: share of requests within the limits")] = 0.5,
) -> None:
    """Measure an OpenAI-compatible endpoint (closed loop at each concurrency, Poisson at each
    rate), fit the deployment's step-time coefficients to it, and save a profile that --profile
    applies in estimate, plan, simulate and calibrate."""
    from hetserve.catalog import load_catalog

    check_plot(plot)
    cat = load_catalog(catalog)
    if report is not None or refit is not None:
        if endpoint is not None:
            raise HetserveError("--report/--fit read a profile file; --endpoint measures one "
                                "(give one of them)")
        _existing(report or refit, cat, refit is not None, hold_back, plot)
        return
    if melange is not None:
        if endpoint is not None:
            raise HetserveError("--import-melange reads a file; --endpoint measures (give one)")
        if model is None or accelerator is None or out is None:
            raise HetserveError("--import-melange: give --model, --accelerator and --out")
        check_output(out, "--out")
        _import(melange, gpu or accelerator, model, accelerator, tp, pp, dtype, engine,
                max_seqs, chunk, input_edges, output_edges, ttft, tpot, quantile, hold_back,
                cat, out)
        return
    if endpoint is None or model is None or accelerator is None or out is None:
        raise HetserveError("hetserve profile: give --endpoint, --model, --accelerator and "
                            "--out (or --report FILE)")
    if plot is not None:
        raise HetserveError("--plot goes with --report FILE")
    check_output(out, "--out")
    _measure(endpoint, model, accelerator, tp, pp, dtype, engine, max_seqs, chunk, sizes,
             concurrency, rates, seconds, timeout, api_key, served_model, hold_back, cat, out)


def _measure(endpoint, model, accelerator, tp, pp, dtype, engine, max_seqs, chunk, sizes,
             concurrency, rates, seconds, timeout, api_key, served_model, hold_back, cat,
             out) -> None:
    import asyncio

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from hetserve.cli import out as console
    from hetserve.profile.drive import Endpoint, MeasureError, Sweep, measure, normalise
    from hetserve.profile.file import Profile

    positive(seconds, "--seconds-per-point")
    positive(timeout, "--timeout")
    if not 0 <= hold_back < 1:
        raise HetserveError(f"--hold-back: expected a share in [0, 1), got {hold_back}")
    dep = deployment_from_options(model, cat.get(accelerator), tp, pp, dtype, engine,
                                  max_seqs, chunk)
    spec = dep.model
    sweep = Sweep(_sizes(sizes), _ints(concurrency, "--concurrency", MAX_CONCURRENCY),
                  _rates(rates), seconds)
    for inp, outp in sweep.sizes:
        if inp + outp > min(dep.kv_capacity_tokens, spec.max_context):
            raise HetserveError(f"--sizes {inp}:{outp}: more tokens than {dep.label} holds")
    points = sweep.points()
    if not points:
        raise HetserveError("--concurrency/--rates: nothing to measure")
    ep = Endpoint(normalise(endpoint), served_model or "", api_key, timeout)
    prof = Profile(model=spec.name, spec=spec, accelerator=dep.accelerator.name, tp=tp, pp=pp,
                   engine=engine, dtype=dep.weight_dtype, max_num_seqs=max_seqs,
                   max_num_batched_tokens=chunk, endpoint=ep.base,
                   measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    bound = len(points) * (seconds + timeout)
    console.print(f"profiling {ep.base} as {dep.label} ({spec.name}, {engine}): "
                  f"{len(points)} points of {seconds:g} s (at most {bound / 60:.0f} min)")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
            "{task.completed}/{task.total}"), TimeElapsedColumn(), console=console,
            transient=True) as bar:
        task = bar.add_task("connecting", total=len(points))

        def on_point(p, label: str) -> None:
            if p is not None:
                prof.points.append(p)
                bar.advance(task)
            else:
                prof.prompts = label
            nxt = len(prof.points)
            if nxt < len(points):
                mode, load, inp, outp = points[nxt]
                bar.update(task, description=f"{inp}/{outp} {mode} "
                           f"{'c=' if mode == 'closed' else ''}{load:g}"
                           f"{' req/s' if mode == 'open' else ''}")

        try:
            asyncio.run(measure(ep, sweep, spec.vocab, on_point))
        except MeasureError as exc:
            prof.served_model = ep.served_model
            prof.complete, prof.failure = False, str(exc)
            prof.save(out)
            raise HetserveError(f"{exc}; {len(prof.points)} of {len(points)} points measured, "
                                f"kept in {out} (marked partial, not fitted)") from None
    prof.served_model = ep.served_model
    _fit_and_save(prof, dep, hold_back, out)


def _import(path, gpu, model, accelerator, tp, pp, dtype, engine, max_seqs, chunk,
            input_edges, output_edges, ttft, tpot, quantile, hold_back, cat, out) -> None:
    from rich.console import Console
    from rich.progress import Progress

    from hetserve.cli import out as console
    from hetserve.cli import parse_duration
    from hetserve.cli.tables import profile_tables
    from hetserve.profile.melange import import_melange, melange_points

    if input_edges is None or output_edges is None:
        raise HetserveError("--import-melange: give --input-edges and --output-edges, the "
                            "token edges of the matrix's buckets (Mélange's files do not say)")
    if not 0 < quantile < 1:
        raise HetserveError(f"--quantile: expected a share in (0, 1), got {quantile}")
    dep = deployment_from_options(model, cat.get(accelerator), tp, pp, dtype, engine,
                                  max_seqs, chunk)
    args = (path, gpu, dep, _ints(input_edges, "--input-edges"),
            _ints(output_edges, "--output-edges"),
            parse_duration(ttft, "--ttft") if ttft else None,
            parse_duration(tpot, "--tpot") if tpot else None, quantile)
    melange_points(path, gpu, *args[3:])  # bad input is refused before any work
    with Progress(console=Console(stderr=True), transient=True) as bar:
        bar.add_task(f"fitting {dep.label} to {path}", total=None)
        prof = import_melange(*args, hold_back)
    prof.save(out)
    for table in profile_tables(prof, dep):
        console.print(table)
    console.print(f"wrote {out}")


def _fit_and_save(prof, dep, hold_back: float, out: Path) -> None:
    from hetserve.cli import out as console
    from hetserve.cli.tables import profile_tables
    from hetserve.profile.fit import fit, observations

    prof.fit, prof.fit_report = fit(dep, observations(prof.points, prof.capacities), hold_back)
    prof.save(out)
    for table in profile_tables(prof, dep):
        console.print(table)
    console.print(f"wrote {out}")


def _existing(path: Path, cat, refit: bool, hold_back: float, plot: Path | None) -> None:
    from hetserve.cli import out as console
    from hetserve.cli.tables import profile_tables
    from hetserve.profile.file import load_profile
    from hetserve.profile.report import deployment_of

    prof = load_profile(path)
    dep = deployment_of(prof, cat, str(path))
    if refit:
        if not prof.complete:
            raise HetserveError(f"{path}: a partial profile ({prof.failure}) is never fitted")
        _fit_and_save(prof, dep, hold_back, path)
        return
    for table in profile_tables(prof, dep):
        console.print(table)
    if plot is not None:
        from hetserve.profile.report import plot_profile

        plot_profile(prof, dep, plot)
        console.print(f"wrote {plot}")
