"""A day of traffic, and availability that changes through it.

`diurnal_day` shapes a trace into 24 hours: arrivals are a Poisson process whose rate follows
one cosine a day, highest at `peak_hour`, with the trace's own rate as the mean and `ratio`
between the highest and lowest rate; each request's prompt and output lengths are drawn from the
trace's requests (with replacement, seeded). The day starts `warmup` seconds early, so that a
controller has seen traffic at midnight (the curve is periodic: those arrivals are the end of the
day before), and nothing about the future is known to it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import yaml

from hetserve.catalog import Catalog
from hetserve.errors import HetserveError, check_rate, load_yaml, positive
from hetserve.workload import Trace

DAY = 86_400.0
DEFAULT_RATIO = 3.0
DEFAULT_PEAK_HOUR = 14.0


def rate_at(t: np.ndarray | float, mean: float, ratio: float, peak_hour: float):
    """The day's rate at time `t` (s from midnight): mean x (1 + a cos), max/min = ratio."""
    a = (ratio - 1.0) / (ratio + 1.0)
    return mean * (1.0 + a * np.cos(2.0 * math.pi * (np.asarray(t) / DAY - peak_hour / 24.0)))


def diurnal_day(trace: Trace, *, ratio: float = DEFAULT_RATIO,
                peak_hour: float = DEFAULT_PEAK_HOUR, mean_rate: float | None = None,
                warmup: float = 900.0, seed: int = 0, hours: float = 24.0) -> Trace:
    """`trace` shaped into a day (see the module); arrivals from -warmup to hours x 3600 s."""
    if positive(ratio, "--peak-ratio") < 1:
        raise HetserveError(f"--peak-ratio: expected >= 1 (highest over lowest rate), got "
                            f"{ratio:g}")
    if not 0 <= peak_hour < 24:
        raise HetserveError(f"--peak-hour: expected 0 <= hour < 24, got {peak_hour:g}")
    mean = check_rate(mean_rate) if mean_rate is not None else trace.rate
    rng = np.random.default_rng(seed)
    top = mean * (1.0 + (ratio - 1.0) / (ratio + 1.0))
    span = warmup + hours * 3600.0
    # thinning: a Poisson process at the top rate, each arrival kept with rate(t) / top
    n = rng.poisson(top * span)
    t = np.sort(rng.uniform(-warmup, hours * 3600.0, n))
    t = t[rng.uniform(0.0, top, n) < rate_at(t, mean, ratio, peak_hour)]
    pick = rng.integers(0, len(trace), len(t))
    return Trace(f"{trace.name} day", t, trace.input_tokens[pick], trace.output_tokens[pick])


@dataclass(frozen=True)
class Outage:
    """From `start` to `end` (s from midnight) at most `available` devices of each named type."""

    start: float
    end: float
    available: dict[str, int]


class _ClockLoader(yaml.SafeLoader):
    """YAML 1.1 reads an unquoted 10:00 as the base-60 integer 600: here it stays '10:00'."""

    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode and implicit[0] and _SEXAGESIMAL.fullmatch(value):
            return "tag:yaml.org,2002:str"
        return super().resolve(kind, value, implicit)


_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-9_]+)+(?:\.[0-9_]*)?")


def _clock(value, where: str) -> float:
    """'13:30' or 13.5 (hours) -> seconds from midnight."""
    if isinstance(value, bool):
        raise HetserveError(f"{where}: expected a time of day like 13:00")
    if isinstance(value, int | float):
        hours = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,2}:[0-5][0-9]\s*", value):
        h, _, m = value.strip().partition(":")
        hours = int(h) + int(m) / 60.0
    else:
        hours = math.nan
    if not 0 <= hours <= 24:
        raise HetserveError(f"{where}: expected a time of day from 00:00 to 24:00 (or hours, "
                            f"0 to 24), got {value!r}")
    return hours * 3600.0


def load_availability_series(path, catalog: Catalog | None = None) -> list[Outage]:
    """A YAML list of {from: HH:MM, to: HH:MM, available: {TYPE: COUNT}} periods (with
    `catalog`, each TYPE one of its accelerators, by its catalog name)."""
    data = load_yaml(path, _ClockLoader)
    if not isinstance(data, list) or not data:
        raise HetserveError(f"{path}: expected a list of periods {{from, to, available}}")
    out = []
    for i, item in enumerate(data):
        where = f"{path}: period {i + 1}"
        if not isinstance(item, dict) or set(item) != {"from", "to", "available"}:
            raise HetserveError(f"{where}: expected keys from, to and available")
        start, end = _clock(item["from"], f"{where}: from"), _clock(item["to"], f"{where}: to")
        if end <= start:
            raise HetserveError(f"{where}: 'to' must be after 'from'")
        counts = item["available"]
        if not isinstance(counts, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for v in counts.values()):
            raise HetserveError(f"{where}: available: expected TYPE: COUNT (>= 0)")
        names = {}
        for k, v in counts.items():
            try:
                names[catalog.get(str(k)).name if catalog is not None else str(k)] = v
            except HetserveError as exc:
                raise HetserveError(f"{where}: available: {exc}") from None
        out.append(Outage(start, end, names))
    return out


def available_at(outages: list[Outage], t: float) -> dict[str, int]:
    """The availability limits in force at `t` (the lowest where periods overlap)."""
    out: dict[str, int] = {}
    for o in outages:
        if o.start <= t < o.end:
            for name, n in o.available.items():
                out[name] = min(n, out.get(name, n))
    return out
