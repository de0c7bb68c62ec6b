"""Command line: parses options, calls the library, prints. Bad input: one line, exit code 2."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from hetserve.catalog import (
    Catalog,
    apply_available,
    load_catalog,
    parse_assignments,
    parse_names,
)
from hetserve.cli.tables import by_model, target_pct
from hetserve.errors import HetserveError, check_output, check_plot, write_text
from hetserve.models import bundled_models
from hetserve.workload import classify, grid_from_options, load_trace

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="hetserve: cost-efficient LLM serving on heterogeneous accelerators.",
)


def _console(stderr: bool = False) -> Console:
    """Rich console; piped or captured, it does not squeeze tables into 80 columns."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=160)


out = _console()

CatalogOpt = Annotated[
    Path | None, typer.Option("--catalog", help="YAML file extending/overriding the catalog")
]
PriceOpt = Annotated[
    list[str] | None, typer.Option("--price", help="NAME=USD per device-hour (repeatable)")
]
AvailOpt = Annotated[
    list[str] | None,
    typer.Option("--available", help="NAME=COUNT,... or a YAML/JSON file of NAME: COUNT: "
                 "devices of those types that can be rented (others: no limit)"),
]
OnlyOpt = Annotated[
    list[str] | None,
    typer.Option("--only", help="NAME,...: consider only these accelerator types"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]
ProfileOpt = Annotated[
    list[Path] | None,
    typer.Option("--profile", help="profile file (hetserve profile --out): the deployment it "
                 "measured uses its fitted coefficients (repeatable)"),
]


def parse_duration(text: str, option: str) -> float:
    """'2s', '50ms', '500us', '0.05' (seconds) -> seconds."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(ms|us|s|m|h)?\s*", text)
    if not found:
        raise HetserveError(f"{option} '{text}': expected a duration like 2s, 50ms, 15m, 1h "
                            "or 0.05")
    scale = {"ms": 1e-3, "us": 1e-6, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[found[2]]
    value = float(found[1]) * scale
    if not 0 < value < math.inf:
        raise HetserveError(f"{option} '{text}': expected a finite duration > 0")
    return value


def build_catalog(path: Path | None, prices: list[str] | None, avail: list[str] | None,
                  only: list[str] | None = None, profiles: list[Path] | None = None) -> Catalog:
    cat = apply_available(load_catalog(path, parse_assignments(prices or [], "--price")),
                          avail or [])
    names = parse_names(only, "--only")
    if profiles:  # before --only: a profile of a type left out is no error
        from hetserve.profile.file import apply_profiles

        cat = apply_profiles(cat, profiles)
    return cat.only(names) if names is not None else cat


def _finite(data):
    """NaN and infinities (a percentile of nothing, an unmet limit) become null: strict JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data


def _emit_json(data) -> None:
    sys.stdout.write(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


ImportSkyOpt = Annotated[
    Path | None, typer.Option("--import-skypilot", help="SkyPilot vms.csv: per-device prices "
                              "and instance types of the accelerators it carries")
]
RegionOpt = Annotated[
    str | None, typer.Option("--region", help="with --import-skypilot: only this region")
]
CloudOpt = Annotated[
    str | None, typer.Option("--cloud", help="with --import-skypilot: the cloud (default: the "
                             "CSV's folder name, e.g. .../aws/vms.csv)")
]
CatalogOutOpt = Annotated[
    Path | None, typer.Option("--out", help="with --import-skypilot: write the prices as a "
                              "catalog file for --catalog")
]


@app.command("catalog")
def catalog_cmd(catalog: CatalogOpt = None, price: PriceOpt = None, available: AvailOpt = None,
                only: OnlyOpt = None, as_json: JsonOpt = False,
                import_skypilot: ImportSkyOpt = None, region: RegionOpt = None,
                cloud: CloudOpt = None, out_file: CatalogOutOpt = None) -> None:
    """Print the accelerator catalog, or import prices from a SkyPilot catalog."""
    if import_skypilot is None:
        for option, value in (("--region", region), ("--cloud", cloud), ("--out", out_file)):
            if value is not None:
                raise HetserveError(f"{option} goes with --import-skypilot")
    cat = build_catalog(catalog, price, available, only)
    if import_skypilot is not None:
        return _import_skypilot(import_skypilot, region, cloud, out_file, as_json, cat)
    if as_json:
        _emit_json([a.model_dump() | {"available": cat.availability(a.name)} for a in cat])
        return
    table = Table(title="Accelerator catalog", title_justify="left")
    for col in ("name", "kind", "mem GiB", "BW GB/s", "BF16 TF", "FP8 TF", "link",
                "link GB/s", "per node", "$/h", "spot $/h", "avail", "eta_c", "eta_m",
                "step ms"):
        table.add_column(col, justify="left" if col in ("name", "kind", "link") else "right")
    for a in cat:
        avail = cat.availability(a.name)
        table.add_row(
            a.name, a.kind, f"{a.memory_gb:g}", f"{a.memory_bw_gbs:g}", f"{a.bf16_tflops:g}",
            f"{a.fp8_tflops:g}" if a.fp8_tflops else "-", a.link, f"{a.link_gbs:g}",
            str(a.max_per_node), f"{a.usd_per_hour:.3g}",
            f"{a.spot_usd_per_hour:.3g}" if a.spot_usd_per_hour else "-",
            "-" if avail is None else str(avail),
            f"{a.eta_compute:.2f}", f"{a.eta_memory:.2f}", f"{a.step_overhead_ms:g}",
        )
    out.print(table)


def _import_skypilot(path: Path, region: str | None, cloud: str | None, out_file: Path | None,
                     as_json: bool, cat: Catalog) -> None:
    """catalog --import-skypilot: the imported prices as a table (or JSON), and the file."""
    from hetserve.catalog.skypilot import name_counts, read_vms_csv, to_catalog_yaml

    check_output(out_file, "--out")
    result = read_vms_csv(path, cloud, region, cat)
    if out_file is not None:
        write_text(out_file, to_catalog_yaml(result))
    if as_json:
        _emit_json(result.as_dict() | {"written": str(out_file) if out_file else None})
        return
    scope = f"region {result.region}" if result.region else "all regions"
    table = Table(title=f"SkyPilot prices: {path} (cloud {result.cloud}, {scope}, "
                  f"{result.rows} rows)", title_justify="left")
    for col in ("type", "SkyPilot", "$/h per device", "spot $/h", "instance", "GPUs",
                "region", "offers"):
        table.add_column(col, justify="left" if col in ("type", "SkyPilot", "instance",
                                                        "region") else "right")
    for imp in result.imported:
        table.add_row(imp.name, imp.skypilot, f"{imp.usd_per_hour:.4g}",
                      f"{imp.spot_usd_per_hour:.4g}" if imp.spot_usd_per_hour else "-",
                      imp.cheapest.instance_type, str(imp.cheapest.gpus), imp.cheapest.region,
                      str(len(imp.offers)))
    out.print(table)
    if result.unmapped:
        out.print(f"not in the catalog: {name_counts(result.unmapped)}")
    if result.skipped:
        out.print(f"skipped: {name_counts(result.skipped)}")
    if out_file is not None:
        out.print(f"wrote {out_file} (use it with --catalog {out_file})")


@app.command("models")
def models_cmd(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="show these models (a bundled name, or a Hugging Face "
        "config.json path; repeatable) instead of every bundled one")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the bundled model architectures (or the ones --model names)."""
    from hetserve.models import get_model

    models = [get_model(m) for m in model] if model else bundled_models()
    if as_json:
        _emit_json([m.model_dump() | {"params": m.params} for m in models])
        return
    table = Table(title="Models" if model else "Bundled models (or pass a config.json path)",
                  title_justify="left")
    for col in ("name", "params", "layers", "hidden", "heads", "kv heads", "head dim",
                "interm.", "vocab", "dtype", "KV KiB/token"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for m in models:
        table.add_row(m.name, f"{m.params / 1e9:.2f}B", str(m.layers), str(m.hidden),
                      str(m.heads), str(m.kv_heads), str(m.head_dim), str(m.intermediate),
                      str(m.vocab), m.default_dtype, f"{m.kv_bytes_per_token() / 1024:g}")
    out.print(table)


def _finish(as_json: bool, data, tables, written) -> None:
    """Print JSON or the tables, then the files written."""
    if as_json:
        _emit_json(data())
        return
    for table in tables():
        out.print(table)
    for path in written:
        if path:
            out.print(f"wrote {path}")


TtftOpt = Annotated[str, typer.Option("--ttft", help="TTFT limit (p90), e.g. 2s")]
TpotOpt = Annotated[str, typer.Option("--tpot", help="TPOT limit (p90), e.g. 50ms")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="bf16, fp16, fp8 or int4")]
EngineOpt = Annotated[str, typer.Option(
    "--engine", help="serving engine: vllm, vllm-v0 (before 0.6), sglang or trt-llm")]
StepMarginOpt = Annotated[float | None, typer.Option(
    "--step-margin", help="plan as if every engine step took this share longer than the model "
    "says (0.1: 10%; the model is 8-15% off a hand-written engine's steps on an H200); "
    "simulate: default the plan's")]
AttainmentOpt = Annotated[float, typer.Option(
    "--attainment", help="share of requests that must meet both limits (latencies are sized "
    "for it); plan: classes holding together no more than the rest may be served best effort")]


WorkloadOpt = Annotated[
    str, typer.Option("--workload", "-w", help="azure-conv, azure-code, or a .csv/.jsonl trace")
]
RateOpt = Annotated[
    float | None, typer.Option("--rate", help="scale the trace to this many req/s")
]
InEdgesOpt = Annotated[
    str | None, typer.Option("--input-edges", help="prompt-length bucket edges, e.g. 1,512,2048")
]
OutEdgesOpt = Annotated[
    str | None, typer.Option("--output-edges", help="output-length bucket edges")
]


@app.command("workload")
def workload_cmd(workload: Annotated[str, typer.Argument(help="azure-conv, azure-code or file")],
                 rate: RateOpt = None, input_edges: InEdgesOpt = None,
                 output_edges: OutEdgesOpt = None, as_json: JsonOpt = False) -> None:
    """Show a workload's request classes."""
    wl = classify(load_trace(workload), grid_from_options(input_edges, output_edges), rate)
    rows = [
        {"class": c.name, "requests": c.count, "rate": c.rate, "mean_input": c.mean_input,
         "mean_output": c.mean_output} for c in wl.classes
    ]
    if as_json:
        _emit_json({"workload": wl.name, "requests": len(wl.trace), "rate": wl.rate,
                    "classes": rows})
        return
    own = len(wl.trace) / wl.trace.duration if wl.trace.duration > 0 else 0.0
    scaled = (f"{own:.2f} req/s, its timing scaled to {wl.rate:.2f} req/s"
              if rate is not None else f"{wl.rate:.2f} req/s")
    table = Table(title=f"{wl.name}: {len(wl.trace)} requests over {wl.trace.duration:.0f}s at "
                  f"{scaled}, {len(wl.classes)} classes", title_justify="left")
    for col in ("class", "requests", "req/s", "mean prompt", "mean output"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for r in rows:
        table.add_row(r["class"], str(r["requests"]), f"{r['rate']:.3f}",
                      f"{r['mean_input']:.0f}", f"{r['mean_output']:.0f}")
    out.print(table)


@app.command("estimate")
def estimate_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="bundled name or config.json")],
    workload: WorkloadOpt = "azure-conv",
    ttft: TtftOpt = "2s",
    tpot: TpotOpt = "50ms",
    rate: RateOpt = None,
    dtype: DtypeOpt = None,
    engine: EngineOpt = "vllm",
    attainment: AttainmentOpt = 0.99,
    catalog: CatalogOpt = None,
    price: PriceOpt = None,
    available: AvailOpt = None,
    only: OnlyOpt = None,
    input_edges: InEdgesOpt = None,
    output_edges: OutEdgesOpt = None,
    profile: ProfileOpt = None,
    as_json: JsonOpt = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="write the best-accelerator map")]
    = None,
) -> None:
    """Per accelerator x TP: sustainable rate and tokens per dollar of every request class."""
    import hetserve

    check_plot(plot)
    est = hetserve.estimate(model, workload=workload, rate=rate,
                            ttft=parse_duration(ttft, "--ttft"),
                            tpot=parse_duration(tpot, "--tpot"),
                            catalog=build_catalog(catalog, price, available, only, profile),
                            dtype=dtype,
                            grid=grid_from_options(input_edges, output_edges), engine=engine,
                            attainment=attainment)
    if plot:
        from hetserve.perf.plot import plot_best_map

        plot_best_map(est, plot)
    from hetserve.cli.tables import estimate_tables

    _finish(as_json, est.as_dict, lambda: estimate_tables(est), [plot])


