"""Physics of the closed-form capacity, over random accelerators, models and classes: never above
the compute or the bandwidth roofline, never lower on an accelerator that dominates another."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hetserve.catalog import Accelerator
from hetserve.models import bundled_models
from hetserve.perf import SLO, Deployment, class_capacity
from hetserve.perf.capacity import LOAD_RESOLUTION

MODELS = [m for m in bundled_models() if m.params < 20e9]  # fit the generated accelerators
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def accelerators(draw):
    return Accelerator(
        name="X", kind="gpu",
        memory_gb=draw(st.floats(24, 192)),
        memory_bw_gbs=draw(st.floats(200, 8000)),
        bf16_tflops=draw(st.floats(30, 2500)),
        link="nvlink", link_gbs=draw(st.floats(16, 900)),
        allreduce_us=draw(st.floats(5, 60)), max_per_node=8,
        usd_per_hour=1.0,
        eta_compute=draw(st.floats(0.3, 0.9)), eta_memory=draw(st.floats(0.5, 0.9)),
        step_overhead_ms=draw(st.floats(0.0, 5.0)),
    )


classes = st.lists(st.tuples(st.integers(1, 12000), st.integers(1, 1500)), min_size=1,
                   max_size=6)
slos = st.tuples(st.floats(0.3, 10.0), st.floats(0.01, 0.3)).map(lambda t: SLO(*t))


def _capacity(model, acc, tp, shapes, slo):
    dep = Deployment(model, acc, tp=tp)
    inp = np.array([s[0] for s in shapes], dtype=float)
    out = np.array([s[1] for s in shapes], dtype=float)
    return dep, inp, out, class_capacity(dep, inp, out, slo)


@SETTINGS
@given(acc=accelerators(), model=st.sampled_from(MODELS), tp=st.sampled_from([1, 2]),
       shapes=classes, slo=slos)
def test_capacity_is_within_the_rooflines(acc, model, tp, shapes, slo):
    dep, inp, out, cap = _capacity(model, acc, tp, shapes, slo)
    if not dep.fits:
        return
    devices = dep.devices
    # compute: every prompt and generated token through the layers, an LM-head row per
    # generated token, at the dense peak of all devices
    flops = (inp + out - 1) * 2 * model.layers * model.layer_params \
        + out * 2 * model.embedding_params
    assert np.all(cap.rate * flops <= acc.bf16_tflops * 1e12 * devices * (1 + 1e-9))
    # bandwidth: each generated token after the first reads its sequence's KV cache
    kv = model.kv_bytes_per_token() * (out - 1) * (inp + out / 2.0)
    assert np.all(cap.rate * kv <= acc.memory_bw_gbs * 1e9 * devices * (1 + 1e-9))
    # and a replica's decode batch fits its sequence limit and KV cache
    assert np.all(cap.batch <= dep.max_seqs)
    assert np.all(cap.batch * (inp + out / 2.0) <= dep.kv_capacity_tokens * (1 + 1e-9))
    served = cap.rate > 0
    assert np.all(cap.ttft[served] <= slo.ttft) and np.all(cap.tpot[served] <= slo.tpot)


@SETTINGS
@given(acc=accelerators(), model=st.sampled_from(MODELS), tp=st.sampled_from([1, 2]),
       shapes=classes, slo=slos,
       more=st.tuples(st.floats(1.0, 4.0), st.floats(1.0, 4.0), st.floats(1.0, 2.0)))
def test_capacity_never_drops_on_a_dominating_accelerator(acc, model, tp, shapes, slo, more):
    better = acc.model_copy(update={"bf16_tflops": acc.bf16_tflops * more[0],
                                    "memory_bw_gbs": acc.memory_bw_gbs * more[1],
                                    "memory_gb": acc.memory_gb * more[2]})
    dep, _, _, cap = _capacity(model, acc, tp, shapes, slo)
    if not dep.fits:
        return
    _, _, _, up = _capacity(model, better, tp, shapes, slo)
    # the search bisects to the edge of the feasible loads, to within its resolution
    assert np.all(up.rate >= cap.rate / LOAD_RESOLUTION)


@SETTINGS
@given(acc=accelerators(), model=st.sampled_from(MODELS), tp=st.sampled_from([1, 2]),
       shapes=classes)
def test_a_class_that_meets_the_slo_alone_has_capacity(acc, model, tp, shapes):
    dep = Deployment(model, acc, tp=tp)
    if not dep.fits:
        return
    inp = np.array([s[0] for s in shapes], dtype=float)
    out = np.array([s[1] for s in shapes], dtype=float)
    alone = class_capacity(dep, inp, out, SLO())
    # limits 5% above what a request alone needs: a light enough load meets them
    slo = SLO(float(alone.best_ttft.max()) * 1.05, float(alone.best_tpot.max()) * 1.05 + 1e-9)
    cap = class_capacity(dep, inp, out, slo)
    fits = inp + out <= min(dep.kv_capacity_tokens, model.max_context)
    assert np.all(cap.rate[fits] > 0)
