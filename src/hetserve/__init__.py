"""hetserve: cost-efficient LLM serving on heterogeneous accelerators.

    import hetserve
    est = hetserve.estimate("llama-3.1-8b", workload="azure-conv", ttft=2.0, tpot=0.05)
    plan = hetserve.plan("llama-3.1-70b", workload="azure-conv", rate=10)
    plan.save("plan.json")
"""

from __future__ import annotations

__version__ = "0.1.0"


def estimate(model: str, *, workload: str = "azure-conv", rate: float | None = None,
             ttft: float = 2.0, tpot: float = 0.05, catalog=None, dtype: str | None = None,
             grid=None):
    """Per accelerator x TP: the rate and tokens per dollar of each request class."""
    from hetserve.catalog import load_catalog
    from hetserve.models import get_model
    from hetserve.perf import SLO
    from hetserve.perf.estimate import estimate as run
    from hetserve.workload import classify, load_trace

    wl = classify(load_trace(workload), grid, rate)
    return run(get_model(model), wl, catalog or load_catalog(), SLO(ttft, tpot), dtype)


def __getattr__(name: str):
    if name == "plan":  # the planning package, callable as hetserve.plan(...)
        import hetserve.plan as plan_package

        return plan_package
    raise AttributeError(name)
