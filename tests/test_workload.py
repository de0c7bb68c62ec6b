import numpy as np
import pytest

from hetserve.errors import HetserveError
from hetserve.workload import ClassGrid, classify, load_trace, read_jsonl, synthetic


def test_bundled_traces_load_whole():
    conv = load_trace("azure-conv")
    code = load_trace("azure-code")
    assert len(conv) == 19366 and len(code) == 8819
    assert np.median(conv.input_tokens) == 1020 and np.median(conv.output_tokens) == 129
    assert np.median(code.input_tokens) == 1469 and np.median(code.output_tokens) == 13
    assert conv.arrivals[0] == 0 and np.all(np.diff(conv.arrivals) >= 0)
    assert 3400 < conv.duration < 3600  # about an hour


def test_classes_account_for_every_request():
    wl = classify(load_trace("azure-conv"))
    assert sum(c.count for c in wl.classes) == 19366
    assert sum(c.rate for c in wl.classes) == pytest.approx(wl.trace.rate)
    assert np.all(wl.request_class >= 0)
    for c in wl.classes:
        lo, hi = c.input_range
        assert lo <= c.mean_input < hi or hi == wl.grid.input_edges[-1]


def test_rate_scaling():
    wl = classify(load_trace("azure-code"), rate=20.0)
    assert sum(c.rate for c in wl.classes) == pytest.approx(20.0)
    scaled = load_trace("azure-code").scaled_to_rate(20.0)
    assert scaled.rate == pytest.approx(20.0)


def test_lengths_past_the_last_edge_join_the_last_bucket():
    grid = ClassGrid((1, 100), (1, 10))
    assert list(grid.bucket(np.array([5, 500]), np.array([3, 3000]))) == [0, 0]


def test_jsonl_and_errors(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"timestamp": 0, "input_tokens": 10, "output_tokens": 5, "model": "a"}\n'
                 '{"timestamp": 1.5, "input_tokens": 20, "output_tokens": 7, "model": "b"}\n')
    t = read_jsonl(f)
    assert list(t.input_tokens) == [10, 20] and t.for_model("b").input_tokens.tolist() == [20]
    f.write_text('{"timestamp": 0, "input_tokens": 10, "output_tokens": 0}\n')
    with pytest.raises(HetserveError, match=r"t.jsonl: line 1: output_tokens must be an integer"):
        read_jsonl(f)
    c = tmp_path / "t.csv"
    c.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,5\n1,-4,5\n")
    with pytest.raises(HetserveError, match=r"t.csv: line 3: ContextTokens must be an integer"):
        load_trace(str(c))
    c.write_text("TIME,ContextTokens\n0,10\n")
    with pytest.raises(HetserveError, match="line 1: expected header"):
        load_trace(str(c))
    with pytest.raises(HetserveError, match="unknown workload 'azure-cnv'.*azure-conv"):
        load_trace("azure-cnv")


def test_synthetic_is_poisson_and_lognormal():
    t = synthetic(20000, rate=10.0, input_median=500, output_median=100, seed=1)
    assert t.rate == pytest.approx(10.0, rel=0.03)
    assert np.median(t.input_tokens) == pytest.approx(500, rel=0.05)
    assert np.median(t.output_tokens) == pytest.approx(100, rel=0.05)


def test_fluid_queue_and_burst_factor():
    from hetserve.workload.burst import burst_factor, fluid_waits

    rng = np.random.default_rng(1)
    arrivals = np.sort(rng.uniform(0, 100, 500))
    backlog, last, expected = 0.0, arrivals[0], []
    for t in arrivals:  # the recursion: drain at rate 6 since the last arrival, add one
        backlog = max(0.0, backlog - 6.0 * (t - last)) + 1.0
        last = t
        expected.append((backlog - 1.0) / 6.0)
    assert fluid_waits(arrivals, 6.0) == pytest.approx(expected, abs=1e-12)
    poisson = np.cumsum(rng.exponential(0.1, 5000))
    assert 1.0 <= burst_factor(poisson, 1.0, 0.99, seed=3) < 1.15
    bunched = np.repeat(np.arange(0.0, 500.0, 10.0), 100)  # 100 at once every 10 s
    assert burst_factor(bunched, 1.0, 0.99) > 5


def test_window_factor_sees_a_sustained_stretch_that_waits_miss():
    from hetserve.workload.burst import burst_factor, seen_rates, window_factor

    arrivals = np.array([0.0, 1.0, 1.5, 2.0, 10.0])
    # within 2 s around each: [0, 1], [0, 2], [1, 2], [1, 2], [10]
    assert seen_rates(arrivals, 2.0).tolist() == [1.0, 2.0, 1.5, 1.5, 0.5]
    rng = np.random.default_rng(2)
    poisson = np.cumsum(rng.exponential(0.1, 20000))  # 10 req/s for ~2000 s
    assert 1.0 <= window_factor(poisson, 10.0, 0.99, seed=4) < 1.1
    # 10 req/s, with 200 s at 20 req/s in the middle (the mean 11.1 req/s): every request in
    # the stretch sees 1.8x the mean; at the 99th percentile, with a Poisson count's noise
    # on both sides (p99 of 10 s counts: 22 vs 13.6 req/s), about 1.6x, where a fluid queue
    # fed at the median wait sees no burst
    calm = np.cumsum(rng.exponential(0.1, 8000))
    busy = calm[-1] + np.cumsum(rng.exponential(0.05, 4000))
    late = busy[-1] + np.cumsum(rng.exponential(0.1, 8000))
    stretch = np.concatenate([calm, busy, late])
    assert 1.5 < window_factor(stretch, 10.0, 0.99) < 1.8
    assert burst_factor(stretch, 1.0, 0.5) < 1.1
