"""Measure real engine step times on a GPU: a randomly initialised model of a real architecture
in PyTorch, prefill and decode steps as an engine runs them (decode as CUDA-graph replays), and
the linear layers alone. Writes a step-times CSV (docs/design.md, section 5.8) that
`hetserve calibrate --data FILE [--fit]` compares the model with and fits.

Needs only PyTorch and PyYAML (it runs on a GPU machine without hetserve's dependencies):

    python benchmarks/gpu_steps.py --gpu H200 --model llama-3.1-8b --model llama-2-7b \\
        --out src/hetserve/perf/data/step_times.csv

What a step runs, per model (weights random, N(0, 0.02): random weights time the same as
trained ones):
- prefill: `batch` prompts of `prompt` tokens from an empty cache (as a CUDA graph, as vLLM
  captures its steps: eager launches would stall small prefills): embedding, every layer
  (RMSNorm, fused QKV, RoPE, causal flash attention via scaled_dot_product_attention, the KV
  written to a cache, output projection, fused gate/up SwiGLU MLP, down projection), the final
  norm, and the LM head and a greedy sample for each prompt's last token only;
- decode: one token for each of `batch` sequences with `context` tokens of KV each, attention
  reading the whole cache, the new K and V written in place; captured once as a CUDA graph and
  replayed, as vLLM does;
- linear: the matmuls of every layer alone on `tokens` tokens (as a CUDA graph), as Vidur's
  operator profiles measure them.

Attention (`--attention sdpa`, the default) is scaled_dot_product_attention reading the grouped
K and V in place (enable_gqa), as engines' kernels do, on the first of the flash, cuDNN and
memory-efficient backends that takes them; each row's `source` names the one used.
`--attention matmul` is the hand-written alternative (grouped heads as one batched matmul): on
an H200 it read long decode caches at a seventh of the flash kernel's rate, so it times a kernel
no engine runs and is kept only to show that.

`--dtype fp8` times the linear steps alone with FP8 weights and inputs (torch._scaled_mm,
per-tensor scales): FP8 attention and KV caches are each engine's own.

Each shape is timed with CUDA events over `--repeats` runs after warm-ups; the CSV holds the
median. Shapes past the model's context length, and decode caches past the memory the weights
leave, are left out. `--device cpu --layers 2 --quick` checks the script on a machine without a
GPU (its rows then say so in `source`, and `hetserve calibrate` refuses them).
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel

MODELS = Path(__file__).resolve().parents[1] / "src" / "hetserve" / "models" / "data" / \
    "models.yaml"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}  # activations
FP8 = torch.float8_e4m3fn  # --dtype fp8: the matmuls' weights and inputs (linear steps only)
FIELDS = ("id", "gpu", "model", "dtype", "tp", "phase", "batch", "tokens", "seconds", "p10",
          "p90", "device", "software", "source")
# Shapes: (batch, prompt) for prefill, (batch, context) for decode, tokens for linear
PREFILL = [(1, 128), (1, 512), (1, 2048), (1, 8192), (4, 128), (4, 512), (4, 2048), (4, 8192),
           (16, 128), (16, 512), (16, 2048)]
DECODE = [(b, c) for b in (1, 4, 16, 64, 128, 256) for c in (256, 2048, 8192)]
LINEAR = [1, 8, 32, 128, 512, 2048, 8192]
MAX_KV_BYTES = 64e9  # decode shapes whose KV cache is larger are left out
QUICK = ([(1, 16), (2, 64), (4, 32)], [(1, 32), (4, 64), (8, 128), (16, 64)], [1, 16, 64, 256])


def arch(name: str) -> dict:
    for m in yaml.safe_load(MODELS.read_text())["models"]:
        if m["name"] == name:
            return m
    sys.exit(f"--model {name}: not in {MODELS}")


class Model:
    """A Llama-family decoder (Llama, Mistral, Qwen2) with random weights, run by hand."""

    def __init__(self, spec: dict, layers: int, dtype: torch.dtype, device: str,
                 attention: str = "sdpa") -> None:
        self.spec, self.layers, self.device, self.dtype = spec, layers, device, dtype
        self.fp8 = False
        # "sdpa": scaled_dot_product_attention reading grouped K/V in place (enable_gqa), on
        # the backend named by `backend` (None: PyTorch's choice); "matmul": hand-written
        self.attention, self.backend = attention, None
        h, d = spec["hidden"], spec["head_dim"]
        self.h, self.d, self.heads, self.kv = h, d, spec["heads"], spec["kv_heads"]
        q, kv, inter = self.heads * d, self.kv * d, spec["intermediate"]

        def w(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, device=device, dtype=dtype) * 0.02

        self.embed = w(spec["vocab"], h)
        self.lm_head = self.embed if spec.get("tie_embeddings") else w(spec["vocab"], h)
        self.w = [{"qkv": w(q + 2 * kv, h), "qkv_bias": w(q + 2 * kv) if spec.get("qkv_bias")
                   else None, "o": w(h, q), "gate_up": w(2 * inter, h), "down": w(h, inter),
                   "norm1": torch.ones(h, device=device, dtype=dtype),
                   "norm2": torch.ones(h, device=device, dtype=dtype)} for _ in range(layers)]
        self.norm = torch.ones(h, device=device, dtype=dtype)
        inv = 1.0 / (spec.get("rope_theta", 500000.0) ** (
            torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
        self.inv_freq = inv

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool):
        gqa = q.shape[1] != k.shape[1]
        with nullcontext() if self.backend is None else sdpa_kernel(self.backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of x (..., n, heads, d) at positions pos (..., n)."""
        ang = pos.to(torch.float32)[..., None] * self.inv_freq
        cos, sin = ang.cos()[..., None, :].to(x.dtype), ang.sin()[..., None, :].to(x.dtype)
        x1, x2 = x[..., : self.d // 2], x[..., self.d // 2:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def _qkv(self, lw: dict, x: torch.Tensor, pos: torch.Tensor):
        qkv = F.linear(F.rms_norm(x, (self.h,), lw["norm1"]), lw["qkv"], lw["qkv_bias"])
        q, k, v = qkv.split([self.heads * self.d, self.kv * self.d, self.kv * self.d], -1)
        shape = x.shape[:-1]
        q = self.rope(q.view(*shape, self.heads, self.d), pos)
        k = self.rope(k.view(*shape, self.kv, self.d), pos)
        return q, k, v.view(*shape, self.kv, self.d)

    def _mlp(self, lw: dict, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(F.rms_norm(x, (self.h,), lw["norm2"]), lw["gate_up"]).chunk(2, -1)
        return x + F.linear(F.silu(gate) * up, lw["down"])

    def _sample(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.rms_norm(x, (self.h,), self.norm), self.lm_head).argmax(-1)

    def prefill(self, ids: torch.Tensor, cache: list) -> torch.Tensor:
        """ids (B, n) from an empty cache; K and V go into the first n slots of cache[layer] =
        (k, v), each (B, kv, >= n, d); returns each prompt's first sampled token."""
        b, n = ids.shape
        pos = torch.arange(n, device=self.device).expand(b, n)
        x = self.embed[ids]
        group = self.heads // self.kv
        for lw, (kc, vc) in zip(self.w, cache, strict=True):
            q, k, v = self._qkv(lw, x, pos)
            kc, vc = kc[:, :, :n], vc[:, :, :n]
            kc.copy_(k.transpose(1, 2))
            vc.copy_(v.transpose(1, 2))
            if self.attention == "matmul":  # grouped K/V copied out per query head
                kc = kc[:, :, None].expand(b, self.kv, group, n, self.d).reshape(
                    b, self.heads, n, self.d)
                vc = vc[:, :, None].expand(b, self.kv, group, n, self.d).reshape(
                    b, self.heads, n, self.d)
            a = self._sdpa(q.transpose(1, 2), kc, vc, causal=True)
            x = x + F.linear(a.transpose(1, 2).reshape(b, n, -1), lw["o"])
            x = self._mlp(lw, x)
        return self._sample(x[:, -1])

    def decode(self, ids: torch.Tensor, pos: torch.Tensor, cache: list) -> torch.Tensor:
        """One token for each of B sequences: ids (B,), pos (B,) the new token's position, the
        caches (B, kv, ctx + 1, d) hold ctx tokens and take the new one at pos."""
        b = ids.shape[0]
        x = self.embed[ids]
        group = self.heads // self.kv
        scale = 1.0 / math.sqrt(self.d)
        slot = pos[:, None, None, None].expand(b, self.kv, 1, self.d)
        for lw, (kc, vc) in zip(self.w, cache, strict=True):
            q, k, v = self._qkv(lw, x[:, None], pos[:, None])
            kc.scatter_(2, slot, k.transpose(1, 2))
            vc.scatter_(2, slot, v.transpose(1, 2))
            if self.attention == "matmul":  # grouped heads as one batched matmul
                qg = q.view(b, self.kv, group, self.d)  # (B, kv, group, d)
                s = torch.matmul(qg, kc.transpose(-1, -2)) * scale  # (B, kv, group, ctx + 1)
                a = torch.matmul(torch.softmax(s.float(), -1).to(qg.dtype), vc)
            else:  # the one query attends to the whole cache: no mask
                a = self._sdpa(q.view(b, self.heads, 1, self.d), kc, vc, causal=False)
            x = x + F.linear(a.reshape(b, -1), lw["o"])
            x = self._mlp(lw, x)
        return self._sample(x)

    def to_fp8(self) -> None:
        """The matmuls' weights in FP8 (e4m3) with per-tensor scales, as vLLM serves FP8
        checkpoints; `linear` then casts each input to FP8 and multiplies on FP8 tensor cores."""
        self.fp8 = True
        self.one = torch.ones((), device=self.device, dtype=torch.float32)
        for lw in self.w:
            for key in ("qkv", "o", "gate_up", "down"):
                lw[key] = (lw[key] * 50).to(FP8)  # N(0, 1): within e4m3's range

    def _mm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if not self.fp8:
            return F.linear(x, w)
        return torch._scaled_mm(x.to(FP8), w.t(), scale_a=self.one, scale_b=self.one,
                                out_dtype=self.dtype)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The matmuls of every layer on x (tokens, hidden)."""
        inter = self.spec["intermediate"]
        for lw in self.w:
            y = self._mm(x, lw["qkv"])
            x = self._mm(y[:, : self.heads * self.d], lw["o"])
            y = self._mm(x, lw["gate_up"])
            x = self._mm(y[:, :inter], lw["down"])
        return x


def check() -> None:
    """The decode step agrees with prefill: prefilling n tokens then decoding token n + 1 gives
    the same next token and hidden state as prefilling all n + 1 (a small model, float32)."""
    spec = {"hidden": 64, "head_dim": 16, "heads": 8, "kv_heads": 2, "intermediate": 96,
            "vocab": 97, "qkv_bias": True}
    b, n = 3, 11
    ids = torch.randint(0, 97, (b, n + 1), generator=torch.Generator().manual_seed(1))
    tokens = [check_attention(spec, ids, attention) for attention in ("sdpa", "matmul")]
    assert torch.equal(tokens[0], tokens[1]), "the two attention paths disagree"
    print("check: decode after prefill matches one longer prefill (tokens, hidden, KV), with "
          "SDPA and with matmul attention")


def check_attention(spec: dict, ids: torch.Tensor, attention: str) -> torch.Tensor:
    torch.manual_seed(0)
    m = Model(spec, 2, torch.float32, "cpu", attention)
    for w in m.w:  # larger weights, so that a wrong step changes the result
        for key in ("qkv", "o", "gate_up", "down"):
            w[key] *= 10
    b, n = ids.shape[0], ids.shape[1] - 1
    full = [tuple(torch.zeros(b, 2, n + 1, 16) for _ in range(2)) for _ in range(2)]
    step = [tuple(torch.zeros(b, 2, n + 1, 16) for _ in range(2)) for _ in range(2)]
    hidden: list[torch.Tensor] = []
    sample = m._sample
    m._sample = lambda x: hidden.append(x) or sample(x)
    want = m.prefill(ids, full)
    m.prefill(ids[:, :n], step)
    got = m.decode(ids[:, n], torch.full((b,), n), step)
    m._sample = sample
    assert torch.equal(got, want), (got, want)
    assert torch.allclose(hidden[2], hidden[0], atol=1e-4), "decode's hidden state differs"
    for (kf, vf), (ks, vs) in zip(full, step, strict=True):
        assert torch.allclose(kf, ks, atol=1e-5) and torch.allclose(vf, vs, atol=1e-5)
    return got


def choose_backend(model: Model) -> str:
    """On CUDA, the first SDPA backend that runs this model's prefill and decode attention with
    the grouped K/V read in place (forced, so that PyTorch cannot fall back to copying them);
    the hand-written matmul if none does. Returns the attention's name for the rows' source."""
    if model.attention == "matmul":
        return "attention: matmul"
    if not model.device.startswith("cuda"):
        return "attention: SDPA"
    k = torch.randn(2, model.kv, 64, model.d, device=model.device, dtype=model.dtype)
    q1 = torch.randn(2, model.heads, 1, model.d, device=model.device, dtype=model.dtype)
    qn = torch.randn(2, model.heads, 64, model.d, device=model.device, dtype=model.dtype)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.EFFICIENT_ATTENTION):
        model.backend = backend
        try:
            model._sdpa(q1, k, k, causal=False)
            model._sdpa(qn, k, k, causal=True)
            torch.cuda.synchronize()
        except RuntimeError:
            continue
        return f"attention: SDPA {backend.name.lower()}"
    model.backend, model.attention = None, "matmul"
    return "attention: matmul (no SDPA backend took grouped K/V)"


class Timer:
    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn, repeats: int, warmup: int) -> list[float]:
        """Seconds of each of `repeats` calls of fn, after `warmup` calls."""
        for _ in range(warmup):
            fn()
        self.sync()
        out = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), \
                    torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end) * 1e-3)
            else:
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        return out


def graphed(fn, device: str):
    """fn as a CUDA-graph replay (on CUDA), captured after a warm-up on a side stream."""
    if not device.startswith("cuda"):
        return fn
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def software() -> str:
    parts = [f"torch {torch.__version__}", f"python {platform.python_version()}"]
    if torch.cuda.is_available():
        parts.insert(1, f"cuda {torch.version.cuda}")
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                     "--format=csv,noheader"], capture_output=True, text=True,
                                    timeout=20).stdout.strip().splitlines()[0]
            parts.insert(2, f"driver {driver}")
        except (OSError, IndexError, subprocess.SubprocessError):
            pass
    return "; ".join(parts)


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def measure(name: str, args, writer, device_name: str, sw: str) -> int:
    spec = arch(name)
    dtype_name = args.dtype or spec.get("default_dtype", "bf16")
    layers = args.layers or spec["layers"]
    dry = layers != spec["layers"] or not args.device.startswith("cuda")
    torch.manual_seed(0)
    model = Model(spec, layers, DTYPES[dtype_name], args.device, args.attention)
    if dtype_name == "fp8":  # FP8 attention and KV are the engine's own: the matmuls alone
        model.to_fp8()
        attention = "FP8 matmuls (torch._scaled_mm, per-tensor scales), linear steps only"
    else:
        attention = choose_backend(model)
    print(f"  {name}: {attention}", flush=True)
    source = (f"dry run: {layers} of {spec['layers']} layers on {args.device}, not calibration "
              "data" if dry else "benchmarks/gpu_steps.py: random weights; steps as CUDA "
              f"graphs; {attention}; median of repeats")
    timer = Timer(args.device)
    prefill, decode, linear = QUICK if args.quick else (PREFILL, DECODE, LINEAR)
    if model.fp8:
        prefill, decode = [], []
    rows = 0

    def row(phase: str, batch: int, tokens: int, times: list[float]) -> None:
        nonlocal rows
        med = statistics.median(times)
        writer.writerow([f"{args.gpu}-{name}-{dtype_name}-{phase}-{batch}-{tokens}", args.gpu, name,
                         dtype_name, 1, phase, batch, tokens, f"{med:.6g}",
                         f"{quantile(times, 0.1):.6g}", f"{quantile(times, 0.9):.6g}",
                         device_name, sw, source])
        rows += 1
        print(f"  {name} {phase:7s} batch {batch:4d} tokens {tokens:6d}: {med * 1e3:9.3f} ms",
              flush=True)

    kv = (model.kv, model.d)
    longest = spec["max_context"]
    for b, n in prefill:
        if n > longest:
            continue
        ids = torch.randint(0, spec["vocab"], (b, n), device=args.device)
        cache = [tuple(torch.empty(b, *kv[:1], n, kv[1], device=args.device,
                                   dtype=model.dtype) for _ in range(2)) for _ in range(layers)]
        with torch.inference_mode():  # as a CUDA graph too: vLLM graphs its steps, and eager
            step = graphed(partial(model.prefill, ids, cache), args.device)  # launches stall
            row("prefill", b, n, timer.time(step, args.repeats, args.warmup))
        del step, cache
    kv_bytes = 2 * layers * model.kv * model.d * model.embed.element_size()  # a token's K, V
    room = MAX_KV_BYTES
    if args.device.startswith("cuda"):  # what the weights leave, with room for activations
        room = min(room, 0.7 * torch.cuda.mem_get_info()[0])
    for b, c in decode:
        if c + 1 > longest:
            continue
        if b * (c + 1) * kv_bytes > room:
            print(f"  {name} decode  batch {b:4d} tokens {c:6d}: left out, its KV cache "
                  f"({b * (c + 1) * kv_bytes / 1e9:.0f} GB) > {room / 1e9:.0f} GB", flush=True)
            continue
        ids = torch.randint(0, spec["vocab"], (b,), device=args.device)
        pos = torch.full((b,), c, device=args.device)
        cache = [tuple(torch.randn(b, kv[0], c + 1, kv[1], device=args.device,
                                   dtype=model.dtype) * 0.1 for _ in range(2))
                 for _ in range(layers)]
        with torch.inference_mode():
            step = graphed(partial(model.decode, ids, pos, cache), args.device)
            row("decode", b, c, timer.time(step, args.repeats * 3, args.warmup))
        del step, cache
    for t in linear:
        x = torch.randn(t, model.h, device=args.device, dtype=model.dtype)
        try:
            with torch.inference_mode():
                step = graphed(partial(model.linear, x), args.device)
                row("linear", 1, t, timer.time(step, args.repeats * 3, args.warmup))
        except RuntimeError as exc:  # a shape this PyTorch's kernels refuse: said, not lost
            print(f"  {name} linear  tokens {t:6d}: left out, {str(exc).splitlines()[0]}",
                  flush=True)
            continue
        del step
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", required=True, help="the accelerator's name in hetserve's "
                        "catalog (H100-SXM, H200, ...)")
    parser.add_argument("--model", action="append", required=True, help="a model of "
                        "hetserve's registry (repeatable)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: the model's; fp8: "
                        "the linear steps alone, on FP8 tensor cores")
    parser.add_argument("--out", type=Path, required=True, help="step-times CSV to write")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, help="dry runs only: fewer layers")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--attention", choices=("sdpa", "matmul"), default="sdpa",
                        help="sdpa: scaled_dot_product_attention reading grouped K/V in place, "
                        "as engines' kernels do; matmul: by hand (grouped heads as a batched "
                        "matmul; slower at long contexts)")
    parser.add_argument("--quick", action="store_true", help="a few small shapes (dry runs)")
    parser.add_argument("--check", action="store_true", help="first check that decode "
                        "agrees with prefill on a small model (CPU, float32)")
    args = parser.parse_args()
    if args.check:
        check()
    for name in args.model:
        arch(name)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU visible to PyTorch (use --device cpu for a dry run)")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        platform.processor() or platform.machine()
    sw = software()
    print(f"{device_name}; {sw}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    start = time.perf_counter()
    rows = 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for name in args.model:
            rows += measure(name, args, writer, device_name, sw)
            f.flush()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    print(f"{rows} step times in {time.perf_counter() - start:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
