"""Simulator speed: the whole azure-conv trace (19,366 requests) at 4x its rate.

The plan: Llama-3.1-8B, the most throughput a $12/h budget buys on single cheap GPUs (L4, A10G,
RTX 4090, L40S, A100-40GB), TTFT <= 5s, TPOT <= 50ms. The trace is replayed at 4x its native
rate with the plan's router, once with the fast path (closed-form decode runs; best of 3) and once
step by step, side by side; per-request latencies of the two are compared.

Prints the figures and writes benchmarks/results/sim_speed.json.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

import hetserve
from hetserve.catalog import load_catalog
from hetserve.sim.simulate import simulate
from hetserve.workload import load_trace

CHEAP = ["L4", "A10G", "RTX4090", "L40S", "A100-40GB"]


def main() -> None:
    trace = load_trace("azure-conv")
    plan = hetserve.make_plan("llama-3.1-8b", workload="azure-conv", ttft=5.0, tpot=0.05,
                         objective="throughput", budget=12.0, max_devices=1,
                         catalog=load_catalog().only(CHEAP), baselines=False)
    replicas = sum(g.replicas for g in plan.groups)
    mix = ", ".join(f"{g.replicas} x {g.accelerator}" for g in plan.groups)
    rate = 4 * trace.rate
    print(f"plan: {mix} ({replicas} replicas, ${plan.usd_per_hour:.2f}/h); azure-conv "
          f"{len(trace)} requests at 4x = {rate:.1f} req/s")
    simulate(plan, trace, rate=rate, requests=2000)  # warm up imports and caches
    runs = [simulate(plan, trace, rate=rate) for _ in range(3)]
    fast = min(runs, key=lambda r: r.wall_seconds)
    ref = simulate(plan, trace, rate=rate, fast=False)
    rows = {}
    for name, res in (("fast path", fast), ("step by step", ref)):
        s = res.summary()
        rows[name] = {
            "wall_seconds": res.wall_seconds,
            "requests_per_wall_second": len(res) / res.wall_seconds,
            "simulated_seconds_per_wall_second": s["simulated_seconds"] / res.wall_seconds,
            "simulated_seconds": s["simulated_seconds"],
            "slo_attainment": s["slo_attainment"],
            "ttft_p90": s["ttft_p90"],
            "tpot_p90": s["tpot_p90"],
            "preemptions": s["preemptions"],
        }
        r = rows[name]
        print(f"{name:>13}: {r['wall_seconds']:.3f} s wall, "
              f"{r['requests_per_wall_second']:,.0f} simulated req per wall s, "
              f"{r['simulated_seconds_per_wall_second']:,.0f} simulated s per wall s "
              f"({r['simulated_seconds']:.0f} s simulated); SLO attainment "
              f"{r['slo_attainment']:.2%}, TTFT p90 {r['ttft_p90']:.3f} s, "
              f"TPOT p90 {r['tpot_p90'] * 1e3:.1f} ms, {r['preemptions']} preemptions")
    diff = {k: float(np.nanmax(np.abs(getattr(fast, k) - getattr(ref, k))
                               / np.maximum(np.abs(getattr(ref, k)), 1e-9)))
            for k in ("ttft", "tpot", "e2e")}
    same_route = bool((fast.replica == ref.replica).all())
    speedup = ref.wall_seconds / fast.wall_seconds
    print(f"fast vs step by step: {speedup:.1f}x faster; largest relative difference per "
          f"request: TTFT {diff['ttft']:.1e}, TPOT {diff['tpot']:.1e}, e2e {diff['e2e']:.1e}; "
          f"same replica for every request: {same_route}")
    out = Path(__file__).parent / "results" / "sim_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "plan": mix, "replicas": replicas, "usd_per_hour": plan.usd_per_hour,
        "requests": len(trace), "rate": rate, "runs": rows, "speedup": speedup,
        "max_relative_difference": diff, "same_routing": same_route,
        "machine": f"{platform.processor() or platform.machine()}, Python "
                   f"{platform.python_version()}",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
