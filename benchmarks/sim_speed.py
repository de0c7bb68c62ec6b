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

Then fleet scale (`--scale`; `--scale-only` skips the above), each point in a fresh process,
its resident memory sampled every 20 ms (the process, and its largest worker), results kept as
counters and sketches (no per-request columns):

  - replicas: plans of 16, 256 and 1,024 L4 replicas (8B, azure-conv), 200,000 requests as
    planned and 2x overloaded: requests per wall second should not fall with the fleet;
  - length: the 8B plan for 1,000 req/s on the six GPUs, 20,000 / 1M / 20M requests (the trace
    repeated) at 1,000 req/s: requests per wall second and peak memory, flat in the length;
  - parallel: 4M requests (long enough for two windows) in one process, in 2 local worker
    processes and on a local Ray instance (2 CPUs); the 20M point in one process and in 2
    workers, with their attainment (`--scale-parallel` runs the 4M points alone again);
  - the projected wall time of a day at 1,000 req/s (86.4M requests) on 16 cores.

Prints the figures and writes benchmarks/results/sim_speed.json. Exits 1 if the fast path and
step by step disagree (a relative difference above 1e-6 or a request on another replica).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import hetserve
from hetserve.catalog import load_catalog
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
    args = sys.argv[1:]
    if args[:1] == ["--point"]:
        print(json.dumps(point(json.loads(args[1]))))
        return
    out = Path(__file__).parent / "results" / "sim_speed.json"
    body = json.loads(out.read_text()) if out.exists() else {}
    if "--scale-only" not in args and "--scale-parallel" not in args:
        body |= single_core()
    if "--scale" in args or "--scale-only" in args:
        body["scale"] = scale()
    elif "--scale-parallel" in args:  # the 4M points again, the rest as last measured
        kept = [r for r in body["scale"]["parallel"] if r["requests"] == 20_000_000]
        body["scale"] |= parallel(_day_plan(Path(tempfile.mkdtemp())), {}, only_small=True)
        body["scale"]["parallel"] += kept
    if "scale" in body:
        body["scale"]["projection"] = projection(body["scale"])
    body["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
                      f"Python {platform.python_version()}"
    body["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {out}")
    if not body.get("fast_matches_step_by_step", True):
        print("fast path and step by step disagree", file=sys.stderr)
        sys.exit(1)


def single_core() -> dict:
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
    if failures:
        print(f"fast path and step by step disagree: {'; '.join(failures)}", file=sys.stderr)
    return {
        "target_requests_per_wall_second": TARGET,
        "slowest_requests_per_wall_second": slowest,
        "target_met": slowest >= TARGET,
        "fast_matches_step_by_step": not failures,
        "scenarios": scenarios,
    }


# ---- fleet scale ---------------------------------------------------------------------------

DAY = 86_400 * 1_000  # requests in a day at 1,000 req/s
CORES = 16


WATCHER = """
import os, select, sys
pid, me = sys.argv[1], str(os.getpid())
def rss(p):
    try:
        with open(f"/proc/{p}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0
def children():
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [c for c in f.read().split() if c != me]
    except OSError:
        pass
    return out
own = worker = 0.0
while not select.select([sys.stdin], [], [], 0.02)[0]:
    own = max(own, rss(pid))
    worker = max([worker, *(rss(c) for c in children())])
print(own, worker)
"""


class PeakMemory:
    """Resident memory of this process and of its largest worker process, sampled every 20 ms
    by a watching process (a thread would make the pool start workers by fork server; and
    ru_maxrss would not do: on Linux it keeps the high-water mark of the process that forked
    and exec'd this one)."""

    def __enter__(self) -> PeakMemory:
        self._watch = subprocess.Popen([sys.executable, "-c", WATCHER, str(os.getpid())],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        out, _ = self._watch.communicate("")
        self.own, self.worker = (float(x) for x in out.split())


def point(spec: dict) -> dict:
    """One replay in this (fresh) process: its figures and peak memory."""
    from hetserve.plan import load_plan

    plan = load_plan(spec["plan"])
    with PeakMemory() as memory:
        res = simulate(plan, requests=spec["requests"], rate=spec["rate"],
                       workers=spec.get("workers", 1), ray=spec.get("ray"))
    s = res.summary()
    return {"requests": len(res), "wall_seconds": res.wall_seconds,
            "requests_per_wall_second": len(res) / res.wall_seconds,
            "slo_attainment": s["slo_attainment"], "ttft_p99": s["ttft_p99"],
            "tpot_p99": s["tpot_p99"], "exact_percentiles": s["exact_percentiles"],
            "peak_rss_mb": memory.own, "peak_worker_rss_mb": memory.worker,
            "replicas": sum(g.replicas for g in plan.groups), "pieces": s.get("pieces", 1)}


def run_point(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--point", json.dumps(spec)],
                          capture_output=True, text=True, check=True)
    return spec | json.loads(done.stdout.strip().splitlines()[-1])


def scale_line(label: str, r: dict) -> str:
    memory = f"{r['peak_rss_mb']:,.0f} MB"
    if r.get("workers", 1) > 1:
        memory += f" (+ {r['peak_worker_rss_mb']:,.0f} MB a worker)"
    return (f"  {label:<34}{r['requests']:>12,}{r['replicas']:>6}{r['wall_seconds']:>9.1f}"
            f"{r['requests_per_wall_second']:>12,.0f}{r['slo_attainment']:>10.4%}  {memory}")


def scale() -> dict:
    tmp = Path(tempfile.mkdtemp())
    head = HEAD
    out: dict = {"replicas": [], "length": [], "parallel": []}
    print(f"\n== fleet scale: replicas (L4 only, 8B, azure-conv) ==\n{head}  peak memory")
    l4 = load_catalog().only(["L4"])
    for want, rate in ((16, 45.0), (256, 830.0), (1024, 3450.0)):  # about `want` replicas
        plan = hetserve.make_plan("llama-3.1-8b", workload="azure-conv", rate=rate, ttft=TTFT,
                                  tpot=TPOT, catalog=l4, baselines=False)
        path = tmp / f"l4_{want}.json"
        plan.save(path)
        for load, mult in LOADS:
            r = run_point({"plan": str(path), "requests": 200_000, "rate": rate * mult})
            r |= {"load": load, "target_replicas": want}
            out["replicas"].append(r)
            print(scale_line(f"{r['replicas']} replicas, {load}", r), flush=True)
    path = _day_plan(tmp)
    print(f"\n== fleet scale: length (8B, azure-conv at 1,000 req/s, six GPUs) ==\n{head}  "
          "peak memory")
    for n in (20_000, 1_000_000, 20_000_000):
        r = run_point({"plan": str(path), "requests": n, "rate": 1000.0})
        out["length"].append(r)
        print(scale_line(f"{n:,} requests, one process", r), flush=True)
    out |= parallel(path, {r["requests"]: r for r in out["length"]})
    return out


HEAD = f"  {'':<34}{'requests':>12}{'reps':>6}{'wall s':>9}{'req/wall s':>12}{'SLO':>10}"


def _day_plan(tmp: Path) -> Path:
    plan = hetserve.make_plan("llama-3.1-8b", workload="azure-conv", rate=1000.0, ttft=TTFT,
                              tpot=TPOT, only=SIX_GPUS, baselines=False)
    path = tmp / "day.json"
    plan.save(path)
    return path


def parallel(path: Path, one: dict[int, dict], only_small: bool = False) -> dict:
    """4M requests (a trace long enough for two windows of at least four overlaps) in one
    process, 2 local workers and on a local Ray instance; 20M in 2 workers (against `one`)."""
    print(f"\n== fleet scale: parallel ==\n{HEAD}  peak memory")
    rows = []
    runs = [(4_000_000, {}), (4_000_000, {"workers": 2}),
            (4_000_000, {"workers": 2, "ray": "local"})]
    if not only_small:
        runs.append((20_000_000, {"workers": 2}))
    for n, how in runs:
        r = run_point({"plan": str(path), "requests": n, "rate": 1000.0} | how)
        if not how:
            one[n] = r
            print(scale_line(f"{n:,}, one process", r), flush=True)
            continue
        r["speedup"] = one[n]["wall_seconds"] / r["wall_seconds"]
        r["attainment_difference"] = r["slo_attainment"] - one[n]["slo_attainment"]
        rows.append(r)
        label = f"{n:,}, " + ("Ray (local, 2 CPUs)" if "ray" in how else "2 workers")
        print(scale_line(label, r) + f"  {r['speedup']:.2f}x; SLO vs one process "
              f"{r['attainment_difference']:+.4%}", flush=True)
    return {"parallel": rows, "parallel_one_process": one[4_000_000]}


def projection(scale: dict) -> dict:
    per_core = next(r for r in scale["length"] if r["requests"] == 20_000_000)[
        "requests_per_wall_second"]
    two = next(r for r in scale["parallel"] if r["requests"] == 20_000_000)
    efficiency = two["speedup"] / 2
    projected = DAY / (per_core * CORES * efficiency)
    print(f"\nprojected: a day at 1,000 req/s ({DAY:,} requests) on {CORES} cores, at "
          f"{per_core:,.0f} req per wall s a core and the 2-worker efficiency "
          f"({efficiency:.0%}): {projected / 60:.1f} min; memory flat in the length: "
          f"{two['peak_rss_mb']:.0f} MB here and about {two['peak_worker_rss_mb']:.0f} MB a "
          f"worker")
    return {"requests": DAY, "cores": CORES, "one_core_requests_per_second": per_core,
            "parallel_efficiency_at_2": efficiency, "wall_seconds": projected}


if __name__ == "__main__":
    main()
