"""Does `hetserve profile` recover a deployment's coefficients? Real HTTP, real time.

An emulated engine (`hetserve emulate`, its own process) runs Llama-3.1-8B on an H100-SXM with
known coefficients, different from the catalog's (given to it as a fit in a --catalog file).
The profiler measures it as a user would (the default sizes, closed loop at CONCURRENCY, one
Poisson rate), fits, and the fit is compared with the truth: each coefficient's error, the
median |error| of the predictions before (catalog) and after (fit), on fitted and held-back
shapes, and the time the measurement and the fit took. Printed and written to
results/profile_fit.json.

Target (issue "Measure real engines"): every coefficient within 10%.

Usage: python benchmarks/profile_fit.py [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from hetserve.catalog import Fit, load_catalog
from hetserve.cli.profile import DEFAULT_SIZES, _sizes
from hetserve.models import get_model
from hetserve.perf import Deployment
from hetserve.profile.drive import Endpoint, Sweep, measure
from hetserve.profile.fit import fit, observations

RESULTS = Path(__file__).parent / "results" / "profile_fit.json"
MODEL, ACC = "llama-3.1-8b", "H100-SXM"
TRUTH = {"eta_compute": 0.4, "eta_memory": 0.55, "step_overhead_ms": 3.0, "seq_host_us": 150.0}
CONCURRENCY = (1, 4, 16)
RATES: tuple[float, ...] = ()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per point")
    args = ap.parse_args()
    truth = Fit(model=MODEL, tp=1, engine="vllm", dtype="bf16", **TRUTH)
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "truth.yaml"
        catalog.write_text(yaml.safe_dump({"accelerators": [
            {"name": ACC, "fits": [truth.model_dump(exclude={"source"})]}]}))
        cli = str(Path(sys.executable).with_name("hetserve"))
        server = subprocess.Popen([cli, "emulate", "-m", MODEL, "-a", ACC, "--catalog",
                                   str(catalog), "--port", "0"], stdout=subprocess.PIPE,
                                  text=True)
        try:
            url = server.stdout.readline().split()[2]
            sweep = Sweep(_sizes(DEFAULT_SIZES), CONCURRENCY, RATES, args.seconds)
            points = []
            start = time.perf_counter()
            asyncio.run(measure(Endpoint(url), sweep, get_model(MODEL).vocab,
                                lambda p, _: points.append(p) if p is not None else None))
            measured_s = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(10)
    dep = Deployment(get_model(MODEL), load_catalog().get(ACC))
    start = time.perf_counter()
    got, report = fit(dep, observations(points))
    fit_s = time.perf_counter() - start
    rows = []
    print(f"{MODEL} on emulated {ACC}: {len(points)} points of {args.seconds:g} s, measured "
          f"in {measured_s:.0f} s, fitted in {fit_s:.1f} s")
    print(f"{'coefficient':18s} {'catalog':>9s} {'truth':>9s} {'fitted':>9s} {'error':>7s}")
    defaults = {"eta_compute": dep.accelerator.eta_compute,
                "eta_memory": dep.accelerator.eta_memory,
                "step_overhead_ms": dep.accelerator.step_overhead_ms, "seq_host_us": 0.0}
    for name, want in TRUTH.items():
        value = getattr(got, name)
        rows.append({"coefficient": name, "catalog": defaults[name], "truth": want,
                     "fitted": value, "error": value / want - 1.0})
        print(f"{name:18s} {defaults[name]:9.3f} {want:9.3f} {value:9.3f} "
              f"{value / want - 1.0:+7.1%}")
    worst = max(abs(r["error"]) for r in rows)
    print(f"median |error| of the predictions: {report.before:.1%} with the catalog, "
          f"{report.after:.1%} fitted; held back ({', '.join(report.held_back)}): "
          f"{report.held_back_before:.1%} -> {report.held_back_after:.1%}; client latency "
          f"{report.client_latency_ms:.2f} ms; worst coefficient {worst:.1%} (target <= 10%)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "coefficients": rows, "report": report.model_dump(), "points": len(points),
        "seconds_per_point": args.seconds, "measure_seconds": measured_s, "fit_seconds": fit_s,
        "machine": platform.platform(), "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": f"python benchmarks/profile_fit.py --seconds {args.seconds:g}",
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
