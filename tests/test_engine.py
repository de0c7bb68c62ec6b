import math
import random

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


def test_request_larger_than_cache_or_context_is_refused(catalog):
    engine = Engine(Deployment(M8, catalog.get("A10G")))
    assert engine.longest == engine.kv_limit == 31_904
    with pytest.raises(ValueError, match=r"exceed the longest request A10G TP1 accepts "
                       r"\(31904 tokens\)"):
        engine.add(Request(0, 0.0, 10**6, 10))
    engine = Engine(Deployment(M8, catalog.get("A10G")), max_model_len=8192)
    assert engine.longest == 8192 and engine.kv_limit == 31_904  # vLLM's --max-model-len
    assert engine.holds(Request(0, 0.0, 8092, 100))
    assert not engine.holds(Request(1, 0.0, 8093, 100))


# ---- the fast engine's bulk decode bookkeeping against stepping sequence by sequence -------


def _workload(seed, n, kv_limit):
    """Bursty arrivals, prompts from 1 token to past the chunk budget, outputs of 1 token
    upwards: enough to overload a replica, chunk prompts and (with a small cache) preempt.
    Some bursts of identical requests whose sequences then take new KV blocks at the same
    step: a shortage there preempts several sequences at once."""
    rnd = random.Random(seed)
    t, reqs = 0.0, []
    while len(reqs) < n:
        t += rnd.expovariate(rnd.choice([5.0, 200.0]))
        if rnd.random() < 0.1:
            inp, out = BLOCK_TOKENS * rnd.randint(1, 4), rnd.randint(50, 300)
            reqs += [(t, inp, out)] * rnd.randint(5, 30)
            continue
        inp = rnd.choice([1, 15, 16, 17, rnd.randint(1, 2500), rnd.randint(1, 9000)])
        out = rnd.choice([1, 2, 16, rnd.randint(1, 400)])
        reqs.append((t, min(inp, kv_limit - out), out))
    return reqs[:n]


def _replay(dep, kv, work, fast):
    """Replay `work` on one engine, advancing it to each arrival."""
    engine = Engine(dep, kv_tokens=kv, fast=fast)
    reqs = [Request(k, a, i, o) for k, (a, i, o) in enumerate(work)]
    order = []
    for r in reqs:
        order += engine.advance(r.arrival)
        engine.add(r)
    order += engine.advance(math.inf)
    return reqs, engine, order


@pytest.mark.parametrize("acc,kv,chunk,seqs", [
    ("A100-80GB", None, 8192, 256),  # as deployed: queue grows, prefill joins a decode batch
    ("L4", 6000, 512, 256),  # small cache and budget: preemptions and chunked prompts
    ("A10G", 3000, 64, 8),  # tiny budget and batch
])
def test_bulk_decode_steps_equal_steps_one_by_one(catalog, monkeypatch, acc, kv, chunk, seqs):
    """A fast engine's plain steps serve the decode batch in bulk (no work per decoding
    sequence); they must schedule exactly what stepping sequence by sequence does: the same
    admissions, preemptions and completion order, and the same times to the last bit."""
    dep = Deployment(M8, catalog.get(acc), chunk_tokens=chunk, max_seqs=seqs)
    limit = (kv or dep.kv_capacity_tokens) // BLOCK_TOKENS * BLOCK_TOKENS
    work = _workload(7, 400, limit)
    ref, re, ro = _replay(dep, kv, work, fast=False)
    fields = ("scheduled", "first_token", "finish", "preemptions", "computed", "generated")

    def same(reqs, engine, order):
        assert [[getattr(r, f) for f in fields] for r in reqs] == \
            [[getattr(r, f) for f in fields] for r in ref]
        assert [r.id for r in order] == [r.id for r in ro]
        assert (engine.steps, engine.preemptions, engine.busy_time, engine.kv_block_seconds) \
            == (re.steps, re.preemptions, re.busy_time, re.kv_block_seconds)
        assert engine.free_blocks == engine.total_blocks and not engine.running

    if kv:
        assert re.preemptions > 0
    with monkeypatch.context() as mp:  # plain steps only: no closed-form decode runs
        mp.setattr(Engine, "_decode_run", lambda self, until, done: False)
        same(*_replay(dep, kv, work, fast=True))
        # every 5th step through the sequence-by-sequence fallback (settle, step, rebuild)
        fast_step = Engine._step_fast
        count = [0]

        def sometimes_mixed(self, now):
            count[0] += 1
            if count[0] % 5 == 0:
                self._mixed = True
                return Engine.step(self, now)
            return fast_step(self, now)

        mp.setattr(Engine, "_step_fast", sometimes_mixed)
        same(*_replay(dep, kv, work, fast=True))
    # with closed-form decode runs: the same schedule, times within rounding
    fast, fe, fo = _replay(dep, kv, work, fast=True)
    assert (fe.steps, fe.preemptions) == (re.steps, re.preemptions)
    assert sorted(r.id for r in fo) == sorted(r.id for r in ro)
    for a, b in zip(fast, ref, strict=True):
        assert a.preemptions == b.preemptions
        assert a.first_token == pytest.approx(b.first_token, rel=1e-12, abs=1e-9)
        assert a.finish == pytest.approx(b.finish, rel=1e-12, abs=1e-9)
