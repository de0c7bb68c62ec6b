"""Workloads: request traces (Azure CSV, JSONL, bundled Azure 2023, synthetic) and request classes.

The bundled Azure LLM inference traces 2023 are CC-BY 4.0: see data/ATTRIBUTION.md.
"""

from hetserve.workload.classes import (
    DEFAULT_INPUT_EDGES,
    DEFAULT_OUTPUT_EDGES,
    ClassGrid,
    RequestClass,
    Workload,
    classify,
    grid_from_options,
    parse_edges,
)
from hetserve.workload.trace import (
    BUNDLED,
    Trace,
    load_trace,
    read_azure_csv,
    read_jsonl,
    synthetic,
)

__all__ = [
    "BUNDLED",
    "DEFAULT_INPUT_EDGES",
    "DEFAULT_OUTPUT_EDGES",
    "ClassGrid",
    "RequestClass",
    "Trace",
    "Workload",
    "classify",
    "grid_from_options",
    "load_trace",
    "parse_edges",
    "read_azure_csv",
    "read_jsonl",
    "synthetic",
]
