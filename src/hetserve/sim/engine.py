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

Decoding sequences in bulk (fast engines). A decoding sequence gains exactly one token a step,
so a fast engine does not touch it each step: it counts steps (`_tick`) and keeps a decoding
sequence's `computed`, `generated` and `blocks` as of the tick it last looked at it (`mark`).
What a step needs from the decode batch is kept up to date in O(1): the sum of its contexts,
how many of its sequences take a new KV block at each tick modulo 16 (a sequence with `c`
tokens cached takes one when `c % 16 == 0`), and a heap of the tick at which each finishes.
A step then costs O(prefill chunks + admissions + completions + preemptions), not O(batch), and
schedules exactly what stepping sequence by sequence schedules (same tokens, contexts, pairs,
blocks, preemption victims and completion order, so the same durations to the last bit). This
relies on the running list holding its decoding sequences first, then those in prefill (a
sequence admitted after another means the other got its whole remaining prompt that step); a
state that breaks this is stepped sequence by sequence until it holds again.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from heapq import heappop, heappush

from hetserve.perf import Deployment

BLOCK_TOKENS = 16
_MASK = BLOCK_TOKENS - 1  # x % BLOCK_TOKENS == x & _MASK (a power of two)


@dataclass(eq=False, slots=True)
class Request:
    id: int
    arrival: float
    input_tokens: int
    output_tokens: int
    cls: int = -1  # request class (index into the model's classes; -1: none)
    replica: int = -1  # where the router sent it (-1: nowhere could hold it)
    # progress (in a fast engine, of a decoding sequence: as of engine tick `mark`)
    computed: int = 0  # tokens whose KV is in cache
    generated: int = 0  # output tokens emitted
    blocks: int = 0
    scheduled: float = math.nan  # first admitted to the running batch
    first_token: float = math.nan
    finish: float = math.nan
    preemptions: int = 0
    # fast-engine bookkeeping: the tick `computed` and `generated` are as of, and the order of
    # admission (-1: not in a running batch's decode set)
    mark: int = field(default=0, init=False, repr=False)
    serial: int = field(default=-1, init=False, repr=False)

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

    __slots__ = ("dep", "fast", "total_blocks", "free_blocks", "kv_limit", "longest", "waiting",
                 "running",
                 "clock", "steps", "busy_time", "kv_block_seconds", "preemptions",
                 "last_finished", "_run", "_quiet", "_span", "_tick", "_nd", "_due",
                 "_ctx", "_ends", "_serial", "_mixed", "_chunk", "_max_seqs", "_queued",
                 "_min_step")

    def __init__(self, dep: Deployment, kv_tokens: int | None = None, fast: bool = True,
                 max_model_len: int | None = None) -> None:
        """max_model_len: the longest request (prompt + output tokens) the engine accepts, as
        vLLM's --max-model-len (None: whatever fits the KV cache)."""
        if not dep.fits:
            raise ValueError(f"{dep.label}: {dep.why_not()}")
        self.dep = dep
        self.fast = fast
        self.total_blocks = (kv_tokens or dep.kv_capacity_tokens) // BLOCK_TOKENS
        self.free_blocks = self.total_blocks
        self.kv_limit = self.total_blocks * BLOCK_TOKENS  # a whole number of blocks
        self.longest = min(self.kv_limit, max_model_len or self.kv_limit)
        self.waiting: deque[Request] = deque()
        self._queued = 0  # prompt tokens of the waiting requests (pending_prefill in O(1))
        self.running: list[Request] = []
        self.clock = 0.0  # when the next step can start
        self.steps = 0
        self.busy_time = 0.0  # seconds with a step running
        self.kv_block_seconds = 0.0  # KV blocks held, integrated over time
        self.preemptions = 0
        self.last_finished: list[Request] = []  # finished by the step that ended at `clock`
        self._run: tuple[int, int, int] | None | bool = False  # _steady's cache (False: stale)
        self._quiet = -1.0  # quiet_until's cache (< 0: stale)
        self._span = 0.0  # ... and the steady run's duration (quiet_until - clock)
        self._chunk = dep.chunk_tokens
        self._max_seqs = dep.max_seqs
        self._min_step = dep.step_seconds(1, 1)  # no step is shorter
        # the decode set of a fast engine: running[:_nd], every one decoding (module docstring)
        self._tick = 0  # steps taken by the decode set
        self._nd = 0
        self._due = [0] * BLOCK_TOKENS  # [k]: members taking a new block at ticks = k mod 16
        self._ctx = 0  # sum of (computed - mark) over members: contexts sum to this + nd * tick
        self._ends: list[tuple[int, int, Request]] = []  # (finishing tick, serial, request)
        self._serial = 0
        self._mixed = False  # a prefilling sequence before a decoding one: step one by one

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def outstanding_at(self, now: float) -> int:
        """Requests not finished by `now` (those the last step finishes after `now` count)."""
        late = len(self.last_finished) if self.clock > now else 0
        return len(self.waiting) + len(self.running) + late

    def pending_prefill(self) -> int:
        """Prompt tokens of the requests without a first token yet (what a gateway sees: it
        knows each prompt's length and which requests have streamed a token)."""
        ahead = self._queued
        prefilling = self.running[self._nd:] if self.fast else self.running
        return ahead + sum(r.input_tokens for r in prefilling if r.generated == 0)

    def holds(self, req: Request) -> bool:
        """Whether the engine accepts the request: its prompt and output within the context
        limit and the KV cache."""
        return req.input_tokens + req.output_tokens <= self.longest

    def add(self, req: Request) -> None:
        if req.input_tokens + req.output_tokens > self.longest:
            raise ValueError(
                f"request {req.id}: {req.input_tokens + req.output_tokens} tokens exceed the "
                f"longest request {self.dep.label} accepts ({self.longest} tokens)"
            )
        if not (self.waiting or self.running) and req.arrival > self.clock:
            self.clock = req.arrival
        self.waiting.append(req)
        self._queued += req.input_tokens
        self._run, self._quiet = False, -1.0

    def abort(self, req: Request) -> bool:
        """Drop a request that is queued or running (its client went away): its sequence slot
        and KV blocks are free for the next step. False if the engine does not hold it."""
        if self.fast:
            self._settle()
        if req in self.waiting:
            self.waiting.remove(req)
            self._queued -= req.input_tokens
        elif req in self.running:
            self.running.remove(req)
        else:
            if self.fast:
                self._rebuild()
            return False
        self.free_blocks += req.blocks
        req.blocks = 0
        self._run, self._quiet = False, -1.0
        if self.fast:
            self._rebuild()
        return True

    # ---- virtual time ------------------------------------------------------------------
    def advance(self, until: float, first_finish: bool = False,
                finished_only: bool = False) -> list[Request]:
        """Run every step that starts before `until` (with `first_finish`, stop after the first
        step that finishes a request); return the requests they finish. With `finished_only`
        (enough to count what is outstanding at `until`), stop short at steady decode steps
        that finish nothing before `until`: taking them later in one run gives the same steps."""
        done: list[Request] = []
        fast = self.fast
        while self.clock < until and (self.running or self.waiting):
            if finished_only and fast and self._nd and self.quiet_until() >= until:
                break
            if not (fast and self._nd and self._nd == len(self.running)
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
        batch = self._nd
        if not (self.fast and batch and batch == len(self.running)) or batch > self._chunk:
            return None
        if self.waiting and batch < self._max_seqs:
            head = self.waiting[0]
            n = min(head.input_tokens + head.generated - head.computed, self._chunk - batch)
            if _blocks(head.computed + n) - head.blocks <= self.free_blocks:
                return None  # the head could be admitted: a plain step does that
        ends, tick = self._ends, self._tick
        while ends[0][1] != ends[0][2].serial:  # left by a preempted sequence
            heappop(ends)
        steps = ends[0][0] - tick  # to the first completion
        # KV blocks: every 16 steps take `batch` blocks; within the last cycle, tick by tick.
        cycles, left = divmod(self.free_blocks, batch)
        if steps > 16 * cycles:
            due = self._due
            for j in range(BLOCK_TOKENS):
                left -= due[(tick + j) & _MASK]
                if left < 0:
                    steps = min(steps, 16 * cycles + j)
                    break
        if steps > 0:
            self._run = (steps, batch, self._ctx + batch * tick)
        return self._run

    def quiet_until(self) -> float:
        """A time before which no request finishes unless one is added (`clock` if the next
        step may change the batch)."""
        if self._quiet < 0.0:
            run = self._steady()
            if run is None:
                self._quiet = self.clock
            else:
                self._span = self.dep.decode_run_seconds(run[1], run[2], run[0])
                self._quiet = self.clock + self._span
        return self._quiet

    def finish_bound(self) -> float:
        """A time before which no request it holds finishes, unless one is added: the end of
        the steady decode run ahead, and at least one step past the clock (inf when idle)."""
        if not (self.waiting or self.running):
            return math.inf
        return max(self.quiet_until(), self.clock + self._min_step)

    def _decode_run(self, until: float, done: list[Request]) -> bool:
        """Take the steady decode steps that start before `until` at once; False if none."""
        run = self._steady()
        if run is None:
            return False
        steps, batch, context = run
        if 0.0 <= self._quiet <= until:  # the whole run (quiet_until has its duration)
            dur = self._span
        else:
            dep = self.dep
            steps = dep.decode_steps_before(batch, context, until - self.clock, steps)
            dur = dep.decode_run_seconds(batch, context, steps)
        end = self.clock + dur
        tick = self._tick
        due = self._due
        used = (steps >> 4) * batch
        for j in range(steps & _MASK):
            used += due[(tick + j) & _MASK]
        held = self.total_blocks - self.free_blocks
        self.kv_block_seconds += (held + used / 2.0) * dur  # blocks grow evenly over the run
        self.free_blocks -= used
        self._tick = tick = tick + steps
        self._run, self._quiet = False, -1.0
        finished = self._finish_decoders(tick, end)
        self.last_finished = finished
        self.steps += steps
        self.busy_time += dur
        self.clock = end
        done += finished
        return True

    # ---- the decode set of a fast engine --------------------------------------------------
    def _join(self, req: Request) -> None:
        """`req` (fields current, appended to the decode set's end) decodes from now on."""
        tick, c = self._tick, req.computed
        req.mark = tick
        self._due[(tick - c) & _MASK] += 1
        self._ctx += c - tick
        heappush(self._ends, (tick + req.output_tokens - req.generated, req.serial, req))

    def _leave(self, req: Request) -> None:
        """Take `req` out of the decode set, its fields brought up to the current tick."""
        tick = self._tick
        d = tick - req.mark
        c = req.computed + d
        self._due[(req.mark - req.computed) & _MASK] -= 1
        self._ctx -= req.computed - req.mark
        req.computed = c
        req.generated += d
        req.blocks = -(-c // BLOCK_TOKENS)
        req.mark = tick
        req.serial = -1

    def _finish_decoders(self, tick: int, end: float) -> list[Request]:
        """Decoding sequences whose last token comes by step `tick`: they finish at `end`."""
        ends = self._ends
        finished: list[Request] = []
        while ends and ends[0][0] <= tick:
            _, serial, req = heappop(ends)
            if serial == req.serial:  # not a stale entry of a preempted sequence
                self._leave(req)
                req.finish = end
                finished.append(req)
        if finished:
            self._retire_decoders(finished)
        return finished

    def _retire_decoders(self, finished: list[Request]) -> None:
        """Remove finished members of the decode set from running (their blocks free)."""
        running = self.running
        if len(finished) < 8:
            for req in finished:
                running.remove(req)
        else:  # _leave marked them (serial -1); everything else running has a serial
            running[:] = [r for r in running if r.serial >= 0]
        freed = 0
        for req in finished:
            freed += req.blocks
            req.blocks = 0
        self.free_blocks += freed
        self._nd -= len(finished)

    def _settle(self) -> None:
        """Bring every member of the decode set up to date and empty it."""
        for req in self.running[:self._nd]:
            self._leave(req)
        self._nd = 0
        self._ends = []

    def _rebuild(self) -> None:
        """Form the decode set from the running list (after a step taken one by one)."""
        self._due = [0] * BLOCK_TOKENS
        self._ctx = 0
        self._ends = []
        self._nd = 0
        self._mixed = False
        serial = self._serial
        for req in self.running:
            req.serial = serial
            serial += 1
        self._serial = serial
        for k, req in enumerate(self.running):
            if req.generated and req.input_tokens + req.generated - req.computed == 1:
                if k == self._nd:
                    self._join(req)
                    self._nd += 1
                else:
                    self._mixed = True

    # ---- one step (both virtual and real time) -------------------------------------------
    def step(self, now: float) -> tuple[float, list[Request]]:
        """Schedule and run one step starting at `now`; returns (duration, finished)."""
        if not self.fast:
            return self._step_exact(now)
        if self._mixed or self._nd > self._chunk:  # outside what the decode set represents
            self._settle()
            out = self._step_exact(now)
            self._rebuild()
            return out
        return self._step_fast(now)

    def _step_fast(self, now: float) -> tuple[float, list[Request]]:
        """step() for a fast engine: the same schedule as _step_exact, with the decode set
        served in bulk."""
        self._run, self._quiet = False, -1.0
        running = self.running
        nd = self._nd
        tick = self._tick
        budget = self._chunk - nd  # every decoding sequence takes one token
        need = self._due[tick & _MASK]  # ... and these a new block each
        # sequences in prefill (after the decode set), in order, within the budget
        plan: list[tuple[Request, int, int]] = []
        for k in range(nd, len(running)):
            if budget <= 0:
                break
            req = running[k]
            c = req.computed
            n = min(req.input_tokens + req.generated - c, budget)
            g = -(-(c + n) // BLOCK_TOKENS) - req.blocks
            plan.append((req, n, g))
            need += g
            budget -= n
        free = self.free_blocks
        if need > free:
            # Not enough blocks: the newest running sequences are preempted, as many as the
            # sequences before them need (serving in order, each shortage preempts the newest
            # until the one being served fits or is itself the newest).
            keep = len(running)
            while need > free:
                keep -= 1
                req = running[keep]
                if keep >= nd:
                    free += req.blocks
                    if keep - nd < len(plan):
                        need -= plan[keep - nd][2]
                else:
                    self._leave(req)  # brings its blocks up to date
                    free += req.blocks
                    if not req.computed & _MASK:
                        need -= 1
            victims = running[keep:]
            del running[keep:]
            del plan[max(keep - nd, 0):]
            if keep < nd:
                nd = self._nd = keep
            for req in victims:
                req.blocks = 0
                req.computed = 0
                req.serial = -1
                req.preemptions += 1
            self.preemptions += len(victims)
            self.waiting.extendleft(reversed(victims))
            self._queued += sum(r.input_tokens for r in victims)
            budget = self._chunk - nd
            for _, n, _ in plan:
                budget -= n
        free -= need
        for req, _, g in plan:
            req.blocks += g
        # admit waiting requests, first come first served
        waiting = self.waiting
        if waiting and budget > 0:
            max_seqs = self._max_seqs
            serial = self._serial
            while waiting and budget > 0 and len(running) < max_seqs:
                req = waiting[0]
                c = req.computed
                n = min(req.input_tokens + req.generated - c, budget)
                g = -(-(c + n) // BLOCK_TOKENS) - req.blocks
                if g > free:
                    break
                free -= g
                req.blocks += g
                waiting.popleft()
                self._queued -= req.input_tokens
                running.append(req)
                req.serial = serial
                serial += 1
                if req.scheduled != req.scheduled:  # first admission (nan)
                    req.scheduled = now
                plan.append((req, n, g))
                budget -= n
            self._serial = serial
        self.free_blocks = free
        if not nd and not plan:
            if now > self.clock:
                self.clock = now
            return 0.0, []
        tokens = seqs = nd
        decode_ctx = float(self._ctx + nd * tick)
        pairs = chunk_pairs = 0.0
        chunk = 0
        for req, n, _ in plan:
            tokens += n
            c = req.computed
            if req.generated and req.input_tokens + req.generated - c == 1:  # decode
                decode_ctx += c
                seqs += 1
            else:  # prefill chunk; samples a token when it completes the context
                p = n * (c + n / 2.0)
                pairs += p
                if n > chunk:
                    chunk, chunk_pairs = n, p
                if c + n == req.input_tokens + req.generated:
                    seqs += 1
        dur = self.dep.step_seconds(tokens, seqs, decode_ctx, pairs, chunk, chunk_pairs)
        self.kv_block_seconds += (self.total_blocks - free) * dur
        end = now + dur
        self._tick = tick = tick + 1
        finished = self._finish_decoders(tick, end) if nd and self._ends[0][0] <= tick else []
        if plan:
            done_plan = []
            prefilling = False
            for req, n, _ in plan:
                req.computed += n
                if req.computed < req.input_tokens + req.generated:
                    prefilling = True
                    continue
                req.generated += 1
                if req.generated == 1:
                    req.first_token = end
                if req.generated >= req.output_tokens:
                    req.finish = end
                    done_plan.append(req)
                elif prefilling:  # a decoding sequence after one in prefill
                    self._mixed = True
                else:
                    self._join(req)
                    self._nd += 1
            if done_plan:
                for req in done_plan:
                    running.remove(req)
                    self.free_blocks += req.blocks
                    req.blocks = 0
                finished += done_plan
        self.last_finished = finished
        self.steps += 1
        self.busy_time += dur
        self.clock = end
        return dur, finished

    # ---- one step, sequence by sequence (the reference) -----------------------------------
    def _preempt(self, victim: Request) -> None:
        self.running.remove(victim)
        self.free_blocks += victim.blocks
        victim.blocks = 0
        victim.computed = 0
        victim.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)
        self._queued += victim.input_tokens

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

    def _step_exact(self, now: float) -> tuple[float, list[Request]]:
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
            self._queued -= req.input_tokens
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
        for req, n in plan:
            req.computed += n
            if req.computed < req.target:
                continue
            req.generated += 1
            if req.generated == 1:
                req.first_token = end
            if req.generated >= req.output_tokens:
                req.finish = end
                finished.append(req)
        self._retire(finished)
        # sequences left unscheduled by the budget may still be mid-prefill
        self.steps += 1
        self.busy_time += dur
        self.clock = end
        return dur, finished
