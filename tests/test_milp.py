import numpy as np
import pytest

from hetserve.plan.interop import solve_abstract, solve_melange
from hetserve.plan.milp import Problem, max_scale, min_cost

from .conftest import ROOT

EXAMPLES = ROOT / "examples"


def test_melange_published_example():
    res = solve_melange(EXAMPLES / "melange_example.json")  # slice_factor 1, as Mélange solves it
    assert res["cost"] == pytest.approx(6.70)
    assert res["gpus"] == {"A10G": 3, "A100-80GB": 1}
    # the continuous relaxation (formulation A) can only be as cheap or cheaper: 1 + 1 here
    cont = solve_melange(EXAMPLES / "melange_example.json", continuous=True)
    assert cont["cost"] == pytest.approx(1.01 + 3.67)
    assert cont["gpus"] == {"A10G": 1, "A100-80GB": 1}
    for r in (res, cont):
        total = np.sum([np.array(m) for m in r["shares"].values()], axis=0)
        assert np.allclose(total, 1.0)


def test_icml25_section_4_2_example():
    res = solve_abstract(EXAMPLES / "icml25_example.json")
    assert res["makespan"] == pytest.approx(28.43, abs=0.01)
    assert res["replicas"] == {"c1": 1, "c2": 0, "c3": 0, "c4": 1}
    assert res["cost"] == 8
    assert res["shares"]["c4"]["w1"] == pytest.approx(0.853, abs=0.001)
    assert res["shares"]["c1"]["w2"] == pytest.approx(1.0)


def random_problem(rng, n_types=4, n_classes=6):
    price = rng.uniform(0.5, 4.0, n_types)
    cap = rng.uniform(0.5, 20.0, (n_types, n_classes)) * (rng.random((n_types, n_classes)) > 0.2)
    cap[rng.integers(n_types), :] = rng.uniform(0.5, 5.0, n_classes)  # every class servable
    demand = rng.uniform(0.1, 15.0, n_classes)
    usage = np.eye(n_types)
    return Problem([f"g{i}" for i in range(n_types)], price, cap, demand,
                   usage=usage, types=[f"t{i}" for i in range(n_types)])


def check_feasible(p: Problem, sol, scale=1.0):
    assert np.allclose(sol.shares.sum(axis=0), 1.0, atol=1e-6)  # every class fully routed
    assert np.all(sol.shares[p.cap <= 0] == 0)  # nothing routed where it cannot run
    with np.errstate(divide="ignore", invalid="ignore"):
        load = np.where(p.cap > 0, sol.shares * scale * p.demand / p.cap, 0.0).sum(axis=1)
    assert np.all(load <= sol.replicas + 1e-6)  # no config over capacity
    assert sol.cost == pytest.approx(float(p.price @ sol.replicas))  # cost = sum of prices


@pytest.mark.parametrize("seed", range(25))
def test_random_min_cost_plans_are_feasible_and_beat_homogeneous(seed):
    rng = np.random.default_rng(seed)
    p = random_problem(rng)
    sol = min_cost(p)
    assert sol.status == "optimal"
    check_feasible(p, sol)
    for t in range(len(p.configs)):
        keep = np.arange(len(p.configs)) == t
        if (p.cap[t] > 0).all():
            homo = min_cost(p.restricted(keep))
            assert sol.cost <= homo.cost + 1e-9
    # the LP relaxation bounds the integer optimum from below
    lp_bound = sum(min(p.price[c] * p.demand[w] / p.cap[c, w] for c in range(len(p.configs))
                       if p.cap[c, w] > 0) for w in range(len(p.demand)))
    assert sol.cost >= lp_bound - 1e-9


@pytest.mark.parametrize("seed", range(10))
def test_random_max_scale_plans_respect_budget_and_availability(seed):
    rng = np.random.default_rng(100 + seed)
    p = random_problem(rng)
    p.budget = 10.0
    p.available = np.full(len(p.types), 2.0)
    sol = max_scale(p)
    assert sol.status == "optimal" and sol.scale > 0
    check_feasible(p, sol, scale=sol.scale)
    assert sol.cost <= 10.0 + 1e-9 and np.all(sol.replicas <= 2)


def test_max_scale_is_not_capped_by_the_number_of_configs():
    # one config, one class: a $1/h replica serves 2 req/s of a 1 req/s demand; $10/h buys
    # 10 replicas, so the demand scales 20x (the share column u = scale x share exceeds 1)
    p = Problem(["c"], np.array([1.0]), np.array([[2.0]]), np.array([1.0]), ["w"],
                np.array([[1.0]]), ["t"], np.array([np.inf]), budget=10.0)
    sol = max_scale(p)
    assert sol.replicas.tolist() == [10]
    assert sol.scale == pytest.approx(20.0)
    assert sol.shares[0, 0] == pytest.approx(1.0)


def linked_problem(rng, blocks=3, n_types=4, n_classes=4):
    """Blocks (a model each: a config per type, its own classes) that share the types."""
    B, T, W = blocks, n_types, n_classes
    cap = np.zeros((B * T, B * W))
    for b in range(B):
        part = rng.uniform(0.5, 6.0, (T, W)) * (rng.random((T, W)) > 0.2)
        part[rng.integers(T), :] = rng.uniform(0.5, 3.0, W)  # every class servable
        cap[b * T:(b + 1) * T, b * W:(b + 1) * W] = part
    price = np.tile(rng.uniform(0.5, 4.0, T), B)
    usage = np.tile(np.eye(T), (B, 1)) * rng.integers(1, 3, B * T)[:, None]
    p = Problem([f"m{b}-t{t}" for b in range(B) for t in range(T)], price, cap,
                rng.uniform(0.5, 8.0, B * W), usage=usage, types=[f"t{t}" for t in range(T)])
    blocks_ = [(np.arange(b * T, (b + 1) * T), np.arange(b * W, (b + 1) * W)) for b in range(B)]
    return p, blocks_


