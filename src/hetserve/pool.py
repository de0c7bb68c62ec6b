"""Independent pieces of work, run here, in local worker processes, or on a Ray cluster.

`run_all(fn, shared, items)` returns [fn(shared, item) for item in items], in order. Workers are
forked (by a fork server when this process runs threads, which fork is not safe beside). On Ray,
`shared` travels once through the object store and each item is a task of one CPU; Ray is an
optional extra (hetserve[ray]).
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from hetserve.errors import HetserveError


def run_all(fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any], workers: int = 1,
            ray: str | None = None) -> list:
    if ray is not None:
        return _on_ray(fn, shared, items, ray)
    if workers <= 1 or len(items) <= 1:
        return [fn(shared, item) for item in items]
    # fork starts at once and needs no `if __name__ == "__main__"` guard in a user's script; it
    # is only safe while this process runs one thread
    context = multiprocessing.get_context("fork" if threading.active_count() == 1
                                          else "forkserver")
    with ProcessPoolExecutor(min(workers, len(items)), mp_context=context) as pool:
        return list(pool.map(fn, [shared] * len(items), items))


def _on_ray(fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any], address: str
            ) -> list:
    """address: "local" (a Ray instance started here for this run), "auto" (the cluster this
    machine belongs to) or a cluster's address (ray://host:10001 or host:6379)."""
    try:
        import ray
    except ImportError:
        raise HetserveError("--ray: Ray is not installed (pip install 'hetserve[ray]')") from None
    started = not ray.is_initialized()
    if started:
        try:
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise HetserveError(f"--ray {address}: cannot join a Ray cluster: "
                                f"{str(exc).splitlines()[0]}") from None
    try:
        task = ray.remote(num_cpus=1)(fn)
        ref = ray.put(shared)
        return ray.get([task.remote(ref, item) for item in items])
    finally:
        if started:
            ray.shutdown()
