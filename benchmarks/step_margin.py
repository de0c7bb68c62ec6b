"""What a step margin buys: plans sized for steps slower than the model, against engines that
are.

The performance model is off against real engines by a few percent to 15% (the H200 step
times, design doc 5.8; the published measurements). A plan sized on the model alone may lean on
configs whose latency sits just under a limit, and miss its target when the engine is a little
slower. `hetserve plan --step-margin M` sizes every capacity as if each step took (1 + M) times
the modelled time.

For each scenario of benchmarks/plans_hold.py (TTFT 2 s, TPOT 50 ms, target 99% of requests)
and each margin M in MARGINS, plan with --step-margin M (no baselines), with and without
--verify (which simulates with the margin's slower steps and re-solves until the plan holds),
then simulate the plan on its trace with engines whose steps really are S slower, for each S in
SLOWER (S = 0: the model is exact). Prints, per scenario, the cost of each margin and its
attainment at each S, and writes benchmarks/results/step_margin.json.

Usage: python benchmarks/step_margin.py [--quick]   (--quick: the two 8B ICML scenarios)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from plans_hold import ICML, SCENARIOS, TARGET

from hetserve.plan import model_demands, plan_catalog, solve_plan
from hetserve.sim.simulate import simulate
from hetserve.sim.verify import verify

MARGINS = (0.0, 0.05, 0.10, 0.15)
SLOWER = (0.0, 0.05, 0.10, 0.15)
RESULTS = Path(__file__).parent / "results" / "step_margin.json"


def run(model: str, workload: str, rate: float, catalog: str) -> list[dict]:
    rows = []
    cat = plan_catalog(only=ICML if catalog == "icml" else None)
    for margin, verified in [(m, v) for m in MARGINS for v in (False, True)]:
        t0 = time.perf_counter()
        demands = model_demands(model, workload=workload, rate=rate, ttft=2.0, tpot=0.05,
                                attainment=TARGET, step_margin=margin)
        if verified:  # simulated with the margin's slower steps, re-solved until it holds
            plan, _ = verify(demands, cat, target=TARGET)
        else:
            plan = solve_plan(demands, cat, baselines=False)
        held = {s: simulate(plan, step_margin=s).attainment for s in SLOWER}
        rows.append({"margin": margin, "verify": verified, "usd_per_hour": plan.usd_per_hour,
                     "groups": [f"{g.replicas} x {g.accelerator} TP{g.tp}" for g in plan.groups],
                     "attainment": {f"{s:g}": a for s, a in held.items()},
                     "seconds": time.perf_counter() - t0})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    scenarios = SCENARIOS[:2] if args.quick else SCENARIOS
    out = []
    for model, workload, rate, catalog in scenarios:
        rows = run(model, workload, rate, catalog)
        out.append({"model": model, "workload": workload, "rate": rate, "catalog": catalog,
                    "plans": rows})
        base = rows[0]["usd_per_hour"]
        print(f"\n{model} {workload} {rate:g} req/s ({catalog} catalog): attainment with steps "
              "S slower than modelled")
        print(f"{'margin':>7s} {'verify':>6s} {'$/h':>9s} {'cost':>7s} "
              + " ".join(f"{'S=' + format(s, '.0%'):>8s}" for s in SLOWER) + "  groups")
        for r in rows:
            cells = " ".join(f"{a:7.2%}{'*' if a < TARGET else ' '}"
                             for a in r["attainment"].values())
            print(f"{r['margin']:7.0%} {'yes' if r['verify'] else 'no':>6s} "
                  f"{r['usd_per_hour']:9.2f} "
                  f"{r['usd_per_hour'] / base - 1:+7.1%} {cells}  {', '.join(r['groups'])}")
    print(f"\n* below the {TARGET:.0%} target")
    if not args.quick:
        RESULTS.write_text(json.dumps({
            "target": TARGET, "margins": MARGINS, "slower": SLOWER, "scenarios": out,
            "machine": platform.platform(), "python": platform.python_version()},
            indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
