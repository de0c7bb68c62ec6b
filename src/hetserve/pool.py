"""Independent pieces of work, run here, in local worker processes, or on a Ray cluster.

`run_all(fn, shared, items)` returns [fn(shared, item) for item in items], in order. `shared`
goes to each worker once, not with every item. Local workers are forked while this process runs
one Python thread, else started by a fork server (fork is not safe beside threads; a fork
server, like spawn, re-imports the main module, so a script calling this needs the usual
`if __name__ == "__main__":` guard then). On Ray, `shared` travels once through the object store
and each item is a task of one CPU; Ray is an optional extra (hetserve[ray]).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from hetserve.errors import HetserveError

RAY_ADDRESS = re.compile(r"^(local|auto|ray://[\w.\-]+:\d+|[\w.\-]+:\d+)$")

_work: tuple[Callable[[Any, Any], Any], Any] | None = None  # a worker's fn and shared data


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _start(fn: Callable[[Any, Any], Any], shared: Any) -> None:
    global _work
    _work = (fn, shared)


def _run(item: Any) -> Any:
    assert _work is not None
    fn, shared = _work
    return fn(shared, item)


def run_all(fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any], workers: int = 1,
            ray: str | None = None, progress: Callable[[int, int], None] | None = None
            ) -> list:
    """progress(done, total) as results come in."""
    tick = progress or (lambda done, total: None)
    if ray is not None:
        return _on_ray(fn, shared, items, ray, tick)
    if workers <= 1 or len(items) <= 1:
        out = []
        for item in items:
            out.append(fn(shared, item))
            tick(len(out), len(items))
        return out
    context = multiprocessing.get_context("fork" if threading.active_count() == 1
                                          else "forkserver")
    with ProcessPoolExecutor(min(workers, len(items)), mp_context=context, initializer=_start,
                             initargs=(fn, shared)) as pool:
        futures = [pool.submit(_run, item) for item in items]
        for done, _ in enumerate(as_completed(futures), 1):
            tick(done, len(items))
        return [f.result() for f in futures]


def check_ray_address(address: str) -> str:
    if not RAY_ADDRESS.match(address):
        raise HetserveError(f"--ray '{address}': expected local (a Ray instance started for "
                            "this run), auto (the cluster this machine belongs to) or a "
                            "cluster's address (ray://HOST:10001 or HOST:6379)")
    return address


def _on_ray(fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any], address: str,
            tick: Callable[[int, int], None]) -> list:
    check_ray_address(address)
    try:
        import ray
        from ray.exceptions import RayTaskError
    except ImportError:
        raise HetserveError("--ray: Ray is not installed (pip install 'hetserve[ray]')") from None
    started = not ray.is_initialized()
    if started:
        try:
            extra = {"include_dashboard": False} if address == "local" else {}
            ray.init(address=address, log_to_driver=False, **extra)
        except Exception as exc:  # noqa: BLE001 (Ray raises many kinds; each is one line here)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise HetserveError(f"--ray {address}: cannot start or join Ray: {first}") from None
    try:
        task = ray.remote(num_cpus=1)(fn)
        ref = ray.put(shared)
        refs = [task.remote(ref, item) for item in items]
        waiting = list(refs)
        while waiting:
            _, waiting = ray.wait(waiting)
            tick(len(refs) - len(waiting), len(refs))
        return ray.get(refs)
    except RayTaskError as exc:  # what the task raised, without Ray's remote traceback
        cause = exc.cause if isinstance(exc.cause, Exception) else exc
        if isinstance(cause, HetserveError):
            raise cause from None
        raise
    finally:
        if started:
            ray.shutdown()
