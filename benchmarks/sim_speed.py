"""Simulator speed: whole traces replayed against plans, as planned and overloaded.

Scenarios (TTFT <= 2 s, TPOT <= 50 ms, the cheapest plan; the ICML 2025 six-GPU catalog unless
said otherwise). The plans are made here, at run time, so that they follow the capacity model:

  1. Llama-3.1-8B,  azure-conv, 50 req/s
  2. Llama-3.1-8B,  azure-code, 40 req/s
  3. Llama-3.1-70B, azure-conv, 10 req/s
  4. Llama-3.1-70B, azure-code,  8 req/s
  5. Llama-3.1-8B,  azure-conv at 4x its own rate (about 22 req/s), full catalog

Each plan is replayed on its own trace (every request) at the rate it was planned for and at
twice that rate (overloaded), with the plan's router: once with the fast path (closed-form
decode runs, the decode batch served in bulk; best of 3) and once step by step, side by side.
Per-request latencies and replica choices of the two are compared. The target is 30,000
simulated requests per wall second on one core for every run.

Prints the figures and writes benchmarks/results/sim_speed.json. Exits 1 if the fast path and
step by step disagree (a relative difference above 1e-6 or a request on another replica).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

import hetserve
from hetserve.sim.simulate import simulate
from hetserve.workload import load_trace

SIX_GPUS = ["RTX4090", "A40", "RTXA6000", "L40", "A100-80GB", "H100-SXM"]  # ICML 2025
TARGET = 30_000  # simulated requests per wall second
TTFT, TPOT = 2.0, 0.05
SCENARIOS = [  # (name, model, workload, rate (None: 4x the trace's own), catalog)
    ("8B azure-conv 50/s", "llama-3.1-8b", "azure-conv", 50.0, SIX_GPUS),
    ("8B azure-code 40/s", "llama-3.1-8b", "azure-code", 40.0, SIX_GPUS),
    ("70B azure-conv 10/s", "llama-3.1-70b", "azure-conv", 10.0, SIX_GPUS),
    ("70B azure-code 8/s", "llama-3.1-70b", "azure-code", 8.0, SIX_GPUS),
    ("8B azure-conv 4x", "llama-3.1-8b", "azure-conv", None, None),
]
LOADS = (("as planned", 1.0), ("2x overloaded", 2.0))
REPEATS = 3


def figures(res) -> dict:
    s = res.summary()
    return {
        "wall_seconds": res.wall_seconds,
        "requests_per_wall_second": len(res) / res.wall_seconds,
        "simulated_seconds_per_wall_second": s["simulated_seconds"] / res.wall_seconds,
        "simulated_seconds": s["simulated_seconds"],
        "slo_attainment": s["slo_attainment"],
        "ttft_p90": s["ttft_p90"],
        "tpot_p90": s["tpot_p90"],
        "preemptions": s["preemptions"],
    }


def line(name: str, r: dict) -> str:
    return (f"{name:>13}: {r['wall_seconds']:.3f} s wall, "
            f"{r['requests_per_wall_second']:,.0f} simulated req per wall s, "
            f"{r['simulated_seconds_per_wall_second']:,.0f} simulated s per wall s "
            f"({r['simulated_seconds']:.0f} s simulated); SLO attainment "
            f"{r['slo_attainment']:.2%}, TTFT p90 {r['ttft_p90']:.3f} s, "
            f"TPOT p90 {r['tpot_p90'] * 1e3:.1f} ms, {r['preemptions']} preemptions")


def compare(fast, ref) -> tuple[dict, bool]:
    """Largest relative difference per request of TTFT, TPOT and e2e; same replica for all."""
    diff = {}
    for k in ("ttft", "tpot", "e2e"):
        a, b = getattr(fast, k), getattr(ref, k)
        both = ~(np.isnan(a) & np.isnan(b))
        rel = np.abs(a[both] - b[both]) / np.maximum(np.abs(b[both]), 1e-9)
        diff[k] = float(rel.max()) if rel.size else 0.0  # nan: one finished, the other not
    return diff, bool((fast.replica == ref.replica).all())


def main() -> None:
    scenarios, summary, failures = [], [], []
    simulate(hetserve.make_plan("llama-3.1-8b", workload="azure-conv", rate=5.0,
                                only=["A100-80GB"], baselines=False), requests=2000)  # warm-up
    for k, (name, model, workload, rate, only) in enumerate(SCENARIOS, 1):
        if rate is None:
            rate = 4 * load_trace(workload).rate
        mark = time.perf_counter()
        plan = hetserve.make_plan(model, workload=workload, rate=rate, ttft=TTFT, tpot=TPOT,
                                  only=only, baselines=False)
        plan_seconds = time.perf_counter() - mark
        replicas = sum(g.replicas for g in plan.groups)
        mix = ", ".join(f"{g.replicas} x {g.accelerator} TP{g.tp}" + (f"xPP{g.pp}" if g.pp > 1
                                                                      else "")
                        for g in plan.groups)
        planned = plan.models[0].rate * plan.scale
        catalog = "six-GPU catalog" if only else "full catalog"
        print(f"\n[{k}] {name}: plan {mix} ({replicas} replicas, ${plan.usd_per_hour:.2f}/h, "
              f"{catalog}, planned in {plan_seconds:.1f} s)")
        runs = []
        for load, mult in LOADS:
            sim_rate = planned * mult
            fast = min((simulate(plan, rate=sim_rate, per_request=True) for _ in range(REPEATS)),
                       key=lambda r: r.wall_seconds)
            ref = simulate(plan, rate=sim_rate, fast=False, per_request=True)
            rows = {"fast path": figures(fast), "step by step": figures(ref)}
            print(f"  {load}: {workload} {len(fast)} requests at {sim_rate:.1f} req/s")
            for label, r in rows.items():
                print("  " + line(label, r))
            diff, same_route = compare(fast, ref)
            speedup = ref.wall_seconds / fast.wall_seconds
            print(f"  fast vs step by step: {speedup:.1f}x faster; largest relative difference "
                  f"per request: TTFT {diff['ttft']:.1e}, TPOT {diff['tpot']:.1e}, "
                  f"e2e {diff['e2e']:.1e}; same replica for every request: {same_route}")
            agree = same_route and max(diff.values()) <= 1e-6
            if not agree:
                failures.append(f"[{k}] {name}, {load}")
            runs.append({"load": load, "rate": sim_rate, "requests": len(fast), "runs": rows,
                         "speedup": speedup, "max_relative_difference": diff,
                         "same_routing": same_route})
            summary.append((k, name, load, len(fast), rows["fast path"]))
        scenarios.append({
            "scenario": k, "name": name, "model": model, "workload": workload,
            "catalog": only or "full", "ttft": TTFT, "tpot": TPOT, "plan": mix,
            "replicas": replicas, "usd_per_hour": plan.usd_per_hour, "planned_rate": planned,
            "runs": runs,
        })
    print(f"\n{'':4}{'scenario':<21}{'load':<15}{'requests':>9}{'wall s':>8}"
          f"{'req/wall s':>12}{'SLO':>9}  >= {TARGET:,}")
    for k, name, load, n, r in summary:
        print(f"[{k}] {name:<21}{load:<15}{n:>9,}{r['wall_seconds']:>8.3f}"
              f"{r['requests_per_wall_second']:>12,.0f}{r['slo_attainment']:>9.2%}  "
              f"{'yes' if r['requests_per_wall_second'] >= TARGET else 'NO'}")
    slowest = min(r["requests_per_wall_second"] for *_, r in summary)
    out = Path(__file__).parent / "results" / "sim_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "target_requests_per_wall_second": TARGET,
        "slowest_requests_per_wall_second": slowest,
        "target_met": slowest >= TARGET,
        "fast_matches_step_by_step": not failures,
        "scenarios": scenarios,
        "machine": f"{platform.processor() or platform.machine()}, Python "
                   f"{platform.python_version()}",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=2) + "\n")
    print(f"wrote {out}")
    if failures:
        print(f"fast path and step by step disagree: {'; '.join(failures)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
