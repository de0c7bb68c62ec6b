"""The autoscaler as a controller: a gateway over emulated engines, a load that rises, and the
controller following it through /metrics and /admin/plan without dropping a request."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import numpy as np

from hetserve.autoscale.controller import Controller, Emulators, class_counts, key_classes
from hetserve.autoscale.policy import Replanner, plan_devices
from hetserve.gateway import Gateway, GatewayServer
from hetserve.gateway.load import replay
from hetserve.plan import model_demands, plan_catalog
from hetserve.workload import load_trace

LOW, HIGH = 1.0, 14.0  # req/s before and after the rise
LOW_S, HIGH_S = 8.0, 14.0


def test_key_counts_split_into_the_plans_classes():
    catalog = plan_catalog(only=["L4", "A100-80GB"])
    (demand,) = model_demands("llama-3.1-8b", workload="azure-conv", rate=2.0)
    mix = np.array([c.rate for c in demand.workload.classes])
    plan = Replanner(demand, catalog).solve(2.0, mix / mix.sum(), {})
    split = key_classes(plan)
    for shares in split.values():
        assert abs(sum(shares.values()) - 1.0) < 1e-9
    # an uncapped prompt range holds every class of that range, in the plan's proportions
    label = "in1-256"
    classes = plan.models[0].classes
    members = [w for w, c in enumerate(classes) if c.input_range == (1, 256)]
    assert set(split[label]) == set(members)
    counts = class_counts(plan, {label: 100.0, "nonsense": 5.0})
    assert counts.sum() == 100.0  # an unknown key is not counted
    rates = np.array([classes[w].rate for w in members])
    assert np.allclose(counts[members], 100.0 * rates / rates.sum())


def test_the_controller_follows_a_rising_load_without_dropping_a_request():
    asyncio.run(_rising())


async def _rising():
    catalog = plan_catalog(only=["L4", "A100-80GB"])
    (demand,) = model_demands("llama-3.1-8b", workload="azure-conv", rate=LOW)
    mix = np.array([c.count for c in demand.workload.classes], dtype=float)
    policy = Replanner(demand, catalog, startup=0.0)
    first = policy.solve(LOW, mix / mix.sum(), {})
    emulators = Emulators()
    server = GatewayServer(Gateway(first, await emulators.up(first), admin_token="admin",
                                   health_interval=0))
    url = await server.start()
    ctl = Controller(url, "admin", policy, emulators, window=3.0, interval=0.5, drain=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(ctl.run(stop))
    try:
        rng = np.random.default_rng(0)
        low = np.cumsum(rng.exponential(1 / LOW, int(LOW * LOW_S)))
        high = LOW_S + np.cumsum(rng.exponential(1 / HIGH, int(HIGH * HIGH_S)))
        arrivals = np.concatenate([low, high])
        trace = load_trace("azure-conv")
        pick = rng.integers(0, len(trace), len(arrivals))
        inputs = np.minimum(trace.input_tokens[pick], 2000)
        outputs = np.minimum(trace.output_tokens[pick], 64)  # short: the test runs in seconds
        sent = await asyncio.wait_for(replay(url, "llama-3.1-8b", arrivals.tolist(),
                                             inputs.tolist(), outputs.tolist()), 120)
        stop.set()
        await asyncio.wait_for(task, 30)
        async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as r:
            metrics = await r.text()
    finally:
        stop.set()
        await server.stop()
        await emulators.close()
    assert all(s.ok for s in sent), [s.status for s in sent if not s.ok][:5]
    assert len(sent) == len(arrivals)
    served = sum(float(m.group(1)) for m in re.finditer(
        r'^hetserve:requests_total\{[^}]*outcome="ok"\} (\S+)', metrics, re.M))
    assert served == len(sent)  # none lost, none refused
    arrived = sum(float(m.group(1)) for m in re.finditer(
        r'^hetserve:arrivals_total\{[^}]*\} (\S+)', metrics, re.M))
    assert arrived == len(sent)
    # it grew with the load: more devices (or dearer ones) than the plan for the low rate
    assert ctl.changes >= 1, ctl.log
    assert ctl.plan.usd_per_hour > first.usd_per_hour
    assert sum(plan_devices(ctl.plan).values()) >= sum(plan_devices(first).values())
    assert f"hetserve:plan_swaps_total {float(ctl.changes)}" in metrics.splitlines()