@app.command("calibrate")
def calibrate_cmd(
    data: Annotated[Path | None, typer.Option("--data", help="measurements CSV")] = None,
    engine: Annotated[str | None, typer.Option(
        "--engine", help="only the measurements of this engine")] = None,
    catalog: CatalogOpt = None,
    price: PriceOpt = None,
    profile: ProfileOpt = None,
    fit: Annotated[bool, typer.Option(
        "--fit", help="fit each deployment's coefficients to its rows (those with at least 6) "
        "and report the error before and after")] = False,
    hold_back: Annotated[float | None, typer.Option(
        "--hold-back", help="--fit: share of each deployment's load shapes held back (default "
        "0.25)")] = None,
    out_file: Annotated[Path | None, typer.Option(
        "--out", help="--fit: write the fits as a catalog YAML (use with --catalog)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare the performance model with published serving measurements, or with measured
    step times (a CSV with phase and seconds columns, docs/design.md 5.8)."""
    from hetserve.profile.steps import compare_steps, is_step_file, read_step_times
    from hetserve.sim.calibrate import METRICS, calibrate, median_abs_error, of_engine

    steps = data is not None and is_step_file(data)
    if fit:
        check_output(out_file, "--out")
        _calibrate_fit(build_catalog(catalog, price, None, None, profile), data, engine,
                       0.25 if hold_back is None else hold_back, out_file, as_json, steps)
        return
    if out_file is not None:
        raise HetserveError("--out goes with --fit")
    if hold_back is not None:
        raise HetserveError("--hold-back applies only with --fit")
    cat = build_catalog(catalog, price, None, None, profile)
    if steps:
        points = compare_steps(of_engine(read_step_times(data), engine, data), cat)
    else:
        points = calibrate(cat, data, engine)
    median = median_abs_error(points)
    if as_json:
        _emit_json({
            "points": [{"id": p.id, "predicted": p.predicted, "measured": p.measured,
                        "error": p.error} for p in points],
            "median_abs_error": median,
        })
        return
    table = Table(title="Performance model vs measured step times (ms)" if steps else
                  "Performance model vs published measurements (closed-loop simulation)",
                  title_justify="left")
    for col in ("id", "metric", "predicted", "measured", "error"):
        table.add_column(col, justify="left" if col in ("id", "metric") else "right")
    for p in points:
        style = "red" if abs(p.error) > 0.5 else ("yellow" if abs(p.error) > 0.25 else "")
        unit = METRICS.get(p.metric, "ms")
        table.add_row(p.id, f"{p.metric} ({unit})", f"{p.predicted:.1f}", f"{p.measured:.1f}",
                      f"[{style}]{p.error:+.1%}[/]" if style else f"{p.error:+.1%}")
    out.print(table)
    worst = max(points, key=lambda p: max(p.predicted / p.measured, p.measured / p.predicted))
    out.print(f"median absolute error: {median:.1%} over {len(points)} points; worst: {worst.id} "
              f"({worst.error:+.0%})")
    # optimistic: the model predicts more throughput or less latency than was measured
    rosy = [p for p in points
            if (p.error if METRICS.get(p.metric) == "tok/s" else -p.error) > 0.25]
    if rosy:
        out.print(f"[yellow]optimistic by more than 25%[/] (the model faster than measured) "
                  f"at {len(rosy)} points: " + ", ".join(f"{p.id} ({p.error:+.0%})" for p in rosy))


def _calibrate_fit(cat: Catalog, data: Path | None, engine: str | None, hold_back: float,
                   out_file: Path | None, as_json: bool, steps: bool = False) -> None:
    from rich.progress import Progress

    from hetserve.profile.fit import MIN_ROWS, fit_measurements
    from hetserve.profile.steps import (
        MIN_STEP_ROWS,
        fit_step_times,
        read_step_times,
        step_deployment,
    )
    from hetserve.sim.calibrate import measured_deployment, of_engine, read_measurements

    if not 0 <= hold_back < 1:
        raise HetserveError(f"--hold-back: expected a share in [0, 1), got {hold_back}")
    rows = of_engine(read_step_times(data) if steps else read_measurements(data), engine, data)
    for row in rows:  # bad input is refused before any work
        (step_deployment if steps else measured_deployment)(row, cat)
    with Progress(console=_console(stderr=True), transient=True) as bar:
        task = bar.add_task("fitting", total=None)
        groups = (fit_step_times if steps else fit_measurements)(rows, cat, hold_back)
        bar.update(task, completed=1, total=1)
    fitted = [g for g in groups if g.fit is not None]
    if out_file is not None:
        by_acc: dict[str, list] = {}
        for g in fitted:
            if g.report.kept_model:  # the catalog's own coefficients: nothing to write
                continue
            by_acc.setdefault(g.accelerator, []).append(
                g.fit.model_dump(exclude={"source"}) | {"source": str(data or "published")})
        write_text(out_file, yaml.safe_dump({"accelerators": [
            {"name": name, "fits": fits} for name, fits in by_acc.items()]}, sort_keys=False))
    if as_json:
        _emit_json({"deployments": [{
            "deployment": g.label, "rows": g.rows,
            "fit": g.fit.model_dump() if g.fit else None,
            "report": g.report.model_dump() if g.report else None} for g in groups]})
        return
    table = Table(title="Coefficients fitted per deployment (" + (
        "least squares on the step times)" if steps else
        "closed-loop simulation of each row)"), title_justify="left",
        caption=f"{len(fitted)} of {len(groups)} deployments have enough rows to fit "
        f"({MIN_STEP_ROWS if steps else MIN_ROWS})", caption_justify="left")
    for col in ("deployment", "rows", "eta_compute", "eta_memory", "overhead ms", "host us/seq",
                "median |error| before -> after", "held back before -> after"):
        table.add_column(col, justify="left" if col == "deployment" else "right",
                         no_wrap=col == "deployment")
    for g in groups:
        if g.fit is None:
            table.add_row(g.label, str(g.rows), *["-"] * 6)
            continue
        r = g.report
        held = (f"{r.held_back_before:.1%} -> {r.held_back_after:.1%}"
                if r.held_back_after is not None else "-")
        mark = " (model kept)" if r.kept_model else ""
        table.add_row(g.label + mark, str(g.rows), f"{g.fit.eta_compute:.3f}",
                      f"{g.fit.eta_memory:.3f}", f"{g.fit.step_overhead_ms:.2f}",
                      f"{g.fit.seq_host_us:.0f}", f"{r.before:.1%} -> {r.after:.1%}", held)
    kept = [g for g in fitted if g.report.kept_model]
    if kept:
        table.caption += ("; (model kept): the fit found reproduces the rows worse, fitted "
                          "or held back, so the catalog's coefficients stay (and --out leaves "
                          "the deployment out)")
    out.print(table)
    if out_file is not None:
        out.print(f"wrote {out_file}")


ModelsOpt = Annotated[
    list[str],
    typer.Option("--model", "-m", help="NAME[:workload[:rate[:ttft[:tpot]]]] (repeatable)"),
]


@app.command("plan")
def plan_cmd(
    model: ModelsOpt,
    workload: WorkloadOpt = "azure-conv",
    rate: RateOpt = None,
    ttft: TtftOpt = "2s",
    tpot: TpotOpt = "50ms",
    objective: Annotated[str, typer.Option("--objective", help="cost or throughput")] = "cost",
    budget: Annotated[float | None, typer.Option("--budget", help="USD per hour")] = None,
    dtype: DtypeOpt = None,
    engine: EngineOpt = "vllm",
    attainment: AttainmentOpt = 0.99,
    catalog: CatalogOpt = None,
    price: PriceOpt = None,
    available: AvailOpt = None,
    only: OnlyOpt = None,
    input_edges: InEdgesOpt = None,
    output_edges: OutEdgesOpt = None,
    profile: ProfileOpt = None,
    max_devices: Annotated[int | None, typer.Option(
        "--max-devices", help="at most this many devices (TP x PP) per replica")] = None,
    step_margin: StepMarginOpt = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="simulate the plan; lower the capacity of configs that miss the SLO "
        "target and re-solve")] = False,
    target: Annotated[float | None, typer.Option(
        "--target", help="--verify: SLO attainment to reach (share of requests; default: "
        "--attainment)")] = None,
    rounds: Annotated[int | None, typer.Option(
        "--rounds", help="--verify: at most this many rounds (default 5)")] = None,
    prove: Annotated[bool, typer.Option(
        "--prove/--no-prove", help="simulate the plan and every homogeneous baseline on the "
        "trace; quote savings only between plans that reach the attainment target")] = True,
    time_limit: Annotated[float, typer.Option(
        "--time-limit", help="seconds the solver may take; past it, the best plan found, with "
        "the gap to the optimum it proved (a warning)")] = 60.0,
    out_file: Annotated[Path | None, typer.Option("--out", help="write the plan file")] = None,
    as_json: JsonOpt = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="cost by accelerator, vs baselines")]
    = None,
) -> None:
    """The cheapest heterogeneous plan (or the most throughput within a budget), solved exactly."""
    from hetserve.plan import model_demands, parse_model_request, solve_plan

    for given, option in ((target, "--target"), (rounds, "--rounds")):
        if given is not None and not verify:
            raise HetserveError(f"{option} applies only with --verify")
    check_output(out_file, "--out")
    check_plot(plot)
    requests = [parse_model_request(m, parse_duration) for m in model]
    demands = model_demands(requests, workload=workload, rate=rate,
                            ttft=parse_duration(ttft, "--ttft"),
                            tpot=parse_duration(tpot, "--tpot"), dtype=dtype,
                            max_devices=max_devices,
                            grid=grid_from_options(input_edges, output_edges), engine=engine,
                            attainment=attainment, step_margin=step_margin or 0.0)
    cat = build_catalog(catalog, price, available, only, profile)
    if verify:
        from hetserve.sim.verify import check_verify_options
        from hetserve.sim.verify import verify as verify_plan

        target = attainment if target is None else target
        rounds = 5 if rounds is None else rounds
        check_verify_options(target, rounds)
        log = _console(stderr=True) if as_json else out
        result, _ = verify_plan(demands, cat, objective, budget, target=target, rounds=rounds,
                                on_round=lambda r: log.print(_round_line(r, target)),
                                time_limit=time_limit)
        v = result.verification
        verdict = "target met" if v.met else "[red]target not met[/]"
        log.print(f"verified plan: round {v.chosen} of {v.rounds}, SLO attainment "
                  f"{v.slo_attainment:.2%} in simulation (target {target_pct(v.target)}): "
                  f"{verdict}")
    else:
        with _console(stderr=True).status("solving", spinner="dots"):
            result = solve_plan(demands, cat, objective, budget, time_limit=time_limit)
    gap = gap_warning(result)
    if gap:
        _console(stderr=True).print(f"[yellow]warning:[/] {gap}")
    if prove:
        from hetserve.sim.simulate import simulation_limit
        from hetserve.sim.verify import prove as prove_plan

        with _console(stderr=True).status("simulating the plan and its baselines",
                                          spinner="dots"):
            result = prove_plan(result)
        if simulation_limit(result):
            _console(stderr=True).print(f"[yellow]not proven, so no saving quoted:[/] "
                                        f"{simulation_limit(result)}")
        elif not verify and result.misses:
            short = by_model(result.misses)
            _console(stderr=True).print(
                f"[yellow]warning:[/] in simulation the plan falls short of its attainment "
                f"target ({short} of requests within the SLO): add --verify to re-plan with "
                "the capacities simulation finds")
    if out_file:
        result.save(out_file)
    if plot:
        from hetserve.plan.plot import plot_plan_costs

        plot_plan_costs(result, plot)
    from hetserve.cli.tables import plan_tables

    _finish(as_json, result.to_dict, lambda: plan_tables(result), [out_file, plot])
    if result.verification is not None and not result.verification.met:
        raise typer.Exit(VERIFY_MISSED)


VERIFY_MISSED = 3  # exit code of plan --verify when no round reached the target
COST_GAP = 0.001  # $/h: cost plans are proven to the cent (coupled ones to LINKED_GAP of their
# cost); a wider gap is said aloud


def gap_warning(plan) -> str:
    """'' when the solver proved the plan optimal (to the cent, or to its gap for throughput
    plans); else how far from the optimum it may be, and what to do."""
    from hetserve.plan.milp import LINKED_GAP

    s = plan.solver
    if s.status == "optimal" and (plan.objective != "cost" or s.abs_gap <= COST_GAP
                                  or s.gap <= LINKED_GAP):
        return ""
    far = (f"${s.abs_gap:.2f}/h ({s.gap:.1%}) above the least cost proven possible "
           f"(${s.bound:.2f}/h)" if plan.objective == "cost" else
           f"{s.gap:.1%} below the most throughput proven possible")
    return (f"the solver stopped ({s.status}) after {s.seconds:.1f} s with this plan up to "
            f"{far}: raise --time-limit to close the gap")


def _round_line(r, target: float) -> str:
    groups = ", ".join(f"{g['replicas']} x {g['config']} "
                       + (f"{g['slo_attainment']:.1%}" if g["requests"] else "no requests")
                       for g in r.result.group_rows())
    mark = "[green]meets[/]" if r.met(target) else "[red]misses[/]"
    per_model = r.result.model_attainment()
    each = f" ({by_model(per_model)})" if len(per_model) > 1 else ""
    line = (f"verify round {r.number}: ${r.plan.usd_per_hour:.2f}/h, SLO attainment "
            f"{r.attainment:.2%}{each} ({mark} {target_pct(target)}); groups: {groups}")
    if r.lowered:
        line += "; lowering " + ", ".join(f"{n} x{f:.2f}" for n, f in r.lowered.items())
    if r.lowered_classes:
        line += f"; and {len(r.lowered_classes)} classes on their configs"
    if r.raised:
        line += "; room to spare, raising " + ", ".join(f"{n} x{f:.2f}"
                                                        for n, f in r.raised.items())
    return line


@app.command("simulate")
def simulate_cmd(
    plan_file: Annotated[Path, typer.Argument(help="plan file (hetserve plan --out)")],
    workload: Annotated[str | None, typer.Option(
        "--workload", "-w", help="trace to replay (default: each model's planned workload)")]
    = None,
    rate: Annotated[float | None, typer.Option(
        "--rate", help="req/s per model (default: the rate the plan serves)")] = None,
    arrivals: Annotated[str, typer.Option(
        "--arrivals", help="trace (timestamps scaled to the rate), as-is, or poisson")]
    = "trace",
    clients: Annotated[int | None, typer.Option(
        "--clients", help="closed loop: this many clients sending back to back")] = None,
    requests: Annotated[int | None, typer.Option(
        "--requests", help="replay N requests (more than the trace holds: it repeats; closed "
        "loop: send N)")] = None,
    router: Annotated[str, typer.Option(
        "--router", help="plan (by prompt range, spilling backed-up prefill), round-robin, "
        "least-outstanding; simulation-only baselines that read the true output: size-aware, "
        "plan-oracle (per-class shares, static)")] = "plan",
    compare: Annotated[bool, typer.Option(
        "--compare", help="run every router policy on the same arrivals")] = False,
    seed: Annotated[int, typer.Option("--seed", help="seed for Poisson arrivals")] = 0,
    engine: Annotated[str | None, typer.Option(
        "--engine", help="run every group on this engine instead of the plan's")] = None,
    step_margin: StepMarginOpt = None,
    catalog: CatalogOpt = None,
    profile: ProfileOpt = None,
    as_json: JsonOpt = False,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="write latency CDFs per replica group (PNG)")] = None,
    per_request: Annotated[Path | None, typer.Option(
        "--per-request", help="write per-request results (CSV); without it (and --plot) only "
        "counters and quantile sketches are kept, in memory that does not grow with the "
        "trace")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", help="replay in this many local processes (or, with --ray, this many "
        "pieces at most): models apart, a long trace in windows of time")] = 1,
    ray: Annotated[str | None, typer.Option(
        "--ray", help="replay the pieces on Ray: local (start one here), auto (join the "
        "running cluster) or the cluster's address")] = None,
) -> None:
    """Replay a trace against a plan: SLO attainment, latency percentiles, cost, tokens/$."""
    from hetserve.plan import load_plan
    from hetserve.sim.router import POLICIES
    from hetserve.sim.simulate import simulate

    check_plot(plot)
    check_output(per_request, "--per-request")
    plan = load_plan(plan_file)
    cat = build_catalog(catalog, None, None) if catalog else None
    if profile:  # on the plan's own accelerator rows unless --catalog replaces them
        from hetserve.profile.file import apply_profiles

        cat = apply_profiles(cat or Catalog(plan.accelerators), profile)
    traces = load_trace(workload) if workload else None
    policies = list(dict.fromkeys([router, *POLICIES])) if compare else [router]
    results = [simulate(plan, traces, catalog=cat, router=p, arrivals=arrivals, rate=rate,
                        clients=clients, requests=requests, seed=seed, engine=engine,
                        per_request=bool(plot or per_request), workers=workers, ray=ray,
                        step_margin=step_margin)
               for p in policies]
    first = results[0]
    unplanned = first.summary()["unplanned"]
    other = sorted({m.workload for m in plan.models} - {traces.name} if traces else ())
    if unplanned:
        made = f" (the plan was made for {', '.join(other)})" if other else ""
        _console(stderr=True).print(
            f"[yellow]warning:[/] {unplanned:,} of {len(first):,} requests fall in no class the "
            f"plan routes{made}: they go to the least loaded replica that holds them")
    if plot:
        from hetserve.sim.plot import plot_latency_cdf

        plot_latency_cdf(first, plot)
    if per_request:
        _write_csv(per_request, first.per_request())
    slo = "; ".join(f"{m}: TTFT <= {t:g}s, TPOT <= {p * 1e3:g}ms"
                    for m, (t, p) in zip(first.models, first.slo, strict=True))

    def data() -> dict:
        body = first.as_dict()
        if compare:
            body["compare"] = [r.summary() for r in results]
        return body

    from hetserve.cli.tables import sim_tables

    _finish(as_json, data, lambda: sim_tables(results, slo), [plot, per_request])


def _write_csv(path: Path, columns: dict[str, list]) -> None:
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    writer.writerows(zip(*columns.values(), strict=True))
    write_text(path, text.getvalue())


@app.command("melange")
def melange_cmd(
    file: Annotated[Path, typer.Argument(help="Mélange input JSON")],
    continuous: Annotated[bool, typer.Option(
        "--continuous", help="split classes freely (formulation A) instead of by slice_factor")]
    = False,
    as_json: JsonOpt = False,
) -> None:
    """Solve a problem in Mélange's input format exactly."""
    from hetserve.plan.interop import solve_melange

    res = solve_melange(file, continuous)
    if as_json:
        _emit_json(res)
        return
    gpus = ", ".join(f"{n} x {name}" for name, n in res["gpus"].items() if n)
    out.print(f"${res['cost']:.2f}/h: {gpus} ({res['mode']}, {res['solve_seconds'] * 1e3:.1f} ms)")


@app.command("solve")
def solve_cmd(file: Annotated[Path, typer.Argument(help="abstract problem JSON")],
              as_json: JsonOpt = False) -> None:
    """Minimise the makespan of an abstract problem with measured throughputs (formulation B)."""
    from hetserve.plan.interop import solve_abstract

    res = solve_abstract(file)
    if as_json:
        _emit_json(res)
        return
    used = ", ".join(f"{n} x {c}" for c, n in res["replicas"].items() if n)
    out.print(f"makespan {res['makespan']:.2f}s with {used} (${res['cost']:.2f}/h, "
              f"{res['solve_seconds'] * 1e3:.1f} ms)")


def _version(value: bool) -> None:
    if value:
        import hetserve

        out.print(f"hetserve {hetserve.__version__}")
        raise typer.Exit()


_DEBUG = False


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show the traceback of an internal "
                                        "error")] = False,
) -> None:
    """hetserve: cost-efficient LLM serving on heterogeneous accelerators."""
    global _DEBUG
    _DEBUG = debug


