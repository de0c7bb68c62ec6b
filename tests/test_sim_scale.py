"""Fleet-scale replay: streamed arrivals, results as counters and sketches, replay split across
processes and Ray, and least-loaded routing through an index."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hetserve
from hetserve.catalog import load_catalog
from hetserve.route.loads import LoadIndex
from hetserve.sim import tally as tally_mod
from hetserve.sim.arrivals import chunks
from hetserve.sim.simulate import SimFleet, replay_piece, simulate
from hetserve.sim.tally import Tally
from hetserve.workload import load_trace


@pytest.fixture(scope="module")
def plan():
    return hetserve.make_plan("llama-3.1-8b", workload="azure-conv", rate=20.0, baselines=False,
                              catalog=load_catalog().only(["L4", "L40S", "A100-80GB"]))


@pytest.fixture(scope="module")
def two_models():
    return hetserve.make_plan(["llama-3.1-8b", "mistral-7b"], workload="azure-conv", rate=4.0,
                              baselines=False,
                              catalog=load_catalog().only(["L4", "L40S", "A100-80GB"]))


def _tally_of(values: np.ndarray, group: np.ndarray) -> Tally:
    t = Tally([(2.0, 0.05)])
    n = len(values)
    arrival = np.arange(n, dtype=float)
    t.add(0, group, np.zeros(n, dtype=np.int64), arrival, np.full(n, 100), np.full(n, 11),
          arrival, arrival + values, arrival + values + 0.01, np.zeros(n, dtype=np.int64))
    return t


def test_tally_is_exact_then_sketches_within_a_percent(monkeypatch):
    rng = np.random.default_rng(1)
    values = rng.lognormal(-1.0, 1.0, 40_000)
    group = rng.integers(0, 3, len(values))
    exact = _tally_of(values, group)
    assert exact.exact
    ttft = (np.arange(40_000) + values) - np.arange(40_000)  # as the tally computes it
    for q in (50, 90, 99):
        assert exact.stats()[f"ttft_p{q}"] == np.percentile(ttft, q)
        mine = ttft[group == 1]
        assert exact.stats(lambda k: k[1] == 1)[f"ttft_p{q}"] == np.percentile(mine, q)
    # TTFT within 2 s: the met count is exact, whatever the percentiles are kept as
    met = int((ttft <= 2.0).sum())
    assert exact.total().met == met
    monkeypatch.setattr(tally_mod, "EXACT_VALUES", 10_000)
    halves = [_tally_of(values[s], group[s]) for s in (slice(0, 20_000), slice(20_000, None))]
    merged = Tally([(2.0, 0.05)])
    for h in halves:
        merged.merge(pickle.loads(pickle.dumps(h)))  # as from a worker process
    assert not merged.exact
    assert merged.total().requests == 40_000 and merged.total().met == met
    for q in (50, 90, 99):  # t-digest: within 0.2% here
        assert merged.stats()[f"ttft_p{q}"] == pytest.approx(np.percentile(ttft, q), rel=0.002)


def test_chunks_repeat_the_trace_and_match_it_where_it_runs():
    trace = load_trace("azure-conv")
    n = len(trace)
    for mode, rate, whole in (("trace", 10.0, trace.scaled_to_rate(10.0)),
                              ("poisson", 10.0, trace.with_poisson_arrivals(10.0, 3))):
        small = list(chunks(trace, mode, rate, 2 * n + 5, seed=3, size=4096))
        big = list(chunks(trace, mode, rate, 2 * n + 5, seed=3, size=1 << 20))
        arr = np.concatenate([a for _, a, _ in small])
        assert np.array_equal(arr, big[0][1])  # the chunk size changes nothing
        assert np.array_equal(arr[:n], whole.arrivals - whole.arrivals[0])
        assert len(arr) == 2 * n + 5 and np.all(np.diff(arr) >= 0)
        assert arr[-1] / len(arr) == pytest.approx(1 / rate, rel=0.02)  # the rate holds
        rows = np.concatenate([r for _, _, r in small])
        assert np.array_equal(rows[n:2 * n], np.arange(n))  # the trace again, in order


def test_streamed_replay_counts_as_the_per_request_one(plan):
    full = simulate(plan, requests=3000, per_request=True)
    lean = simulate(plan, requests=3000)
    assert lean.requests is None and full.requests is not None
    drop = ("wall_seconds", "requests_per_wall_second")
    a, b = full.as_dict(), lean.as_dict()
    assert {k: v for k, v in a.items() if k not in drop} == \
        {k: v for k, v in b.items() if k not in drop}
    assert a["requests"] == 3000 and full.attainment == full.met.mean()
    with pytest.raises(hetserve.errors.HetserveError, match="per_request=True"):
        lean.ttft  # noqa: B018


def test_more_requests_than_the_trace_repeat_it(plan):
    n = 2 * len(load_trace("azure-conv")) + 10
    res = simulate(plan, requests=n, rate=30.0)
    s = res.summary()
    assert s["requests"] == n == sum(r["requests"] for r in res.class_rows())
    assert s["simulated_seconds"] == pytest.approx(n / 30.0, rel=0.03)


def test_models_replay_apart_exactly_as_in_one_process(two_models):
    one = simulate(two_models, requests=2000)
    two = simulate(two_models, requests=2000, workers=2)
    drop = ("wall_seconds", "requests_per_wall_second", "workers", "pieces")
    assert two.summary()["pieces"] == 2
    a, b = one.as_dict(), two.as_dict()
    assert {k: v for k, v in a.items() if k not in drop} == \
        {k: v for k, v in b.items() if k not in drop}


def test_per_request_columns_of_pieces_are_those_of_one_process(two_models):
    one = simulate(two_models, requests=1500, per_request=True)
    two = simulate(two_models, requests=1500, per_request=True, workers=2)
    assert set(one.requests) == set(two.requests)
    for name, col in one.requests.items():
        assert np.array_equal(col, two.requests[name], equal_nan=True), name


def test_bad_parallel_options_are_clear_errors(plan, run_cli, tmp_path):
    path = tmp_path / "plan.json"
    plan.save(path)
    for args, needs in ((["--workers", "0"], "--workers"),
                        (["--ray", "not an address"], "--ray 'not an address'")):
        res = run_cli("simulate", path, *args)
        assert res.code == 2 and needs in res.err and "Traceback" not in res.err, res.summary()
    with pytest.raises(hetserve.errors.HetserveError, match="overlap"):
        simulate(plan, workers=2, overlap=float("nan"))


def test_windows_count_every_request_once(plan):
    n = 60_000
    one = simulate(plan, requests=n, rate=20.0)
    split = simulate(plan, requests=n, rate=20.0, workers=3, overlap=120.0)
    assert split.summary()["pieces"] == 3
    for rows in (lambda r: r.class_rows(), lambda r: [r.summary()]):
        assert [x["requests"] for x in rows(one)] == [x["requests"] for x in rows(split)]
    assert split.attainment == pytest.approx(one.attainment, abs=0.002)
    assert split.summary()["utilisation"] == pytest.approx(one.summary()["utilisation"],
                                                           rel=0.01)
    # with no overlap, a window's engines start empty: its first requests wait less
    assert simulate(plan, requests=n, rate=20.0, workers=3, overlap=0.0).summary()[
        "requests"] == n


def test_ray_replays_the_same_pieces_as_local_workers(plan):
    pytest.importorskip("ray")
    local = simulate(plan, requests=40_000, rate=20.0, workers=2, overlap=60.0)
    on_ray = simulate(plan, requests=40_000, rate=20.0, workers=2, overlap=60.0, ray="local")
    drop = ("wall_seconds", "requests_per_wall_second", "workers")
    assert on_ray.summary()["workers"] == "ray local"
    a, b = local.as_dict(), on_ray.as_dict()
    assert {k: v for k, v in a.items() if k not in drop} == \
        {k: v for k, v in b.items() if k not in drop}


def test_bad_workers_is_a_clear_error(plan):
    with pytest.raises(hetserve.errors.HetserveError, match="--workers"):
        simulate(plan, workers=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 11), st.integers(0, 9), st.booleans()), max_size=200))
def test_load_index_least_is_the_least_loaded(changes):
    groups = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10, 11]]
    index = LoadIndex(groups, 12)
    loads = [0] * 12
    sent = list(range(12))  # when each was last sent a request (the index's tie order)
    for t, (replica, load, is_sent) in enumerate(changes, 12):
        loads[replica] = load
        if is_sent:
            sent[replica] = t
        index.set(replica, load, is_sent)
        for g, members in enumerate(groups):
            want = min(members, key=lambda i: (loads[i], sent[i]))
            assert index.least(g) == want and index.rank(want)[0] == loads[want]
        odd = index.least(1, lambda i: i % 2 == 1)
        assert odd == min((i for i in groups[1] if i % 2), key=lambda i: (loads[i], sent[i]))


def test_simulator_routes_to_a_least_loaded_replica(plan):
    """At every choice, the replica the index picks has the fewest requests in flight of its
    group, as counted engine by engine (the index brings only replicas due for a look)."""
    from hetserve.sim import simulate as sim_mod

    picks = []

    class Checked(SimFleet):
        def dispatch(self, replica, req):
            g = self.index.group_of[replica]
            for i in self.groups[g]:
                self.load(i, req.arrival)
            loads = [self.engines[i].outstanding_at(req.arrival) for i in self.groups[g]]
            picks.append((self.engines[replica].outstanding_at(req.arrival), min(loads),
                          len(loads)))
            super().dispatch(replica, req)

    big = hetserve.make_plan("llama-3.1-8b", workload="azure-conv", rate=120.0,
                             baselines=False, catalog=load_catalog().only(["L4"]))
    original = sim_mod.SimFleet
    sim_mod.SimFleet = Checked
    try:
        job = sim_mod.Replay(big, {"llama-3.1-8b": load_trace("azure-conv")},
                             router="plan-oracle",  # no spilling: always within the group
                             requests=4000, rate=120.0)
        replay_piece(job, sim_mod.Piece(0))
    finally:
        sim_mod.SimFleet = original
    assert len(picks) == 4000 and max(n for _, _, n in picks) >= 8
    assert all(chosen == least for chosen, least, _ in picks)
    assert sum(chosen > 0 for chosen, _, _ in picks) > 100  # not merely idle replicas
