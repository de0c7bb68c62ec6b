"""A vLLM-like engine in virtual time: continuous batching, chunked prefill, paged KV cache.

Each step the scheduler (vLLM V1 order) first serves running sequences (one token per decoding
sequence, the next chunk for a sequence still in prefill), then admits waiting requests first
come first served, within a token budget (max_num_batched_tokens), a sequence limit
(max_num_seqs) and the KV blocks free. When a running sequence needs a block and none is free,
the newest running sequence is preempted: its blocks are freed and it waits again, to recompute
its prompt and generated tokens. The step's duration comes from the performance model for the
step's exact mix (hetserve.perf.Deployment.step_time).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from hetserve.perf import Deployment

BLOCK_TOKENS = 16


@dataclass(eq=False)
class Request:
    id: int
    arrival: float
    input_tokens: int
    output_tokens: int
    cls: int = -1
    # progress
    computed: int = 0  # tokens whose KV is in cache
    generated: int = 0  # output tokens emitted
    blocks: int = 0
    first_token: float = math.nan
    finish: float = math.nan
    preemptions: int = 0

    @property
    def target(self) -> int:
        """Tokens that must be in cache before the next token can be sampled."""
        return self.input_tokens + max(self.generated - 1, 0)

    @property
    def in_prefill(self) -> bool:
        return self.computed < self.target

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


def _blocks(tokens: int) -> int:
    return -(-tokens // BLOCK_TOKENS)


class Engine:
    """One replica. `add` requests, then call `step(now)` while `busy`."""

    def __init__(self, dep: Deployment) -> None:
        if not dep.fits:
            raise ValueError(f"{dep.label}: {dep.why_not()}")
        self.dep = dep
        self.total_blocks = dep.kv_capacity_tokens // BLOCK_TOKENS
        self.free_blocks = self.total_blocks
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.steps = 0
        self.busy_time = 0.0
        self.preemptions = 0

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, req: Request) -> None:
        need = _blocks(req.input_tokens + req.output_tokens)
        if need > self.total_blocks:
            raise ValueError(
                f"request {req.id}: {req.input_tokens + req.output_tokens} tokens exceed the "
                f"KV cache of {self.dep.label} ({self.total_blocks * BLOCK_TOKENS} tokens)"
            )
        self.waiting.append(req)

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

    def step(self, now: float) -> tuple[float, list[Request]]:
        """Schedule and run one step starting at `now`; returns (duration, finished)."""
        dep = self.dep
        budget = dep.chunk_tokens
        plan: list[tuple[Request, int]] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.target - req.computed, budget) if req.in_prefill else 1
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
            plan.append((req, n))
            budget -= n
        if not plan:
            return 0.0, []
        tokens = seqs = 0
        decode_ctx = pairs = 0.0
        for req, n in plan:
            tokens += n
            if req.in_prefill:
                pairs += n * (req.computed + n / 2.0)
                if req.computed + n == req.target:
                    seqs += 1
            else:
                decode_ctx += req.computed
                seqs += 1
        dur = float(dep.step_time(tokens, seqs, decode_ctx, pairs))
        end = now + dur
        finished = []
        for req, n in plan:
            was_prefill = req.in_prefill
            req.computed += n
            if was_prefill and req.computed < req.target:
                continue
            req.generated += 1
            if req.generated == 1:
                req.first_token = end
            if req.generated >= req.output_tokens:
                req.finish = end
                finished.append(req)
        for req in finished:
            self.running.remove(req)
            self.free_blocks += req.blocks
            req.blocks = 0
        self.steps += 1
        self.busy_time += dur
        return dur, finished
