"""A day of azure-conv through the autoscaler: cost, SLO attainment and plan changes of the
adaptive re-planner against a static plan sized for the peak, the single-type re-planner and a
queue-length scaler; then the same day with the adaptive plan's midday type sold out
(13:00-15:00). Llama-3.1-8B, TTFT 2 s, TPOT 50 ms, the ICML 2025 six-GPU catalog, 15-minute
windows, 3-minute start-up, peak/trough 3 at 14:00. The replay's wall time is the speed goal
(a day at the trace's own rate in under a minute).

Usage: python benchmarks/autoscale_day.py   (writes results/autoscale_day.json)
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from hetserve.autoscale import DayOptions, compare_day
from hetserve.autoscale.day import Outage, diurnal_day
from hetserve.plan import model_demands, plan_catalog
from hetserve.workload import load_trace

RESULTS = Path(__file__).parent / "results" / "autoscale_day.json"
TYPES = ["RTX4090", "A40", "RTXA6000", "L40", "A100-80GB", "H100-SXM"]
OUTAGE = Outage(13 * 3600.0, 15 * 3600.0, {"A100-80GB": 0})


def main() -> None:
    catalog = plan_catalog(only=TYPES)
    (demand,) = model_demands("llama-3.1-8b", workload="azure-conv", ttft=2.0, tpot=0.05)
    trace = load_trace("azure-conv")
    opts = DayOptions()
    day = diurnal_day(trace, ratio=opts.ratio, peak_hour=opts.peak_hour, warmup=opts.window)
    out = {"requests": int((day.arrivals >= 0).sum()), "scenarios": {}}
    for name, outages in (("day", []), ("A100-80GB sold out 13:00-15:00", [OUTAGE])):
        started = time.perf_counter()
        results = compare_day(demand, catalog, day, opts, trace.rate, outages)
        base = results[0]
        print(f"{name}: {out['requests']:,} requests, {time.perf_counter() - started:.1f} s")
        rows = []
        for r in results:
            worst = min(w.met / w.requests for w in r.windows if w.requests)
            row = {"policy": r.policy, "cost_usd": r.cost_usd,
                   "vs_adaptive": r.cost_usd / base.cost_usd - 1, "attainment": r.attainment,
                   "worst_window": worst, "changes": r.changes,
                   "replay_seconds": r.wall_seconds}
            rows.append(row)
            print(f"  {r.policy:22s} ${r.cost_usd:7.2f} ({row['vs_adaptive']:+6.1%})  "
                  f"{r.attainment:7.2%} in SLO (worst window {worst:6.1%})  "
                  f"{r.changes:3d} changes  replay {r.wall_seconds:5.1f} s", flush=True)
        out["scenarios"][name] = rows
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({**out, "machine": platform.platform(),
                                   "python": platform.python_version(),
                                   "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                                   "command": "python benchmarks/autoscale_day.py"},
                                  indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
