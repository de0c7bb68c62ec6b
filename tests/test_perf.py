import numpy as np
import pytest

from hetserve.models import get_model
from hetserve.perf import SLO, Deployment, class_capacity

M8 = get_model("llama-3.1-8b")


def test_batch1_decode_is_weight_streaming_plus_overhead(catalog):
    a100 = catalog.get("A100-80GB")  # eta_memory 0.75, overhead 1.0 ms
    dep = Deployment(M8, a100)
    weights = M8.matmul_params * 2  # the embedding gather reads one row; the LM head is a matmul
    assert weights == pytest.approx(15.01e9, rel=1e-3)
    expect = weights / (2039e9 * 0.75) + 1e-3
    assert float(dep.decode_step_time(1, 0)) == pytest.approx(expect, rel=0.01)


def test_long_prefill_is_compute_bound(catalog):
    h100 = catalog.get("H100-SXM")  # 989 TFLOPS * 0.60
    dep = Deployment(M8, h100)
    n = 8192
    linear = 2 * (M8.layers * M8.layer_params * n + M8.embedding_params) / (989e12 * 0.6)
    attention = 4 * M8.layers * 4096 * (n * n / 2) / (989e12 * 0.6)
    assert float(dep.prefill_time(n)) == pytest.approx(linear + attention + 2.5e-3, rel=0.01)


def test_decode_step_grows_with_batch_and_context(catalog):
    dep = Deployment(M8, catalog.get("L40S"))
    by_batch = dep.decode_step_time(np.array([1, 8, 64, 256]), 1024)
    by_ctx = dep.decode_step_time(32, np.array([128, 1024, 8192]))
    assert np.all(np.diff(by_batch) > 0) and np.all(np.diff(by_ctx) > 0)
    # KV reads at batch 64, context 8k: 64 * 8192 * 128 KiB = 68.7 GB more than at context 0
    extra = dep.decode_step_time(64, 8192) - dep.decode_step_time(64, 0)
    assert float(extra) == pytest.approx(64 * 8192 * 131072 / (864e9 * 0.85), rel=0.02)


def test_tensor_parallel_speeds_decode_and_pipeline_does_not(catalog):
    m70 = get_model("llama-3.1-70b")
    h100 = catalog.get("H100-SXM")
    tp2, tp4 = Deployment(m70, h100, tp=2), Deployment(m70, h100, tp=4)
    tp2pp2 = Deployment(m70, h100, tp=2, pp=2)
    t2, t4 = float(tp2.decode_step_time(1, 512)), float(tp4.decode_step_time(1, 512))
    assert t4 < t2
    # 2 all-reduces per layer at 25 us dominate what TP4 saves over TP2 less than it adds
    assert t2 - t4 < float(tp2.decode_step_time(1, 512)) / 2
    assert float(tp2pp2.decode_step_time(1, 512)) >= t2  # PP adds hops, no speed
    assert tp2pp2.kv_capacity_tokens > 2 * tp2.kv_capacity_tokens  # but more memory for KV


def test_kv_capacity_is_free_memory_over_kv_per_token(catalog):
    dep = Deployment(M8, catalog.get("H100-SXM"))
    free = 80 * 2**30 * 0.9 - 1.5e9 - M8.params * 2
    assert dep.kv_capacity_tokens == int(free / 131072)


def test_capacity_respects_the_slo(catalog):
    dep = Deployment(M8, catalog.get("A100-80GB"))
    loose = class_capacity(dep, [1000], [200], SLO(ttft=5, tpot=0.2))
    tight = class_capacity(dep, [1000], [200], SLO(ttft=5, tpot=0.02))
    assert loose.rate[0] > tight.rate[0] > 0
    assert tight.tpot[0] <= 0.02 and loose.tpot[0] <= 0.2
    # Little's law at the chosen batch: batch = rate x 199 decode steps x the mean step, which
    # lies between a decode-only step and the p90 TPOT
    mean_step = tight.batch[0] / (tight.rate[0] * 199)
    assert float(dep.decode_step_time(tight.batch[0], 1100)) < mean_step <= tight.tpot[0]
    impossible = class_capacity(dep, [1000], [200], SLO(ttft=0.001, tpot=0.2))
    assert impossible.rate[0] == 0 and "TTFT" in impossible.reason[0]
    too_long = class_capacity(dep, [200000], [10], SLO())
    assert too_long.rate[0] == 0 and "exceeds" in too_long.reason[0]


def test_capacity_rises_with_memory_bandwidth(catalog):
    slo = SLO(ttft=2, tpot=0.05)
    rates = [class_capacity(Deployment(M8, catalog.get(n)), [1000], [200], slo).rate[0]
             for n in ("A10G", "A100-40GB", "H100-SXM")]
    assert rates[0] < rates[1] < rates[2]


def test_pp_does_not_shorten_one_prompts_prefill(catalog):
    from hetserve.models import get_model

    m = get_model("llama-3.1-70b")
    one = Deployment(m, catalog.get("A100-80GB"), tp=4)
    two = Deployment(m, catalog.get("A100-80GB"), tp=4, pp=2)
    # one 6000-token prompt is one micro-batch: it passes both stages in turn
    assert float(two.prefill_time(6000)) >= float(one.prefill_time(6000))
    # many short prompts fill the pipeline: the step's compute halves
    t1 = float(one.step_time(64 * 200, 64, prefill_pairs=64 * 200 * 100, chunk=200,
                             chunk_pairs=200 * 100))
    t2 = float(two.step_time(64 * 200, 64, prefill_pairs=64 * 200 * 100, chunk=200,
                             chunk_pairs=200 * 100))
    assert t2 < 0.6 * t1
