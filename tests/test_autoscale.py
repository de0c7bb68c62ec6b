"""hetserve autoscale: the diurnal day, transitions in the replay (make before break, counts
that add up, cost of what ran), hysteresis, and spilling when a type sells out."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from hetserve.autoscale import DayOptions, compare_day
from hetserve.autoscale.day import DAY, Outage, available_at, diurnal_day, rate_at
from hetserve.autoscale.policy import Replanner, Static, plan_devices
from hetserve.autoscale.replay import replay_day
from hetserve.catalog import load_catalog
from hetserve.errors import HetserveError
from hetserve.plan import model_demands, plan_catalog
from hetserve.plan.configs import measure_configs
from hetserve.workload import load_trace
from tests.test_cli import cli

TYPES = ["RTX4090", "A40", "A100-80GB", "H100-SXM"]
HOURS = 2.0


@cache
def setup():
    catalog = plan_catalog(only=TYPES)
    (demand,) = model_demands("llama-3.1-8b", workload="azure-conv")
    return demand, catalog, measure_configs(demand, catalog)


def test_the_day_follows_its_curve():
    trace = load_trace("azure-conv")
    day = diurnal_day(trace, ratio=3.0, peak_hour=14.0, warmup=900.0, seed=1)
    assert day.arrivals.min() >= -900.0 and day.arrivals.max() < DAY
    assert np.all(np.diff(day.arrivals) >= 0)
    mean = trace.rate
    hours = np.histogram(day.arrivals, bins=24, range=(0, DAY))[0] / 3600.0
    expected = np.array([np.mean(rate_at(np.linspace(h * 3600, (h + 1) * 3600, 61), mean, 3.0,
                                         14.0)) for h in range(24)])
    assert np.allclose(hours, expected, rtol=0.06)  # Poisson noise on ~10^4 per hour
    assert hours.argmax() in (13, 14) and hours.argmin() in (1, 2)
    assert rate_at(14 * 3600.0, mean, 3.0, 14.0) / rate_at(2 * 3600.0, mean, 3.0, 14.0) \
        == pytest.approx(3.0)
    # sizes are the trace's own requests
    assert set(day.input_tokens[:500].tolist()) <= set(trace.input_tokens.tolist())
    with pytest.raises(HetserveError, match="--peak-ratio: expected >= 1"):
        diurnal_day(trace, ratio=0.5)


def test_availability_series(tmp_path):
    from hetserve.autoscale.day import load_availability_series

    f = tmp_path / "a.yaml"
    f.write_text("- {from: '13:00', to: '15:30', available: {A100-80GB: 0}}\n"
                 "- {from: 14, to: 16, available: {A100-80GB: 2, H100-SXM: 1}}\n")
    series = load_availability_series(f)
    assert available_at(series, 12.9 * 3600) == {}
    assert available_at(series, 14.5 * 3600) == {"A100-80GB": 0, "H100-SXM": 1}
    assert available_at(series, 15.75 * 3600) == {"A100-80GB": 2, "H100-SXM": 1}
    f.write_text("- {from: '15:00', to: '13:00', available: {A100-80GB: 0}}\n")
    with pytest.raises(HetserveError, match="period 1: 'to' must be after 'from'"):
        load_availability_series(f)
    # unquoted times: YAML 1.1 would read 10:00 as the base-60 integer 600
    f.write_text("- {from: 10:00, to: 12:30, available: {a100-80gb: 0}}\n")
    (period,) = load_availability_series(f, load_catalog())
    assert (period.start, period.end, period.available) == (36000.0, 45000.0, {"A100-80GB": 0})
    f.write_text("- {from: '10:61', to: '12:00', available: {A100-80GB: 0}}\n")
    with pytest.raises(HetserveError, match="period 1: from: .*got '10:61'"):
        load_availability_series(f)
    f.write_text("- {from: 10:00, to: 12:00, available: {A100-80GB: 0}}\n"
                 "- {from: 13:00, to: 14:00, available: {H900: 2}}\n")
    with pytest.raises(HetserveError, match="a.yaml: period 2: available: unknown accelerator "
                                            "'H900'"):
        load_availability_series(f, load_catalog())


def test_a_replay_counts_every_request_and_pays_for_what_ran():
    demand, catalog, configs = setup()
    # midnight to 2 am is the day's steepest rise (a third more) toward an 8 am peak
    day = diurnal_day(load_trace("azure-conv"), ratio=3.0, peak_hour=8.0, warmup=900.0,
                      seed=2, hours=HOURS)
    pol = Replanner(demand, catalog, configs=configs, threshold=0.0, startup=120.0)
    res = replay_day(day, pol, demand.workload, window=900.0, startup={"default": 120.0},
                     end=HOURS * 3600)
    scored = int(((day.arrivals >= 0) & (day.arrivals < HOURS * 3600)).sum())
    assert res.requests == scored == sum(w.requests for w in res.windows)
    assert res.met == sum(w.met for w in res.windows) and res.attainment >= 0.99
    assert len(res.windows) == HOURS * 4
    assert res.changes >= 1  # the rate rises: the fleet must grow
    # what was paid lies between what the plans cost over their windows and that plus the
    # start-up and drain of each change (both fleets run while the new one starts)
    planned = sum(p.usd_per_hour * (end - start) / 3600.0 for (start, p), end in zip(
        res.plans, [t for t, _ in res.plans[1:]] + [HOURS * 3600], strict=True))
    assert planned * 0.999 <= res.cost_usd <= planned + res.changes * 200.0 / 3600.0 * max(
        p.usd_per_hour for _, p in res.plans) * 2
    # make before break: a change serves only once its new replicas have started
    assert len(res.moves) == res.changes
    assert all(ready - decided == pytest.approx(120.0) for decided, ready in res.moves)
    assert [t for t, _ in res.plans[1:]] == [ready for _, ready in res.moves]


def test_a_static_plan_changes_nothing_and_costs_its_price():
    demand, catalog, configs = setup()
    pol = Replanner(demand, catalog, configs=configs)
    mix = np.array([c.count for c in demand.workload.classes], dtype=float)
    plan = pol.solve(6.0, mix / mix.sum(), {})
    day = diurnal_day(load_trace("azure-conv"), ratio=2.0, warmup=900.0, seed=3, hours=1.0)
    res = replay_day(day, Static(plan), demand.workload, end=3600.0)
    assert res.changes == 0 and len(res.plans) == 1
    assert res.cost_usd == pytest.approx(plan.usd_per_hour, rel=1e-9)


def test_hysteresis_keeps_a_plan_that_still_carries_the_load():
    demand, catalog, configs = setup()
    day = diurnal_day(load_trace("azure-conv"), ratio=1.0, warmup=900.0, seed=4, hours=HOURS)
    res = replay_day(day, Replanner(demand, catalog, configs=configs), demand.workload,
                     end=HOURS * 3600)
    assert res.changes <= 2  # a flat day: 7 decisions, at most two corrections of the guess
    assert res.attainment >= 0.99


def test_a_sold_out_type_spills_to_the_next_best():
    demand, catalog, configs = setup()
    pol = Replanner(demand, catalog, configs=configs)
    mix = np.array([c.count for c in demand.workload.classes], dtype=float)
    mix /= mix.sum()
    first = pol.solve(8.0, mix, {})
    used = set(plan_devices(first))
    outage = [Outage(1800.0, 5400.0, {t: 0 for t in used})]  # every type it runs on
    day = diurnal_day(load_trace("azure-conv"), ratio=1.0, mean_rate=7.0, warmup=900.0,
                      seed=5, hours=HOURS)
    res = replay_day(day, pol, demand.workload, outages=outage, notice=300.0,
                     startup={"default": 180.0}, end=HOURS * 3600)
    during = [p for t, p in res.plans if 1800.0 <= t < 5400.0]
    live_at = [p for t, p in res.plans if t <= 1800.0][-1]
    assert not used & set(plan_devices(live_at))  # replaced before the types went
    assert all(not used & set(plan_devices(p)) for p in during)
    assert res.attainment >= 0.99
    assert min(w.met / w.requests for w in res.windows) >= 0.99  # the outage's windows too
    # the same outage under a plan that does not move: its replicas of that type stop
    static = replay_day(day, Static(first), demand.workload, outages=outage, end=HOURS * 3600)
    gone = [w for w in static.windows if 1800.0 <= w.start < 5400.0]
    assert all(w.met == 0 for w in gone) and static.attainment < 0.6


def test_compare_day_and_cli(tmp_path):
    demand, catalog, _ = setup()
    day = diurnal_day(load_trace("azure-conv"), ratio=3.0, peak_hour=1.0, warmup=900.0,
                      seed=6, hours=1.0)
    mean = load_trace("azure-conv").rate
    results = compare_day(demand, catalog, day, DayOptions(peak_hour=1.0), mean, end=3600.0)
    names = [r.policy for r in results]
    assert names[0] == "adaptive" and names[1] == "static peak"
    assert names[2].startswith("adaptive, ") and names[3].startswith("queue, ")
    # the static plan is sized for the curve's peak (3:1 around the trace's mean), whatever
    # part of the day is replayed
    assert results[1].plans[0][1].models[0].rate == pytest.approx(mean * 1.5)
    assert results[1].changes == 0 and results[1].cost_usd == pytest.approx(
        results[1].plans[0][1].usd_per_hour)
    # the policies replayed side by side in worker processes: the same days
    apart = compare_day(demand, catalog, day, DayOptions(peak_hour=1.0), mean, end=3600.0,
                        workers=2)
    assert [(r.policy, r.cost_usd, r.attainment, r.changes) for r in apart] == \
        [(r.policy, r.cost_usd, r.attainment, r.changes) for r in results]
    png = tmp_path / "day.png"
    rc, out, err = cli("autoscale", "--hours", "0.5", "--only", "RTX4090,A100-80GB",
                       "--no-compare", "--plot", str(png))
    assert rc == 0, err
    assert "adaptive" in out and png.stat().st_size > 10_000
    rc, _, err = cli("autoscale", "--hours", "30")
    assert rc == 2 and "--hours: expected 0 < hours <= 24" in err
    bad = tmp_path / "a.yaml"
    bad.write_text("- {from: '13:00', to: '14:00', available: {Z80: 0}}\n")
    rc, _, err = cli("autoscale", "--hours", "0.5", "--availability", str(bad))
    assert rc == 2 and "Z80" in err


def test_as_is_replays_the_traces_own_times():
    rc, out, err = cli("autoscale", "--as-is", "--window", "5m", "--only", "RTX4090,A100-80GB",
                       "--no-compare", "--json")
    assert rc == 0, err
    import json

    data = json.loads(out)
    trace = load_trace("azure-conv")
    first = trace.arrivals[0] + 300.0  # the first window is what was seen before
    assert data["requests"] == int((trace.arrivals >= first).sum())
    rc, _, err = cli("autoscale", "--as-is", "--window", "30m")
    assert rc == 2 and "needs more than two windows" in err


def test_kubernetes_steps_dry_run_writes_manifests_and_changes_nothing(tmp_path):
    import asyncio

    from hetserve.autoscale.controller import KubernetesSteps
    from hetserve.deploy import Options, group_names

    demand, catalog, configs = setup()
    pol = Replanner(demand, catalog, configs=configs)
    mix = np.array([c.count for c in demand.workload.classes], dtype=float)
    small, big = (pol.solve(r, mix / mix.sum(), {}) for r in (2.0, 12.0))
    said: list[str] = []
    steps = KubernetesSteps(Options(namespace="ns"), str(tmp_path), apply=False, say=said.append)
    steps.start(small)
    backends = asyncio.run(steps.up(big))
    assert not steps.live and all(line.startswith("(dry run) kubectl ") for line in said)
    names = group_names(big)
    assert backends == {g.id: [{"url": f"http://{names[g.id]}-pods.ns.svc.cluster.local:8000",
                                "resolve": True}] for g in big.groups}
    assert (tmp_path / "gateway.yaml").exists()
    assert all((tmp_path / f"{n}.yaml").exists() for n in names.values())
