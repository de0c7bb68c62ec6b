"""Step-level physics of one LLM engine on one deployment (docs/design.md, section 4).

A deployment is a model on `tp x pp` accelerators of one type. One engine step processes a mix of
new tokens (prefill chunks and one token per decoding sequence). Its time is a roofline per
operator class on each device, plus tensor-parallel all-reduces, pipeline hand-offs and a fixed
host-side overhead:

  linear layers   max(2 * matmul_params * tokens / F,  weight bytes / BW)
  attention       max(4 * layers * q_dim * pairs / F,  KV bytes read and written / BW)
  TP all-reduce   2 per layer: latency + 2 (tp-1)/tp * tokens * hidden * 2 B / link
  PP hand-off     (pp-1) * (latency + tokens * hidden * 2 B / link)

with F = eta_compute * dense peak and BW = eta_memory * peak bandwidth of the accelerator.
Pipeline parallelism splits a step into pp micro-batches: every device streams its weights once
per micro-batch, so PP adds capacity (memory, compute) but no per-token speed; and one sequence's
prefill chunk is a single micro-batch, so PP does not shorten a prompt's prefill either.

Every function takes plain numbers or numpy arrays (broadcasting), so capacity search and the
simulator evaluate many batch shapes in one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from hetserve.catalog import Accelerator
from hetserve.errors import HetserveError
from hetserve.models import DTYPE_BYTES, ModelSpec

GB = 1e9
ACT_BYTES = 2.0  # activations travel in 16-bit
RUNTIME_RESERVE_GB = 1.5  # CUDA context, CUDA graphs, activation workspace per device
NETWORK_GBS = 12.5  # pipeline hand-off between nodes (100 Gb/s Ethernet)
NETWORK_US = 30.0
# Host-side work per sequence per step, by engine generation. vLLM before 0.6 scheduled, sampled
# and detokenised every sequence in Python between steps (the vLLM v0.6 performance update reports
# CPU overhead dominating at large batch); C++ runtimes and vLLM >= 0.6 overlap it with the GPU.
# 250 us is what the published RTX 4090/A10G throughput-vs-concurrency sweeps imply.
ENGINE_PROFILES = {"vllm": 0.0, "vllm-v0": 250.0, "sglang": 0.0, "trt-llm": 0.0}
EngineName = Literal["vllm", "vllm-v0", "sglang", "trt-llm"]


def check_engine(engine: str, option: str = "--engine") -> str:
    """The engine name if hetserve has a profile for it, else an error naming the option."""
    if engine not in ENGINE_PROFILES:
        raise HetserveError(f"{option} {engine!r}: expected one of {', '.join(ENGINE_PROFILES)}")
    return engine


MAX_STEP_MARGIN = 1.0  # plan --step-margin: steps up to twice the modelled time


def check_step_margin(margin: float) -> float:
    """A step margin (0.1: every step 10% slower than modelled), else an error naming the
    option."""
    if isinstance(margin, bool) or not (isinstance(margin, int | float)
                                        and 0 <= margin <= MAX_STEP_MARGIN):
        raise HetserveError(f"--step-margin: expected a share of the step time in [0, "
                            f"{MAX_STEP_MARGIN:g}] (0.1: every step 10% slower), got {margin!r}")
    return float(margin)


def margin_pct(margin: float) -> str:
    """A step margin as people read it: 0.1 -> '10%', 0.125 -> '12.5%'."""
    return f"{margin * 100:.3g}%"


DEFAULT_MAX_SEQS = 256  # vLLM max_num_seqs
DEFAULT_CHUNK = 8192  # vLLM max_num_batched_tokens with chunked prefill
MIN_KV_TOKENS = 2048  # a deployment must hold at least this many tokens of KV cache
TP_DEGREES = (1, 2, 4, 8)  # tensor parallelism stays inside one node


def step_time(coefficients, pp, tokens, seqs, decode_ctx=0.0, prefill_pairs=0.0, chunk=0.0,
              chunk_pairs=0.0):
    """Deployment.step_time for its `coefficients` and `pp` (numbers, or arrays over many
    deployments that broadcast with the step's arrays)."""
    a_t, a_s, w, f, b, c0, c1, h0, h1 = coefficients
    return (np.maximum(np.maximum(a_t * tokens + a_s * seqs, pp * a_t * chunk), w)
            + np.maximum(np.maximum(f * (decode_ctx + prefill_pairs), pp * f * chunk_pairs),
                         b * (decode_ctx + tokens))
            + c0 + np.maximum(c1 * tokens, pp * c1 * chunk) + h0 + h1 * seqs)


def prompt_compute_time(coefficients, pp, prompt):
    """Seconds of compute one prompt's prefill needs beyond any step it rides in: its linear
    layers, attention and TP/PP communication at the compute roofline (no weight read, no step
    overhead). One prompt's chunks pass the pipeline's stages in turn, as in step_time. Never
    more on a deployment with more FLOPS."""
    a_t, a_s, w, f, b, c0, c1, h0, h1 = coefficients
    return pp * (a_t * prompt + f * prompt * prompt / 2.0 + c1 * prompt) + a_s


@dataclass(frozen=True)
class Deployment:
    """One replica: `model` on tp x pp devices of `accelerator`."""

    model: ModelSpec
    accelerator: Accelerator
    tp: int = 1
    pp: int = 1
    dtype: str | None = None  # weight dtype; None: the model's default
    kv_dtype: str = "bf16"
    memory_utilisation: float = 0.9  # vLLM gpu_memory_utilization
    max_seqs: int = DEFAULT_MAX_SEQS
    chunk_tokens: int = DEFAULT_CHUNK
    engine: str = "vllm"  # the serving engine; its profile sets the host work per sequence
    # planning margin for the model's error: every step takes (1 + step_margin) x the
    # modelled time (plan --step-margin)
    step_margin: float = 0.0

    # ---- identity ----------------------------------------------------------------------
    @property
    def weight_dtype(self) -> str:
        return self.dtype or self.model.default_dtype

    @property
    def devices(self) -> int:
        return self.tp * self.pp

    @property
    def usd_per_hour(self) -> float:
        return self.devices * self.accelerator.usd_per_hour

    @property
    def label(self) -> str:
        acc = self.accelerator.name
        par = f"TP{self.tp}" + (f"xPP{self.pp}" if self.pp > 1 else "")
        knobs = (f" chunk{self.chunk_tokens}" if self.chunk_tokens != DEFAULT_CHUNK else "") \
            + (f" seqs{self.max_seqs}" if self.max_seqs != DEFAULT_MAX_SEQS else "")
        return f"{acc} {par}{knobs}"

    # ---- memory ------------------------------------------------------------------------
    @property
    def weight_bytes_per_device(self) -> float:
        return self.model.weight_bytes(self.weight_dtype) / self.devices

    @property
    def kv_bytes_per_token_per_device(self) -> float:
        """KV heads split over TP (replicated past kv_heads), layers split over PP."""
        split = min(self.tp, self.model.kv_heads) * self.pp
        return self.model.kv_bytes_per_token(self.kv_dtype) / split

    @property
    def free_bytes_per_device(self) -> float:
        acc = self.accelerator
        usable = acc.memory_bytes * self.memory_utilisation - RUNTIME_RESERVE_GB * GB
        return usable - self.weight_bytes_per_device

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache the replica holds (0 when the weights do not fit)."""
        return max(0, int(self.free_bytes_per_device / self.kv_bytes_per_token_per_device))

    def why_not(self) -> str | None:
        """None when the deployment is valid and fits; else the reason it does not."""
        acc, m = self.accelerator, self.model
        if self.tp not in TP_DEGREES:
            return f"TP must be 1, 2, 4 or 8, got {self.tp}"
        if self.tp > acc.max_per_node:
            return f"TP{self.tp} exceeds {acc.max_per_node} {acc.name} per node"
        if m.heads % self.tp:
            return f"TP{self.tp} does not divide {m.heads} attention heads"
        if self.pp < 1 or m.layers % self.pp:
            return f"PP{self.pp} does not divide {m.layers} layers"
        if self.free_bytes_per_device <= 0:
            need = self.weight_bytes_per_device / GB
            have = acc.memory_bytes / GB * self.memory_utilisation - RUNTIME_RESERVE_GB
            return f"weights need {need:.1f} GB per device, {acc.name} has {have:.1f} GB usable"
        if self.kv_capacity_tokens < MIN_KV_TOKENS:
            return f"only {self.kv_capacity_tokens} tokens of KV cache fit (< {MIN_KV_TOKENS})"
        return None

    @property
    def fits(self) -> bool:
        return self.why_not() is None

    # ---- speed -------------------------------------------------------------------------
    @cached_property
    def fit(self):
        """The measured coefficients of this deployment (catalog.Fit), if a profile gave
        them; else None and the accelerator's and engine's defaults apply."""
        return self.accelerator.fit_for(self.model.name, self.tp, self.pp, self.engine,
                                        self.weight_dtype)

    @cached_property
    def efficiency(self) -> tuple[float, float, float, float]:
        """(eta_compute, eta_memory, step overhead s, host s per sequence): a profile's fit,
        else the accelerator's and the engine's."""
        if self.fit is not None:
            f = self.fit
            return f.eta_compute, f.eta_memory, f.step_overhead_ms * 1e-3, f.seq_host_us * 1e-6
        acc = self.accelerator
        return (acc.eta_compute, acc.eta_memory, acc.step_overhead_ms * 1e-3,
                ENGINE_PROFILES[self.engine] * 1e-6)

    @cached_property
    def _rates(self) -> tuple[float, float, float]:
        acc = self.accelerator
        eta_c, eta_m, _, _ = self.efficiency
        fp8 = self.weight_dtype == "fp8"
        flops = acc.peak_flops(fp8) * eta_c
        attn_flops = acc.peak_flops(False) * eta_c
        bw = acc.memory_bw_gbs * GB * eta_m
        return flops, attn_flops, bw

    @cached_property
    def _link(self) -> tuple[float, float, float, float]:
        """(all-reduce latency s, all-reduce bw B/s, hand-off latency s, hand-off bw B/s)."""
        acc = self.accelerator
        ar_lat, ar_bw = acc.allreduce_us * 1e-6, max(acc.link_gbs, 1e-3) * GB
        if self.devices <= acc.max_per_node and acc.link_gbs > 0:
            return ar_lat, ar_bw, ar_lat, ar_bw
        return ar_lat, ar_bw, NETWORK_US * 1e-6, NETWORK_GBS * GB

    @cached_property
    def coefficients(self) -> tuple[float, ...]:
        """The step time's coefficients, so that for a step of `t` tokens, `s` sampling
        sequences, decode context `x` and prefill pairs `p`:

          step = max(a_t t + a_s s, w) + max(f (x + p), b (x + t)) + c0 + c1 t + h0 + h1 s

        (linear layers, attention, TP/PP communication, host; under PP the largest prefill chunk
        bounds the first, second and communication terms, see step_time), all times
        1 + step_margin. Returns
        (a_t, a_s, w, f, b, c0, c1, h0, h1)."""
        m, d = self.model, self.devices
        flops, attn_flops, bw = self._rates
        a_t = 2.0 * m.layers * m.layer_params / d / flops
        a_s = 2.0 * m.embedding_params / d / flops
        w = m.matmul_params * DTYPE_BYTES[self.weight_dtype] / self.tp / bw  # pp micro-batches
        f = 4.0 * m.layers * m.heads * m.head_dim / d / attn_flops
        b = m.kv_bytes_per_token(self.kv_dtype) / (min(self.tp, m.kv_heads) * self.pp) / bw
        ar_lat, ar_bw, hop_lat, hop_bw = self._link
        msg = m.hidden * ACT_BYTES  # bytes per token
        c0 = c1 = 0.0
        if self.tp > 1:
            c0 += 2 * m.layers * ar_lat
            c1 += 2 * m.layers * msg / self.pp * (2 * (self.tp - 1) / self.tp) / ar_bw
        if self.pp > 1:
            c0 += (self.pp - 1) * hop_lat
            c1 += (self.pp - 1) * msg / self.pp / hop_bw
        _, _, h0, h1 = self.efficiency
        if self.step_margin:  # every term of a step time scales with its coefficient
            k = 1.0 + self.step_margin
            return a_t * k, a_s * k, w * k, f * k, b * k, c0 * k, c1 * k, h0 * k, h1 * k
        return a_t, a_s, w, f, b, c0, c1, h0, h1

    def step_time(self, tokens, seqs, decode_ctx=0.0, prefill_pairs=0.0, chunk=0.0,
                  chunk_pairs=0.0):
        """Seconds for one engine step (numbers or numpy arrays, broadcast).

        tokens: new tokens computed (prefill chunk tokens + one per decoding sequence)
        seqs: sequences that sample a token this step (LM-head rows)
        decode_ctx: sum of the contexts (KV tokens read) of the decoding sequences
        prefill_pairs: attention query-key pairs of prefill chunks, sum of n * (c + n / 2)
                       for a chunk of n tokens after c cached tokens
        chunk, chunk_pairs: tokens and pairs of the largest prefill chunk. Under PP a step's
                       sequences split into micro-batches that fill the pipeline, but one
                       sequence's chunk is one micro-batch and passes the stages in turn: its
                       compute and communication are not divided by PP.
        """
        return step_time(self.coefficients, self.pp, np.asarray(tokens, dtype=np.float64), seqs,
                         decode_ctx, prefill_pairs, chunk, chunk_pairs)

    def step_seconds(self, tokens: float, seqs: float, decode_ctx: float = 0.0,
                     prefill_pairs: float = 0.0, chunk: float = 0.0,
                     chunk_pairs: float = 0.0) -> float:
        """step_time for plain numbers, without numpy (the simulator's inner loop)."""
        a_t, a_s, w, f, b, c0, c1, h0, h1 = self.coefficients
        pp = self.pp
        return (max(a_t * tokens + a_s * seqs, pp * a_t * chunk, w)
                + max(f * (decode_ctx + prefill_pairs), pp * f * chunk_pairs,
                      b * (decode_ctx + tokens))
                + c0 + max(c1 * tokens, pp * c1 * chunk) + h0 + h1 * seqs)

    def decode_run_seconds(self, batch: int, context: float, steps: int) -> float:
        """Total time of `steps` consecutive decode steps of the same `batch` sequences whose
        contexts sum to `context` at the first step (each step adds `batch` to it), in closed
        form: the sum of step_seconds(batch, batch, context + j * batch) for j < steps."""
        if steps <= 0:
            return 0.0
        a_t, a_s, w, f, b, c0, c1, h0, h1 = self.coefficients
        const = max((a_t + a_s) * batch, w) + c0 + (c1 + h1) * batch + h0
        # attention: max(f x_j, b (x_j + batch)) with x_j = context + j * batch; the
        # compute branch (if ever) wins from the first j with x_j >= b * batch / (f - b)
        switch = steps
        if f > b:
            switch = min(steps, max(0, math.ceil((b * batch / (f - b) - context) / batch)))

        def series(coef: float, offset: float, j0: int, j1: int) -> float:
            n = j1 - j0  # sum over j in [j0, j1) of coef * (context + offset + j * batch)
            return coef * (n * (context + offset) + batch * (j0 + j1 - 1) * n / 2.0)

        return (const * steps + series(b, batch, 0, switch)
                + (series(f, 0.0, switch, steps) if switch < steps else 0.0))

    def decode_steps_before(self, batch: int, context: float, span: float, limit: int) -> int:
        """How many of up to `limit` consecutive decode steps (as in decode_run_seconds) start
        before `span` seconds: the least k with decode_run_seconds(k) >= span, capped at
        `limit`. Solved from the quadratic when attention stays memory-bound, then checked."""
        run = self.decode_run_seconds
        if span <= 0.0:
            return 0
        if run(batch, context, limit - 1) < span:
            return limit
        a_t, a_s, w, f, b, c0, c1, h0, h1 = self.coefficients
        lo, hi = 1, limit - 1  # answer in [lo, hi]
        if f <= b:  # T(k) = alpha k + beta k^2
            beta = b * batch / 2.0
            alpha = max((a_t + a_s) * batch, w) + c0 + (c1 + h1) * batch + h0 \
                + b * (context + batch) - beta
            k = math.ceil((-alpha + math.sqrt(alpha * alpha + 4.0 * beta * span)) / (2 * beta)) \
                if beta > 0 else math.ceil(span / alpha)
            k = min(max(k, lo), hi)
            while k > lo and run(batch, context, k - 1) >= span:
                k -= 1
            while k < hi and run(batch, context, k) < span:
                k += 1
            return k
        while lo < hi:
            mid = (lo + hi) // 2
            if run(batch, context, mid) >= span:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def decode_step_time(self, batch, context):
        """One decode step of `batch` sequences, each with `context` tokens of KV."""
        batch = np.asarray(batch, dtype=np.float64)
        return self.step_time(batch, batch, decode_ctx=batch * context)

    def prefill_time(self, prompt, batch=0.0, context=0.0):
        """Time of the steps that carry one prompt's prefill, in chunks of `chunk_tokens`, up to
        its first token; each step also decodes `batch` sequences of `context` tokens."""
        prompt = np.asarray(prompt, dtype=np.float64)
        batch = np.asarray(batch, dtype=np.float64)
        c = float(self.chunk_tokens)
        total = np.zeros(np.broadcast(prompt, batch, context).shape)
        for k in range(int(np.ceil(np.max(prompt, initial=0.0) / c))):
            left = prompt - k * c
            n = np.clip(left, 0.0, c)
            last = ((left > 0) & (left <= c)).astype(np.float64)  # samples the first token
            pairs = n * (k * c + n / 2.0)
            t = self.step_time(n + batch, last + batch, batch * context, prefill_pairs=pairs,
                               chunk=n, chunk_pairs=pairs)
            total = total + np.where(n > 0, t, 0.0)
        return total
