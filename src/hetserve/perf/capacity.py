"""Sustainable request rate of one replica per request class under TTFT/TPOT limits.

Closed form for continuous batching with chunked prefill. With B sequences decoding, a decode
step takes t_d(B) at their mean context (prompt + half the output). A new request's prefill
rides in those steps and lengthens them by D(B) in total (its marginal cost). At rate X,
a share X*D of time goes to prefill work, so

    ITL(B)  = t_d / (1 - X*D),  and Little's law  B = X * O * ITL   give
    X(B)    = B / (O * t_d + B * D)           (requests/s)
    ITL(B)  = t_d + B * D / O                  (mean time per output token)
    TTFT(B) = t_d (wait for the running step) + prefill steps + rho/(1-rho) * D  (queue, p90-ish)

The capacity is the largest X(B) over batch sizes whose ITL and TTFT meet the limits and whose
KV cache (B * mean context) fits. Queueing tails beyond this are what the simulator checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hetserve.errors import positive
from hetserve.perf.model import Deployment

BATCH_Z = 2.33  # headroom for the batch: its 99th percentile under Poisson fluctuation


@dataclass(frozen=True)
class SLO:
    """Latency limits in seconds (p90 targets); inf means no limit."""

    ttft: float = float("inf")
    tpot: float = float("inf")

    def __post_init__(self) -> None:
        positive(self.ttft, "--ttft", allow_inf=True)
        positive(self.tpot, "--tpot", allow_inf=True)


@dataclass(frozen=True)
class Capacity:
    """Per class (arrays aligned with the classes given)."""

    rate: np.ndarray  # req/s one replica sustains within the SLO (0: cannot)
    batch: np.ndarray  # decode batch at that rate
    ttft: np.ndarray  # predicted TTFT at that rate (s)
    tpot: np.ndarray  # predicted mean time per output token at that rate (s)
    best_ttft: np.ndarray  # TTFT of a request alone on an idle replica (the floor)
    best_tpot: np.ndarray  # TPOT of a request alone (the floor; 0 for one-token outputs)
    reason: tuple[str, ...]  # why the rate is 0 ('' where it is not)


def class_capacity(dep: Deployment, mean_input, mean_output, slo: SLO) -> Capacity:
    inp = np.atleast_1d(np.asarray(mean_input, dtype=np.float64))[None, :]
    out = np.atleast_1d(np.asarray(mean_output, dtype=np.float64))[None, :]
    n = inp.shape[1]
    if not dep.fits:
        zero = np.zeros(n)
        inf = np.full(n, np.inf)
        return Capacity(zero, zero, inf, inf, inf, inf, (dep.why_not() or "",) * n)
    b = np.arange(1, dep.max_seqs + 1, dtype=np.float64)[:, None]
    ctx = inp + out / 2.0
    t_d = dep.decode_step_time(b, ctx)
    chunks = np.ceil(inp / dep.chunk_tokens)
    prefill_steps = dep.prefill_time(inp, b, ctx)
    extra = np.maximum(prefill_steps - chunks * t_d, 0.0)
    rate = b / (out * t_d + b * extra)
    itl = t_d + b * extra / out
    rho = np.minimum(rate * extra, 0.999)
    ttft = t_d + prefill_steps + rho / (1.0 - rho) * extra
    # the number of requests in flight fluctuates around its mean B (Poisson for independent
    # arrivals): B + Z sqrt(B) must fit the sequence limit and the KV cache, or the overflow
    # queues or is preempted
    peak = b + BATCH_Z * np.sqrt(b)
    kv_ok = (peak * ctx <= dep.kv_capacity_tokens) & (peak <= dep.max_seqs)
    one_fits = (inp + out <= min(dep.kv_capacity_tokens, dep.model.max_context))[0]
    tpot_ok = (itl <= slo.tpot) | (out <= 1)
    ok = kv_ok & tpot_ok & (ttft <= slo.ttft) & one_fits[None, :]
    masked = np.where(ok, rate, 0.0)
    best = np.argmax(masked, axis=0)
    cols = np.arange(n)
    feasible = ok.any(axis=0)
    alone_ttft = np.broadcast_to(dep.prefill_time(inp[0]), (n,))  # a request on an idle replica
    alone_tpot = dep.decode_step_time(1.0, ctx[0])
    reasons = tuple("" if feasible[j] else _reason(dep, slo, j, inp[0, j], out[0, j], ctx[0, j],
                                                   one_fits[j], alone_ttft[j], alone_tpot[j],
                                                   kv_ok[0, j], ttft[0, j], itl[0, j])
                    for j in range(n))
    return Capacity(
        rate=np.where(feasible, masked[best, cols], 0.0),
        batch=np.where(feasible, b[best, 0], 0.0),
        ttft=np.where(feasible, ttft[best, cols], np.inf),
        tpot=np.where(feasible, itl[best, cols], np.inf),
        best_ttft=np.array(alone_ttft, dtype=np.float64),
        best_tpot=np.where(out[0] > 1, alone_tpot, 0.0),
        reason=reasons,
    )


def _reason(dep: Deployment, slo: SLO, j: int, inp: float, out: float, ctx: float, fits: bool,
            alone_ttft: float, alone_tpot: float, kv_ok: bool, ttft1: float, itl1: float) -> str:
    """Why a class gets no capacity on `dep`: the first limit that binds, with its numbers."""
    if not fits:
        limit = min(dep.kv_capacity_tokens, dep.model.max_context)
        return f"a {inp + out:.0f}-token request exceeds {limit} tokens"
    if alone_ttft > slo.ttft:
        return f"TTFT {alone_ttft:.3g}s for a request alone > limit {slo.ttft:.3g}s"
    if out > 1 and alone_tpot > slo.tpot:
        return f"TPOT {alone_tpot * 1e3:.3g}ms for a request alone > limit {slo.tpot * 1e3:.3g}ms"
    if not kv_ok:
        peak = 1 + BATCH_Z
        return (f"KV headroom: one running request with burst headroom needs {peak:.2f} x "
                f"{ctx:.0f} = {peak * ctx:.0f} tokens, the KV cache holds {dep.kv_capacity_tokens}")
    if ttft1 > slo.ttft:
        return (f"TTFT {ttft1:.3g}s at the lightest load > limit {slo.ttft:.3g}s (alone: "
                f"{alone_ttft:.3g}s)")
    return (f"TPOT {itl1 * 1e3:.3g}ms at the lightest load (prefill interleaved) > limit "
            f"{slo.tpot * 1e3:.3g}ms (alone: {alone_tpot * 1e3:.3g}ms)")
