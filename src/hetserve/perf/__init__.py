"""Performance model: latency and capacity of a deployment per request class (profiles override)."""

from hetserve.perf.capacity import SLO, Capacity, class_capacity
from hetserve.perf.model import Deployment

__all__ = ["SLO", "Capacity", "Deployment", "class_capacity"]
