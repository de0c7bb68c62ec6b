"""hetserve: cost-efficient LLM serving on heterogeneous accelerators."""

__version__ = "0.1.0"
