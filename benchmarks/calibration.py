"""Performance model vs published serving measurements: error per point and the median.

Prints the table and writes benchmarks/results/calibration.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from hetserve.catalog import load_catalog
from hetserve.sim.calibrate import calibrate, median_abs_error


def main() -> None:
    start = time.perf_counter()
    points = calibrate(load_catalog())
    seconds = time.perf_counter() - start
    print(f"{'id':34s} {'metric':18s} {'predicted':>10s} {'measured':>10s} {'error':>8s}")
    for p in points:
        print(f"{p.id:34s} {p.metric:18s} {p.predicted:10.1f} {p.measured:10.1f} "
              f"{p.error:+8.1%}")
    median = median_abs_error(points)
    off_2x = [p.id for p in points if not 0.5 <= p.predicted / p.measured <= 2.0]
    print(f"median absolute error {median:.1%} over {len(points)} points; "
          f"{len(off_2x)} off by more than 2x: {', '.join(off_2x) or 'none'}; {seconds:.1f}s")
    out = Path(__file__).parent / "results" / "calibration.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "points": [{"id": p.id, "metric": p.metric, "predicted": p.predicted,
                    "measured": p.measured, "error": p.error} for p in points],
        "median_abs_error": median,
        "off_by_more_than_2x": off_2x,
        "seconds": seconds,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
