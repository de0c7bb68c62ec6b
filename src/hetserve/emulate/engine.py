"""One emulated replica: the simulator's `Engine` stepping in real time.

Steps run back to back while the engine holds work, each taking the wall time the step physics
gives it: a step is scheduled at its start (`Engine.step(start)`), and its tokens are released
to their requests when the step's time has passed (see EmulatedEngine._run for lag). So a
saturated emulator queues, batches and preempts exactly as a saturated engine does in
simulation (one copy of the physics).

Prompts are counted, not tokenised (hetserve.route.request, as the gateway counts them).
Output is deterministic filler, one word a token, as long as the server asks (see
hetserve.emulate.server: `min_tokens`, else `max_tokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hetserve.perf import Deployment
from hetserve.sim.engine import Engine, Request

FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed",
          "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna")
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                   5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


def filler(k: int) -> str:
    """Output token k (0-based) as text: a word with its leading space."""
    return " " + FILLER[k % len(FILLER)]


@dataclass(eq=False)
class Job:
    """A request in an emulated engine, and what its client has been sent."""

    request: Request
    tokens: asyncio.Queue = field(default_factory=asyncio.Queue)  # k per token, None: done,
    # -1: the engine failed
    sent: int = 0  # tokens handed out
    last: float = 0.0  # when the last of them was (emulator seconds)


class Metrics:
    """vLLM's metric names (v1 engine) for one replica, in a registry of its own."""

    def __init__(self, model: str) -> None:
        """Each metric is its `model_name` series (it exists, at 0, from the start)."""
        self.registry = CollectorRegistry()
        labels = ["model_name"]

        def gauge(name: str, doc: str):
            return Gauge(name, doc, labels, registry=self.registry).labels(model)

        def counter(name: str, doc: str):
            return Counter(name, doc, labels, registry=self.registry).labels(model)

        def histogram(name: str, doc: str):
            return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS,
                             registry=self.registry).labels(model)

        self.running = gauge("vllm:num_requests_running", "Requests in the running batch.")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV cache usage (1 = full).")
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token.")
        self.itl = histogram("vllm:inter_token_latency_seconds", "Time between output tokens.")
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Tokens generated.")
        self.preemptions = counter("vllm:num_preemptions", "Preemptions.")


class EmulatedEngine:
    """An Engine stepping in real time on the running asyncio loop."""

    def __init__(self, dep: Deployment, model: str, kv_tokens: int | None = None) -> None:
        self.engine = Engine(dep, kv_tokens=kv_tokens, fast=False)
        self.dep = dep
        self.metrics = Metrics(model)
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._t0 = time.monotonic()
        self._task: asyncio.Task | None = None
        self._preempted = 0
        self._arrived = 0.0  # the latest arrival added since the last step began

    def now(self) -> float:
        return time.monotonic() - self._t0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def submit(self, prompt_tokens: int, max_tokens: int) -> Job:
        """Queue a request; its tokens arrive on the job's queue as the engine makes them."""
        req = Request(next(self._ids), self.now(), prompt_tokens, max_tokens)
        self._arrived = max(self._arrived, req.arrival)
        job = Job(req)
        self._jobs[req.id] = job
        self.engine.add(req)
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self._gauges()
        self._wake.set()
        return job

    def abort(self, job: Job) -> None:
        """The client went away: free its slot (a no-op once it has finished)."""
        if self._jobs.pop(job.request.id, None) is not None:
            self.engine.abort(job.request)
            self._gauges()

    def _gauges(self) -> None:
        e, m = self.engine, self.metrics
        m.running.set(len(e.running))
        m.waiting.set(len(e.waiting))
        m.kv_usage.set(1.0 - e.free_blocks / e.total_blocks)

    async def _run(self) -> None:
        """Steps follow the engine's own clock, not the wall clock at which the loop got
        round to them: time the loop spends on other work (Python per step, other replicas,
        the HTTP side) is caught up by running the next steps without sleeping, instead of
        adding up into a slower engine. A step never starts before a request added since the
        last one arrived (a request is not served before it came)."""
        engine = self.engine
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while engine.busy:
                    start = max(engine.clock, self._arrived)
                    _, finished = engine.step(start)
                    self._arrived = 0.0
                    await asyncio.sleep(max(0.0, engine.clock - self.now()))
                    self._release(finished)
            except Exception as exc:  # never leave a client waiting on a dead loop
                sys.stderr.write(f"emulated {self.dep.label}: engine failed: "
                                 f"{type(exc).__name__}: {exc}; its requests end in errors\n")
                for job in self._jobs.values():
                    job.tokens.put_nowait(-1)
                self._jobs.clear()
                self.engine = engine = Engine(self.dep, kv_tokens=engine.kv_limit, fast=False)
                self._gauges()

    def _release(self, finished: list[Request]) -> None:
        """Hand out the tokens of the step that just ended."""
        m = self.metrics
        for req in [*self.engine.running, *finished]:
            job = self._jobs.get(req.id)
            if job is None:
                continue
            new = req.generated - job.sent
            for k in range(job.sent, req.generated):
                job.tokens.put_nowait(k)
            if new and job.sent == 0:
                m.ttft.observe(req.first_token - req.arrival)
            elif new:
                m.itl.observe(self.now() - job.last)
            if new:
                job.last = self.now()
                m.generation_tokens.inc(new)
            job.sent = req.generated
        for req in finished:
            job = self._jobs.pop(req.id, None)
            if job is not None:
                job.tokens.put_nowait(None)
                m.e2e.observe(req.finish - req.arrival)
        if self.engine.preemptions > self._preempted:
            m.preemptions.inc(self.engine.preemptions - self._preempted)
            self._preempted = self.engine.preemptions
        self._gauges()
