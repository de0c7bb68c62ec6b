"""The performance model against measured GPU step times, before and after fitting.

1. Vidur's operator profiles (../shared/data/calibration/kernel_profiles, MIT, measured by
   Vidur's authors on A100-80GB, H100-80GB and A40): the time of each transformer layer's
   matmuls (QKV, attention output, MLP up/gate and down projections) against the tokens in the
   batch, per TP degree, times the model's layers, as `linear` step-time rows. They pin
   eta_compute (large token counts) and eta_memory (small ones) of each GPU independently of
   the end-to-end measurements the catalog was calibrated on.
2. Step times measured with benchmarks/gpu_steps.py (src/hetserve/perf/data/step_times.csv),
   where a session had a GPU: prefill, decode and linear steps of random-weight models.

Each deployment is fitted on three quarters of its rows (profile.steps.fit_steps) and the
error is reported on both parts. Prints the tables and writes
benchmarks/results/step_fit.json.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path

from hetserve.catalog import load_catalog
from hetserve.errors import HetserveError
from hetserve.models import get_model
from hetserve.profile.steps import StepTime, fit_step_times, read_step_times, step_deployment

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT.parent / "shared" / "data" / "calibration" / "kernel_profiles"
MEASURED = ROOT / "src" / "hetserve" / "perf" / "data" / "step_times.csv"
GPUS = {"a100": "A100-80GB", "h100": "H100-SXM", "a40": "A40"}
MODELS = {"llama-2-7b-hf": "llama-2-7b", "llama-2-70b-hf": "llama-2-70b",
          "meta-llama-3-8b": "llama-3.1-8b"}
MATMULS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")


def vidur_rows(path: Path, catalog) -> list[StepTime]:
    """One `linear` row per (TP degree, token count) of a Vidur mlp.csv: the layer's matmuls
    (median ms, the mean of repeated rows) times the model's layers."""
    gpu, _, model = path.stem.removesuffix("_mlp").partition("_")
    name = MODELS[model]
    acc = GPUS[gpu]
    per: dict[tuple[int, int], list[float]] = {}
    for row in csv.DictReader(path.open()):
        ms = sum(float(row[f"time_stats.{op}.median"]) for op in MATMULS)
        per.setdefault((int(row["num_tensor_parallel_workers"]), int(row["num_tokens"])),
                       []).append(ms)
    out = []
    for (tp, tokens), values in sorted(per.items()):
        r = StepTime(id=f"vidur-{gpu}-{model}-tp{tp}-{tokens}", gpu=acc, model=name,
                     dtype="fp16", tp=tp, phase="linear", batch=1, tokens=tokens,
                     seconds=statistics.fmean(values) * 1e-3, source="Vidur (MIT)")
        out.append(r)
    layers = get_model(name).layers
    return [r.model_copy(update={"seconds": r.seconds * layers}) for r in out]


def fit_table(title: str, rows: list[StepTime], catalog) -> list[dict]:
    """Fit each deployment that fits in memory; print and return one record a deployment."""
    print(f"\n{title}")
    print(f"{'deployment':38s} {'rows':>5s} {'eta_compute':>14s} {'eta_memory':>14s} "
          f"{'overhead ms':>15s} {'median |error|':>16s} {'held back':>16s}")
    by_dep: dict[tuple, list[StepTime]] = {}
    for r in rows:
        by_dep.setdefault((r.gpu, r.model, r.tp, r.dtype), []).append(r)
    out = []
    for (gpu, model, tp, _), group in by_dep.items():
        try:
            dep = step_deployment(group[0], catalog)
        except HetserveError as exc:
            why = str(exc).split(" does not fit: ")[-1]
            print(f"{gpu + ' TP' + str(tp) + ' ' + model:38s} {len(group):5d}  skipped: {why}")
            continue
        (g,) = fit_step_times(group, catalog)
        if g.fit is None:
            print(f"{g.label:38s} {g.rows:5d}  too few rows to fit")
            continue
        eta_c, eta_m, h0, _ = dep.efficiency
        f, rep = g.fit, g.report
        held = (f"{rep.held_back_before:7.1%} -> {rep.held_back_after:5.1%}"
                if rep.held_back_after is not None else "-")
        overhead = "(not in linear)" if all(r.phase == "linear" for r in group) else \
            f"{h0 * 1e3:5.2f} -> {f.step_overhead_ms:4.2f}"
        print(f"{g.label:38s} {g.rows:5d} {eta_c:6.3f} -> {f.eta_compute:5.3f} "
              f"{eta_m:6.3f} -> {f.eta_memory:5.3f} {overhead:>15s} "
              f"{rep.before:7.1%} -> {rep.after:5.1%} {held:>16s}")
        out.append({"deployment": g.label, "rows": g.rows,
                    "before": {"eta_compute": eta_c, "eta_memory": eta_m,
                               "step_overhead_ms": h0 * 1e3},
                    "fit": f.model_dump(), "report": rep.model_dump()})
    return out


def main() -> None:
    start = time.perf_counter()
    catalog = load_catalog()
    result: dict = {}
    if KERNELS.is_dir():
        rows = [r for p in sorted(KERNELS.glob("*_mlp.csv")) for r in vidur_rows(p, catalog)]
        result["vidur_linear"] = fit_table(
            "Vidur operator profiles: the layers' matmuls (linear rows), model vs measured",
            rows, catalog)
    else:
        print(f"{KERNELS}: not here, Vidur's profiles skipped")
    if MEASURED.is_file():
        result["measured_steps"] = fit_table(
            f"Step times measured on a GPU ({MEASURED.relative_to(ROOT)})",
            read_step_times(MEASURED), catalog)
    else:
        print(f"\n{MEASURED.relative_to(ROOT)}: not measured yet (benchmarks/gpu_steps.py "
              "needs a GPU)")
    result["seconds"] = time.perf_counter() - start
    print(f"\n{result['seconds']:.1f} s")
    out = ROOT / "benchmarks" / "results" / "step_fit.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
