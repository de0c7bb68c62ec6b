"""hetserve: cost-efficient LLM serving on heterogeneous accelerators.

    import hetserve
    est = hetserve.estimate("llama-3.1-8b", workload="azure-conv", ttft=2.0, tpot=0.05)
    plan = hetserve.make_plan("llama-3.1-70b", workload="azure-conv", rate=10)
    plan.save("plan.json")
"""

from __future__ import annotations

from hetserve.plan import plan as make_plan

__version__ = "0.1.0"

__all__ = ["__version__", "estimate", "make_plan"]


def estimate(model: str, *, workload: str = "azure-conv", rate: float | None = None,
             ttft: float = 2.0, tpot: float = 0.05, catalog=None, dtype: str | None = None,
             grid=None, available=None, only=None, engine: str = "vllm",
             attainment: float = 0.99):
    """Per accelerator x TP: the rate and tokens per dollar of each request class with a share
    `attainment` of its requests within the limits (as `plan` sizes replicas). `available`
    (NAME -> count) and `only` (names) limit the accelerators as for planning."""
    from hetserve.errors import positive
    from hetserve.models import check_dtype, get_model
    from hetserve.perf import SLO
    from hetserve.perf.estimate import estimate as run
    from hetserve.perf.model import check_engine
    from hetserve.plan import check_attainment, latency_quantile, plan_catalog
    from hetserve.workload import classify, load_trace

    check_dtype(dtype)
    check_engine(engine)
    slo = SLO(positive(ttft, "--ttft"), positive(tpot, "--tpot"),
              latency_quantile(check_attainment(attainment)))
    spec = get_model(model)
    trace = load_trace(workload).for_model(spec.name, spec.matches)
    cat = plan_catalog(catalog, None, available, only)
    return run(spec, classify(trace, grid, rate), cat, slo, dtype, engine)

