"""plan --step-margin: capacities sized for engines whose every step is slower than the model
says, recorded in the plan file and applied when the plan is simulated."""

import json

import numpy as np
import pytest

import hetserve
from hetserve.catalog import load_catalog
from hetserve.errors import HetserveError
from hetserve.models import get_model
from hetserve.perf import SLO, Deployment, class_capacity
from hetserve.plan import load_plan
from hetserve.sim.simulate import simulate

from .conftest import assert_bad_input

SLO_50MS = SLO(ttft=2.0, tpot=0.05)


def deployment(model="llama-3.1-8b", acc="H100-SXM", tp=1, margin=0.0) -> Deployment:
    return Deployment(get_model(model), load_catalog().get(acc), tp=tp, step_margin=margin)


def test_a_step_margin_scales_every_step_exactly():
    exact, slow = deployment(tp=2), deployment(tp=2, margin=0.1)
    args = (np.array([1.0, 300.0, 8192.0]), np.array([1.0, 64.0, 4.0]))
    kw = dict(decode_ctx=np.array([500.0, 64e3, 2e4]), prefill_pairs=np.array([0.0, 1e4, 3e7]))
    np.testing.assert_allclose(slow.step_time(*args, **kw), 1.1 * exact.step_time(*args, **kw),
                               rtol=1e-12)
    assert float(slow.decode_step_time(32, 2000)) == pytest.approx(
        1.1 * float(exact.decode_step_time(32, 2000)), rel=1e-12)
    assert float(slow.prefill_time(4096)) == pytest.approx(1.1 * float(exact.prefill_time(4096)),
                                                           rel=1e-12)


def test_a_margin_never_adds_capacity_and_removes_knife_edge_configs():
    """70B on one MI300X decodes a short chat alone at 46.7 ms a token: under a 50 ms TPOT, but
    with steps 10% slower it takes 51.4 ms, and no rate is served."""
    inp, out = np.array([180.0, 1000.0, 4000.0]), np.array([13.0, 130.0, 20.0])
    for model, acc, tp in (("llama-3.1-8b", "H100-SXM", 1), ("llama-3.1-8b", "L40S", 1),
                           ("llama-3.1-70b", "A100-80GB", 4)):
        plain = class_capacity(deployment(model, acc, tp), inp, out, SLO_50MS).rate
        slow = class_capacity(deployment(model, acc, tp, 0.1), inp, out, SLO_50MS).rate
        assert (slow <= plain).all() and (slow < plain).any(), (model, acc)
    plain = class_capacity(deployment("llama-3.1-70b", "MI300X"), inp[:1], out[:1], SLO_50MS)
    slow = class_capacity(deployment("llama-3.1-70b", "MI300X", margin=0.1), inp[:1], out[:1],
                          SLO_50MS)
    assert plain.best_tpot[0] == pytest.approx(0.0467, abs=5e-4) and plain.rate[0] > 0
    assert slow.best_tpot[0] == pytest.approx(1.1 * plain.best_tpot[0], rel=1e-9)
    assert slow.rate[0] == 0 and "TPOT" in slow.reason[0]


def test_an_infeasible_margin_names_it_and_the_shortfall():
    cat = load_catalog().only(["MI300X"])
    hetserve.make_plan("llama-3.1-70b", rate=2, catalog=cat, max_devices=1, baselines=False)
    with pytest.raises(HetserveError, match=r"with steps 10% slower \(--step-margin\): TPOT "
                       r"limit 50ms, the fastest \(MI300X TP1\) needs 51.4ms, 1.41ms over"):
        hetserve.make_plan("llama-3.1-70b", rate=2, catalog=cat, max_devices=1,
                           baselines=False, step_margin=0.1)


def test_the_plan_records_its_margin_and_simulation_applies_it(tmp_path):
    cat = load_catalog().only(["L4", "A10G", "L40S", "H100-SXM"])
    plain = hetserve.make_plan("llama-3.1-8b", rate=10, catalog=cat, baselines=False)
    plan = hetserve.make_plan("llama-3.1-8b", rate=10, catalog=cat, baselines=False,
                              step_margin=0.15)
    assert plain.models[0].step_margin == 0 and plan.models[0].step_margin == 0.15
    assert plan.usd_per_hour >= plain.usd_per_hour
    plan.save(tmp_path / "p.json")
    loaded = load_plan(tmp_path / "p.json")
    assert loaded.models[0].step_margin == 0.15
    runs = {m: simulate(loaded, requests=600, step_margin=m) for m in (None, 0.15, 0.0)}

    def busy(r):
        return sum(g.busy_seconds for g in r.groups)

    assert busy(runs[None]) == busy(runs[0.15])  # the plan's own margin by default
    assert busy(runs[0.15]) > busy(runs[0.0])  # its engines step slower
    assert runs[None].attainment == runs[0.15].attainment
    assert runs[None].summary()["step_margin"] == {"llama-3.1-8b": 0.15}  # and says so
    assert runs[0.0].summary()["step_margin"] == {"llama-3.1-8b": 0.0}
    # serving the plan expects the model's own step times; its simulations, the margin's
    g = loaded.groups[0]
    assert loaded.deployment(g).step_margin == 0
    assert loaded.deployment(g, simulated=True).step_margin == 0.15


def test_the_cli_says_which_margin_its_simulations_ran(run_cli, tmp_path):
    out = tmp_path / "p.json"
    res = run_cli("plan", "-m", "llama-3.1-8b", "--rate", "5", "--only", "L40S,H100-SXM",
                  "--step-margin", "0.125", "--out", out)
    assert res.code == 0, res.err
    assert "simulated on its trace with every step 12.5% slower than modelled" in " ".join(
        res.out.split())
    res = run_cli("simulate", out, "--requests", "300")
    assert res.code == 0, res.err
    assert "every step 12.5% slower than modelled (--step-margin)" in " ".join(res.out.split())
    res = run_cli("simulate", out, "--requests", "300", "--step-margin", "0", "--json")
    assert json.loads(res.out)["step_margin"] == {"llama-3.1-8b": 0.0}


def test_bad_margins_are_refused_by_the_api_the_cli_and_the_plan_file(run_cli, tmp_path):
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(HetserveError, match="--step-margin: expected a share"):
            hetserve.make_plan("llama-3.1-8b", step_margin=bad)
    for bad in ("-0.1", "2", "nan"):
        assert_bad_input(run_cli("plan", "-m", "llama-3.1-8b", "--step-margin", bad),
                         needs=["--step-margin"])
    plan = hetserve.make_plan("llama-3.1-8b", rate=5, baselines=False)
    data = plan.to_dict()
    data["models"][0]["step_margin"] = 3
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    assert_bad_input(run_cli("simulate", path), needs=["step_margin"], scrub=[tmp_path])
    good = tmp_path / "good.json"
    plan.save(good)
    assert_bad_input(run_cli("simulate", good, "--step-margin", "-1"), needs=["--step-margin"])
