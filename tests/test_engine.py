import pytest

from hetserve.models import get_model
from hetserve.perf import Deployment
from hetserve.sim.engine import BLOCK_TOKENS, Engine, Request

M8 = get_model("llama-3.1-8b")


def run(engine):
    now, done = 0.0, []
    while engine.busy:
        dur, fin = engine.step(now)
        now += dur
        done += fin
    return now, done


def test_lone_request_takes_prefill_plus_decode_steps(catalog):
    dep = Deployment(M8, catalog.get("A100-80GB"))
    engine = Engine(dep)
    req = Request(0, 0.0, 700, 50)
    engine.add(req)
    end, done = run(engine)
    expect_ttft = float(dep.prefill_time(700))
    decode = sum(float(dep.decode_step_time(1, 700 + k)) for k in range(49))
    assert done == [req]
    assert req.ttft == pytest.approx(expect_ttft, rel=1e-9)
    assert req.latency == pytest.approx(expect_ttft + decode, rel=1e-9)
    assert engine.steps == 50 and engine.free_blocks == engine.total_blocks


def test_long_prompt_is_chunked(catalog):
    dep = Deployment(M8, catalog.get("H100-SXM"), chunk_tokens=2048)
    engine = Engine(dep)
    engine.add(Request(0, 0.0, 5000, 2))
    run(engine)
    assert engine.steps == 3 + 1  # 2048 + 2048 + 904, then one decode step


def test_preemption_when_kv_runs_out_and_nothing_is_lost(catalog):
    dep = Deployment(M8, catalog.get("A10G"))
    engine = Engine(dep)
    cap = engine.total_blocks * BLOCK_TOKENS
    n = 40
    reqs = [Request(i, 0.0, 200, cap // 30) for i in range(n)]  # 40 x ~1/30 of the cache
    for r in reqs:
        engine.add(r)
    _, done = run(engine)
    assert engine.preemptions > 0
    assert sorted(r.id for r in done) == list(range(n))
    assert all(r.generated == r.output_tokens for r in reqs)
    assert engine.free_blocks == engine.total_blocks


def test_request_larger_than_cache_is_refused(catalog):
    engine = Engine(Deployment(M8, catalog.get("A10G")))
    with pytest.raises(ValueError, match="exceed the KV cache"):
        engine.add(Request(0, 0.0, 10**6, 10))