def _usage_error_type() -> type[Exception]:
    """click's ClickException as the installed typer carries it (vendored, or a dependency)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


@contextmanager
def _stdout_reserved():
    """Standard output carries hetserve's tables and JSON only: anything a C library writes to
    file descriptor 1 (a solver banner, a log line) goes to standard error instead."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no real stdout (embedded, captured)
        yield
        return
    previous = sys.stdout
    sys.stdout = os.fdopen(saved, "w", encoding=previous.encoding, errors="replace",
                           closefd=False)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        sys.stdout = previous


def main(argv: list[str] | None = None) -> None:
    """Entry point. Exit codes: 0 done, 2 bad input or usage, 3 a verified plan missed its
    target, 1 an internal error (reported in one line; the traceback with --debug)."""
    usage_error = _usage_error_type()
    with _stdout_reserved():
        try:
            code = app(args=argv, standalone_mode=False, prog_name="hetserve")
        except HetserveError as exc:
            code = _fail(str(exc), 2)
        except usage_error as exc:
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "hetserve"
            if not _one_line(exc.format_message()):  # no arguments: the help was printed
                sys.exit(0)
            code = _fail(f"{where}: {_one_line(exc.format_message())} (see '{where} --help')",
                         getattr(exc, "exit_code", 2))
        except (typer.Abort, KeyboardInterrupt):
            code = _fail("interrupted", 130)
        except typer.Exit as exc:  # older typer raises it through standalone_mode=False
            code = exc.exit_code
        except Exception as exc:
            if _DEBUG:
                raise
            command = " ".join(["hetserve", *(argv if argv is not None else sys.argv[1:])[:1]])
            code = _fail(f"internal error in '{command}': {type(exc).__name__}: "
                         f"{_one_line(exc)}. This is a bug: please report it with the command "
                         "line (run with --debug for the traceback)", 1)
    sys.exit(code if isinstance(code, int) else 0)


# the running half's verbs live in their own module (cli/run.py)
from hetserve.cli.run import emulate_cmd, serve_cmd, up_cmd  # noqa: E402  (needs nothing above)

app.command("emulate")(emulate_cmd)
app.command("serve")(serve_cmd)
app.command("up")(up_cmd)

from hetserve.cli.profile import profile_cmd  # noqa: E402

app.command("profile")(profile_cmd)

from hetserve.cli.deploy import deploy_cmd  # noqa: E402

app.command("deploy")(deploy_cmd)

from hetserve.cli.autoscale import autoscale_cmd  # noqa: E402

app.command("autoscale")(autoscale_cmd)


def _fail(message: str, code: int) -> int:
    sys.stdout.flush()
    sys.stderr.write(f"error: {message}\n")  # one line, never wrapped
    return code
