"""A vLLM-like engine: continuous batching, chunked prefill, paged KV cache, recompute preemption.

Each step the scheduler (vLLM V1 order) first serves running sequences (one token per decoding
sequence, the next chunk for a sequence still in prefill), then admits waiting requests first
come first served, within a token budget (max_num_batched_tokens), a sequence limit
(max_num_seqs) and the KV blocks free. When a running sequence needs a block and none is free,
the newest running sequence is preempted: its blocks are freed and it waits again, to recompute
its prompt and generated tokens. The step's duration comes from the performance model for the
step's exact mix (hetserve.perf.Deployment.step_seconds).

The same engine runs in virtual time (the simulator calls `advance(until)`) and in real time
(an emulator calls `step(now)` and sleeps for the duration it returns). `advance` skips over
runs of steps whose batch does not change: when every running sequence is decoding and no
waiting request can be admitted, the next k steps differ only in their context, so their
durations add up in closed form (Deployment.decode_run_seconds) and the engine jumps to the
next arrival, completion or KV block shortage in one move. `fast=False` steps one by one.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from hetserve.perf import Deployment

BLOCK_TOKENS = 16


@dataclass(eq=False, slots=True)
class Request:
    id: int
    arrival: float
    input_tokens: int
    output_tokens: int
    cls: int = -1  # request class (index into the model's classes; -1: none)
    replica: int = -1  # where the router sent it (-1: nowhere could hold it)
    # progress
    computed: int = 0  # tokens whose KV is in cache
    generated: int = 0  # output tokens emitted
    blocks: int = 0
    scheduled: float = math.nan  # first admitted to the running batch
    first_token: float = math.nan
    finish: float = math.nan
    preemptions: int = 0

    @property
    def target(self) -> int:
        """Tokens known (prompt and generated), all of which are processed before the next token
        is sampled. Decoding, only the last generated token is unprocessed; after a preemption
        the whole context is recomputed."""
        return self.input_tokens + self.generated

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first (0 for one-token outputs)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.finish - self.first_token) / (self.output_tokens - 1)

    @property
    def latency(self) -> float:
        return self.finish - self.arrival

    @property
    def queueing(self) -> float:
        return self.scheduled - self.arrival


def _blocks(tokens: int) -> int:
    return -(-tokens // BLOCK_TOKENS)


class Engine:
    """One replica. `add` requests, then `advance(until)` (virtual time) or `step(now)`."""

    def __init__(self, dep: Deployment, kv_tokens: int | None = None, fast: bool = True) -> None:
        if not dep.fits:
            raise ValueError(f"{dep.label}: {dep.why_not()}")
        self.dep = dep
        self.fast = fast
        self.total_blocks = (kv_tokens or dep.kv_capacity_tokens) // BLOCK_TOKENS
        self.free_blocks = self.total_blocks
        self.kv_limit = self.total_blocks * BLOCK_TOKENS  # a whole number of blocks
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.clock = 0.0  # when the next step can start
        self.steps = 0
        self.busy_time = 0.0  # seconds with a step running
        self.kv_block_seconds = 0.0  # KV blocks held, integrated over time
        self.preemptions = 0
        self.last_finished: list[Request] = []  # finished by the step that ended at `clock`
        self._decoding = True  # every running sequence is past its prefill
        self._run: tuple[int, int, int] | None | bool = False  # _steady's cache (False: stale)
        self._quiet = -1.0  # quiet_until's cache (< 0: stale)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def outstanding_at(self, now: float) -> int:
        """Requests not finished by `now` (those the last step finishes after `now` count)."""
        late = len(self.last_finished) if self.clock > now else 0
        return len(self.waiting) + len(self.running) + late

    def holds(self, req: Request) -> bool:
        """Whether the request's prompt and output fit in this replica's KV cache at all."""
        return req.input_tokens + req.output_tokens <= self.kv_limit

    def add(self, req: Request) -> None:
        if not self.holds(req):
            raise ValueError(
                f"request {req.id}: {req.input_tokens + req.output_tokens} tokens exceed the "
                f"KV cache of {self.dep.label} ({self.kv_limit} tokens)"
            )
        if not self.busy:
            self.clock = max(self.clock, req.arrival)
        self.waiting.append(req)
        self._run, self._quiet = False, -1.0

    # ---- virtual time ------------------------------------------------------------------
    def advance(self, until: float, first_finish: bool = False) -> list[Request]:
        """Run every step that starts before `until` (with `first_finish`, stop after the first
        step that finishes a request); return the requests they finish."""
        done: list[Request] = []
        while self.clock < until and (self.running or self.waiting):
            if not (self.fast and self._decoding and self.running
                    and self._decode_run(until, done)):
                dur, finished = self.step(self.clock)
                if dur <= 0.0:
                    raise RuntimeError(f"{self.dep.label}: no request could be scheduled")
                done += finished
            if first_finish and done:
                break
        return done

    def _steady(self) -> tuple[int, int, int] | None:
        """(steps, batch, context) when the next `steps` steps are identical decode steps of the
        running batch (until one finishes or KV blocks run short), with nothing admissible;
        None when the next step is not such a step. Cached until the engine changes."""
        if self._run is not False:
            return self._run
        self._run = None
        running, dep = self.running, self.dep
        batch = len(running)
        if not (self.fast and self._decoding and running) or batch > dep.chunk_tokens:
            return None
        if self.waiting and batch < dep.max_seqs:
            head = self.waiting[0]
            n = min(head.target - head.computed, dep.chunk_tokens - batch)
            if _blocks(head.computed + n) - head.blocks <= self.free_blocks:
                return None  # the head could be admitted: a plain step does that
        steps = min([r.output_tokens - r.generated for r in running])
        # KV blocks: sequence r takes a new block at each step j with (c_r + j) % 16 == 0,
        # so every 16 steps take `batch` blocks; within the last cycle, in order of offset.
        cycles, left = divmod(self.free_blocks, batch)
        if steps > 16 * cycles:
            offsets = sorted([-r.computed % BLOCK_TOKENS for r in running])
            steps = min(steps, 16 * cycles + offsets[left])
        if steps > 0:
            self._run = (steps, batch, sum([r.computed for r in running]))
        return self._run

    def quiet_until(self) -> float:
        """A time before which no request finishes unless one is added (`clock` if the next
        step may change the batch)."""
        if self._quiet < 0.0:
            run = self._steady()
            self._quiet = self.clock if run is None else \
                self.clock + self.dep.decode_run_seconds(run[1], run[2], run[0])
        return self._quiet

    def _decode_run(self, until: float, done: list[Request]) -> bool:
        """Take the steady decode steps that start before `until` at once; False if none."""
        run = self._steady()
        if run is None:
            return False
        steps, batch, context = run
        dep = self.dep
        steps = dep.decode_steps_before(batch, context, until - self.clock, steps)
        dur = dep.decode_run_seconds(batch, context, steps)
        end = self.clock + dur
        used = 0
        finished = []
        for r in self.running:
            r.computed += steps
            r.generated += steps
            blocks = -(-r.computed // BLOCK_TOKENS)
            used += blocks - r.blocks
            r.blocks = blocks
            if r.generated >= r.output_tokens:
                r.finish = end
                finished.append(r)
        held = self.total_blocks - self.free_blocks
        self.kv_block_seconds += (held + used / 2.0) * dur  # blocks grow evenly over the run
        self.free_blocks -= used
        self._retire(finished)
        self.steps += steps
        self.busy_time += dur
        self.clock = end
        done += finished
        return True

    # ---- one step (both virtual and real time) -------------------------------------------
    def _preempt(self, victim: Request) -> None:
        self.running.remove(victim)
        self.free_blocks += victim.blocks
        victim.blocks = 0
        victim.computed = 0
        victim.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)

    def _grow(self, req: Request, new_tokens: int) -> bool:
        """Reserve blocks for `new_tokens` more tokens of `req`; False if none are free."""
        need = _blocks(req.computed + new_tokens) - req.blocks
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        req.blocks += need
        return True

    def _retire(self, finished: list[Request]) -> None:
        self._run, self._quiet = False, -1.0
        for req in finished:
            self.running.remove(req)
            self.free_blocks += req.blocks
            req.blocks = 0
        self.last_finished = finished

    def step(self, now: float) -> tuple[float, list[Request]]:
        """Schedule and run one step starting at `now`; returns (duration, finished)."""
        dep = self.dep
        budget = dep.chunk_tokens
        self._run, self._quiet = False, -1.0
        plan: list[tuple[Request, int]] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.target - req.computed, budget)  # 1 when decoding
            while not self._grow(req, n):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is req:
                    break
            else:
                plan.append((req, n))
                budget -= n
                i += 1
                continue
            # req itself was preempted: it is no longer in running, do not advance i
        while self.waiting and budget > 0 and len(self.running) < dep.max_seqs:
            req = self.waiting[0]
            n = min(req.target - req.computed, budget)
            if not self._grow(req, n):
                break
            self.waiting.popleft()
            self.running.append(req)
            if math.isnan(req.scheduled):  # first admission
                req.scheduled = now
            plan.append((req, n))
            budget -= n
        if not plan:
            self.clock = max(self.clock, now)
            return 0.0, []
        tokens = seqs = chunk = 0
        decode_ctx = pairs = chunk_pairs = 0.0
        for req, n in plan:
            tokens += n
            if req.generated and req.target - req.computed == 1:  # decode
                decode_ctx += req.computed
                seqs += 1
            else:  # prefill chunk; samples a token when it completes the context
                p = n * (req.computed + n / 2.0)
                pairs += p
                if n > chunk:
                    chunk, chunk_pairs = n, p
                if req.computed + n == req.target:
                    seqs += 1
        dur = dep.step_seconds(tokens, seqs, decode_ctx, pairs, chunk, chunk_pairs)
        self.kv_block_seconds += (self.total_blocks - self.free_blocks) * dur
        end = now + dur
        finished = []
        decoding = True
        for req, n in plan:
            req.computed += n
            if req.computed < req.target:
                decoding = False
                continue
            req.generated += 1
            if req.generated == 1:
                req.first_token = end
            if req.generated >= req.output_tokens:
                req.finish = end
                finished.append(req)
        self._retire(finished)
        # sequences left unscheduled by the budget may still be mid-prefill
        self._decoding = decoding and len(plan) >= len(self.running) + len(finished)
        self.steps += 1
        self.busy_time += dur
        self.clock = end
        return dur, finished