def test_linked_blocks_reach_the_joint_optimum_within_their_gap():
    """Lagrangian decomposition by block on 12 random problems whose most used type is cut to
    half (and a budget on every third): a plan within the limits, the joint MILP's exact optimum
    (the plans the prices found, combined), a bound below it, and a proof for at least half."""
    from dataclasses import replace

    from hetserve.plan.milp import LINKED_GAP, min_cost_blocks, min_cost_linked

    proven = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        p, blocks = linked_problem(rng)
        alone = min_cost_blocks(p, blocks)
        used = p.usage.T @ alone.replicas
        top = int(np.argmax(used))  # the most used type: at most half of it
        p = replace(p, available=np.where(np.arange(len(used)) == top, used[top] // 2, np.inf))
        if seed % 3 == 0:
            p = replace(p, budget=alone.cost * 1.3)
        exact = min_cost(p, abs_gap=0.0)
        sol = min_cost_linked(p, blocks)
        if exact.status == "infeasible":
            assert not sol.ok
            continue
        assert exact.status == "optimal" and sol.ok, (seed, sol.status)
        check_feasible(p, sol)
        assert np.all(p.usage.T @ sol.replicas <= p.available + 1e-9)
        assert p.budget is None or sol.cost <= p.budget + 1e-9
        assert sol.bound <= exact.objective + 1e-6
        assert sol.objective == pytest.approx(exact.objective, rel=LINKED_GAP, abs=5e-4), seed
        proven += sol.status == "optimal"
    assert proven >= 6


def test_undominated_drops_only_configs_a_plan_can_do_without():
    """B costs more than A for less capacity: dominated, unless A's type is limited and B's
    is not; C is the only one serving class 1 fast; D equals A and comes later; E serves
    other classes (another part of the problem) and is compared with no one else."""
    from hetserve.plan.milp import undominated

    cap = np.array([[2.0, 2.0, 0.0], [1.0, 2.0, 0.0], [3.0, 1.0, 0.0], [2.0, 2.0, 0.0],
                    [0.0, 0.0, 1.0]])
    usage = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    p = Problem(list("ABCDE"), np.array([1.0, 2.0, 2.0, 1.0, 5.0]), cap, np.ones(3),
                usage=usage, types=["t0", "t1"])
    assert undominated(p).tolist() == [True, False, True, False, True]
    limited = Problem(list("ABCDE"), p.price, cap, np.ones(3), usage=usage,
                      types=["t0", "t1"], available=np.array([4.0, np.inf]))
    assert undominated(limited).tolist() == [True, True, True, False, True]


@pytest.mark.parametrize("seed", range(12))
def test_pruning_dominated_configs_keeps_the_optimum(seed):
    """Random problems of 24 configs on 4 types (a budget or an availability limit on some):
    min_cost (and max_scale, under a budget) reach the same optimum with and without the
    dominated configs, and the pruned plans are feasible in the full problem."""
    from hetserve.plan.milp import undominated

    rng = np.random.default_rng(200 + seed)
    C, W, T = 24, 6, 4
    kind = rng.integers(T, size=C)
    devices = rng.choice([1, 2, 4], size=C)
    usage = np.zeros((C, T))
    usage[np.arange(C), kind] = devices
    price = rng.uniform(0.5, 3.0, T)[kind] * devices
    # a type's speed on each class (some it cannot serve), times devices^0.8
    speed = rng.uniform(0.3, 3.0, (T, W)) * (rng.random((T, W)) > 0.2)
    cap = speed[kind] * devices[:, None] ** 0.8 * rng.uniform(0.95, 1.05, (C, 1))
    cap[0] = rng.uniform(0.5, 2.0, W)  # every class servable
    p = Problem([f"c{i}" for i in range(C)], price, cap, rng.uniform(1, 6, W), usage=usage,
                types=[f"t{t}" for t in range(T)])
    if seed % 2:
        p.available = np.where(np.arange(T) == seed % T, 6.0, np.inf)
    if seed % 3 == 0:
        p.budget = 1.5 * min_cost(p).cost
    assert 0 < undominated(p).sum() < C
    pruned, whole = min_cost(p), min_cost(p, prune=False)
    assert pruned.status == whole.status
    if whole.ok:
        assert pruned.cost == pytest.approx(whole.cost, abs=1e-3)
        check_feasible(p, pruned)
        assert np.all(p.usage.T @ pruned.replicas <= p.available + 1e-9)
    if p.budget is not None:  # (availability alone leaves the other types unbounded)
        a, b = max_scale(p), max_scale(p, prune=False)
        assert a.scale == pytest.approx(b.scale, rel=2e-4)
        check_feasible(p, a, scale=a.scale)


def test_pruning_gives_way_where_a_config_would_pass_max_replicas():
    """A and B are alike, so B is dominated; but 120,000 replicas of one config pass
    MAX_REPLICAS: the plan keeps both (not 100,000 of A and the dear C for the rest)."""
    from hetserve.plan.milp import MAX_REPLICAS, undominated

    p = Problem(["A", "B", "C"], np.array([1.0, 1.0, 100.0]),
                np.array([[1.0], [1.0], [10.0]]), np.array([120_000.0]))
    assert undominated(p).tolist() == [True, False, True]
    sol = min_cost(p)
    assert sol.cost == pytest.approx(120_000.0) and sol.replicas.max() <= MAX_REPLICAS
    two = Problem(["A", "B"], np.array([1.0, 1.0]), np.array([[1.0], [1.0]]),
                  np.array([1.0]), budget=150_000.0)
    assert max_scale(two).scale == pytest.approx(150_000.0)
