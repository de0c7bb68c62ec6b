"""Does live traffic through the gateway behave as the simulator says? Real HTTP, real time.

A plan for Llama-3.1-8B on azure-conv (A10G and H100-SXM allowed, so that it splits classes
between groups) runs as `hetserve serve PLAN --emulate` in a process of its own: the gateway in
front of an emulated engine per replica. The first REQUESTS requests of azure-conv, time-scaled
to the plan's rate, are sent open loop at their arrival times (streamed completions, the prompt
as that many token ids, the trace's output length as `min_tokens` under a `max_tokens` cap of
1024, so the gateway routes without knowing the output, as the simulator does); each request's
TTFT (first chunk) and TPOT ((last - first) / (tokens - 1)) are measured at the client. The
same arrivals go through `hetserve.sim.simulate` with the same router. Printed and written to
results/gateway_fidelity.json:

- per replica group: the share of requests the plan gives it (its classes' rates x shares),
  the share the simulator routed there, and the share the gateway did (its /metrics);
- SLO attainment (both limits met) measured through the gateway and predicted by simulation.

Targets (issue "Run a plan"): shares within 3 points of the plan's; attainment within 3 points
of the simulation's.

Usage: python benchmarks/gateway_fidelity.py [--requests N] [--rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

import hetserve
from hetserve.catalog import load_catalog
from hetserve.gateway.load import replay
from hetserve.sim.simulate import simulate
from hetserve.workload import load_trace

RESULTS = Path(__file__).parent / "results" / "gateway_fidelity.json"
MODEL = "llama-3.1-8b"
TYPES = ["A10G", "H100-SXM"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=25.0, help="req/s the plan is made for")
    args = ap.parse_args()
    plan = hetserve.make_plan(MODEL, workload="azure-conv", rate=args.rate, baselines=False,
                              catalog=load_catalog().only(TYPES))
    entry = plan.models[0]
    trace = load_trace("azure-conv").scaled_to_rate(args.rate)
    n = min(args.requests, len(trace))
    arrivals = trace.arrivals[:n] - trace.arrivals[0]
    inputs, outputs = trace.input_tokens[:n].tolist(), trace.output_tokens[:n].tolist()
    ttft_limit, tpot_limit = entry.slo.ttft, entry.slo.tpot

    planned = {g.id: plan.planned_share(g) for g in plan.groups}
    sim = simulate(plan, trace, requests=n)
    sim_rows = sim.group_rows()
    sim_share = {g.id: row["requests"] / n for g, row in zip(plan.groups, sim_rows, strict=True)}

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.json"
        plan.save(path)
        cli = str(Path(sys.executable).with_name("hetserve"))
        server = subprocess.Popen([cli, "serve", str(path), "--no-access-log",
                                   "--emulate", "--port", str(port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in server.stdout:
                if line.startswith("gateway:"):
                    break
            else:
                raise RuntimeError("the gateway did not start")
            base = f"http://127.0.0.1:{port}"
            started = time.perf_counter()
            got = asyncio.run(replay(base, MODEL, arrivals, inputs, outputs))
            wall = time.perf_counter() - started
            metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
        finally:
            server.terminate()
            server.wait(10)
    served = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^hetserve:requests_total\{group="([^"]+)",model="[^"]+",outcome="ok"\} (\S+)$',
        metrics, re.M)}
    ok = np.array([r.ok for r in got])
    ttft = np.array([r.ttft for r in got])
    tpot = np.array([r.tpot for r in got])
    met = ok & (ttft <= ttft_limit) & (tpot <= tpot_limit)
    gateway_attainment, sim_attainment = float(met.mean()), float(sim.met.mean())
    long = np.array(outputs) > 1
    sim_tpot = sim.tpot
    breakdown = {
        "ttft_misses_gateway": int((ok & (ttft > ttft_limit)).sum()),
        "tpot_misses_gateway": int((ok & (tpot > tpot_limit)).sum()),
        "ttft_misses_simulated": int((sim.ttft > ttft_limit).sum()),
        "tpot_misses_simulated": int((sim_tpot > tpot_limit).sum()),
        # measured over simulated, per request (same arrivals, same routing)
        "ttft_ratio_median": float(np.median(ttft[ok] / sim.ttft[ok])),
        "tpot_ratio_median": float(np.median(tpot[ok & long] / sim_tpot[ok & long])),
    }
    rows = []
    groups = ", ".join(f"{g.id} {g.replicas} x {plan.deployment(g).label}" for g in plan.groups)
    print(f"plan: {groups} (${plan.usd_per_hour:.2f}/h, {args.rate:g} req/s); {n} requests over "
          f"{arrivals[-1]:.0f} s, replayed in {wall:.0f} s")
    print(f"{'group':6s} {'plan share':>10s} {'simulated':>10s} {'gateway':>10s}")
    for g in plan.groups:
        share = served.get(g.id, 0.0) / n
        rows.append({"group": g.id, "config": plan.deployment(g).label,
                     "planned_share": planned[g.id], "simulated_share": sim_share[g.id],
                     "gateway_share": share})
        print(f"{g.id:6s} {planned[g.id]:10.1%} {sim_share[g.id]:10.1%} {share:10.1%}")
    worst = max(abs(r["gateway_share"] - r["planned_share"]) for r in rows)
    print(f"SLO attainment: gateway on emulators {gateway_attainment:.2%}, simulated "
          f"{sim_attainment:.2%} ({abs(gateway_attainment - sim_attainment) * 100:.1f} points "
          f"apart, target <= 3); largest share gap to the plan {worst * 100:.1f} points "
          f"(target <= 3); {int((~ok).sum())} requests failed")
    print("misses (gateway / simulated): TTFT {ttft_misses_gateway} / {ttft_misses_simulated}, "
          "TPOT {tpot_misses_gateway} / {tpot_misses_simulated}; measured over simulated, "
          "median per request: TTFT x{ttft_ratio_median:.2f}, TPOT x{tpot_ratio_median:.2f}"
          .format(**breakdown))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "groups": rows, "requests": n, "rate": args.rate, "failed": int((~ok).sum()),
        **breakdown,
        "gateway_attainment": gateway_attainment, "simulated_attainment": sim_attainment,
        "ttft_p90_gateway": float(np.quantile(ttft[ok], 0.9)),
        "ttft_p90_simulated": float(np.quantile(sim.ttft[sim.completed], 0.9)),
        "machine": platform.platform(), "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": f"python benchmarks/gateway_fidelity.py --requests {n} --rate {args.rate:g}",
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
