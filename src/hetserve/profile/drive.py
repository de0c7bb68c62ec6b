"""Drive an OpenAI-compatible endpoint and measure it: `hetserve profile`.

Each request is a streamed completion whose prompt is a list of random token ids of the asked
length (exact without a tokenizer, and never a prefix-cache hit; where the endpoint refuses
token ids, as llama-cpp-python's server does, random words sized with its tokenizer, see
Prompts) and whose output is held to
the asked length (`max_tokens` = `min_tokens` = N with `ignore_eos`, which vLLM, SGLang and
llama.cpp's server honour; a request that still gets fewer tokens is counted in the point's
`short_outputs`). Latencies are taken at the client: TTFT at the first streamed token, ITL as
(last - first) / (tokens - 1).

- Closed loop at concurrency c: c clients send back to back for the point's seconds, their
  starts spread over one request's latency; as in hetserve.sim.calibrate.closed_loop, the
  first c completions warm the engine and the rest are measured; throughput by Little's law
  (c x tokens per request / mean latency).
- Open loop at rate r: Poisson arrivals (seeded) for the point's seconds; every request
  measured, throughput over the whole run.

Anything that fails (the endpoint unreachable, a model it does not serve, any HTTP error, a
request past its timeout, a stream that breaks) raises MeasureError naming the endpoint and
what it answered; the caller keeps the points measured so far, marked partial.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import numpy as np

from hetserve.errors import HetserveError
from hetserve.profile.file import EngineMetrics, ProfilePoint

SEED = 20261130


class MeasureError(HetserveError):
    """A measurement that failed: the endpoint, and what it answered."""


@dataclass(frozen=True)
class Sample:
    sent: float
    first: float
    end: float
    tokens: int


@dataclass
class Endpoint:
    base: str  # http://host:port (without /v1)
    served_model: str = ""
    api_key: str | None = None
    timeout: float = 120.0  # seconds a request may take

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def normalise(url: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise HetserveError(f"--endpoint {url}: expected an http:// or https:// URL")
    return url[:-3] if url.endswith("/v1") else url


async def served_models(session: aiohttp.ClientSession, ep: Endpoint) -> list[str]:
    url = ep.base + "/v1/models"
    try:
        async with session.get(url, headers=ep.headers) as resp:
            if resp.status != 200:
                raise MeasureError(f"{url}: HTTP {resp.status}: {await _message(resp)}")
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
        raise MeasureError(f"{url}: {_reason(exc)}") from None
    try:
        return [m["id"] for m in data["data"]]
    except (KeyError, TypeError):
        raise MeasureError(f"{url}: not an OpenAI model list") from None


async def engine_metrics(session: aiohttp.ClientSession, ep: Endpoint) -> EngineMetrics:
    """The engine's /metrics (vLLM's names); all None where there is none."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with session.get(ep.base + "/metrics", headers=ep.headers) as resp:
            if resp.status != 200:
                return EngineMetrics()
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return EngineMetrics()
    found: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                found[sample.name] = found.get(sample.name, 0.0) + sample.value
    except ValueError:  # not Prometheus text
        return EngineMetrics()

    def get(*names: str) -> float | None:
        return next((found[n] for n in names if n in found), None)

    return EngineMetrics(running=get("vllm:num_requests_running"),
                         waiting=get("vllm:num_requests_waiting"),
                         kv_usage=get("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
                         preemptions=get("vllm:num_preemptions_total"))


async def request(session: aiohttp.ClientSession, ep: Endpoint, prompt: list[int] | str,
                  output: int) -> Sample:
    url = ep.base + "/v1/completions"
    body = {"model": ep.served_model, "prompt": prompt, "max_tokens": output,
            "min_tokens": output, "ignore_eos": True, "stream": True, "temperature": 0.0,
            "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    first = last = 0.0
    chunks = 0
    usage = None
    done = False
    try:
        async with asyncio.timeout(ep.timeout):
            async with session.post(url, json=body, headers=ep.headers) as resp:
                if resp.status != 200:
                    raise MeasureError(f"{url}: HTTP {resp.status}: {await _message(resp)}")
                async for line in resp.content:
                    if not line.startswith(b"data: "):
                        continue
                    if line.startswith(b"data: [DONE]"):
                        done = True
                        break
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise MeasureError(f"{url}: the stream ended in an error: "
                                           f"{event['error'].get('message', event['error'])}")
                    if event.get("usage"):
                        usage = event["usage"]
                    if event.get("choices"):
                        last = time.perf_counter()
                        first = first or last
                        chunks += 1
    except TimeoutError:
        size = len(prompt) if isinstance(prompt, list) else f"{len(prompt.split())}-word"
        raise MeasureError(f"{url}: a request of {size} prompt and {output} output tokens "
                           f"took over {ep.timeout:g} s (--timeout)") from None
    except (aiohttp.ClientError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MeasureError(f"{url}: {_reason(exc)}") from None
    if not done or not chunks:
        raise MeasureError(f"{url}: the stream ended without [DONE]")
    tokens = int(usage["completion_tokens"]) if usage else chunks
    return Sample(sent, first, last, tokens)


# short common words: most tokenizers give each one token (with its leading space)
_WORD_TEXT = """time year people way day man thing woman life child world school state family
student group country problem hand part place case week company system program question work
government number night point home water room mother area money story fact month lot right study
book eye job word business issue side kind head house service friend father power hour game line
end member law car city community name president team minute idea kid body information back
parent face level office door health person art war history party result change morning reason
research girl guy moment air teacher force education"""
WORDS = tuple(_WORD_TEXT.split())


class Prompts:
    """A fresh prompt of n tokens per call, no two sharing a prefix: random token ids where the
    endpoint takes them (exact); else random words, as many as its tokenizer makes n tokens of
    (its /tokenize, llama-cpp-python's /extras/tokenize, or a one-token completion's usage)."""

    def __init__(self, vocab: int, seed: int = SEED) -> None:
        self.rng = np.random.default_rng(seed)
        self.high = max(vocab - 1, 101)
        self.words: dict[int, int] | None = None  # text mode: prompt tokens -> words
        self.how = "token ids"

    def __call__(self, n: int) -> list[int] | str:
        if self.words is None:
            return self.rng.integers(100, self.high, size=n).tolist()
        return " ".join(self.rng.choice(WORDS, size=self.words[n]))

    async def prepare(self, session, ep: Endpoint, sizes: Sequence[int]) -> None:
        try:
            await _usage(session, ep, [100, 101, 102, 103])
            return
        except MeasureError:  # token ids refused (llama-cpp-python's server): text
            pass
        self.words = {}
        for n in sorted(set(sizes)):
            self.words[n] = await self._words_for(session, ep, n)

    async def _words_for(self, session, ep: Endpoint, n: int) -> int:
        best, best_gap, k = 1, None, n
        for _ in range(8):
            got = await self._count(session, ep, " ".join(self.rng.choice(WORDS, size=k)))
            if best_gap is None or abs(got - n) < best_gap:
                best, best_gap = k, abs(got - n)
            if got == n:
                break
            k = max(1, round(k * n / got) if abs(got - n) > 2 else k + (n - got))
        return best

    async def _count(self, session, ep: Endpoint, text: str) -> int:
        body = {"model": ep.served_model, "prompt": text, "content": text, "input": text}
        for path in ("/tokenize", "/extras/tokenize"):
            try:
                async with session.post(ep.base + path, json=body, headers=ep.headers) as resp:
                    if resp.status == 200:
                        data = await resp.json(content_type=None)
                        if isinstance(data, dict) and ("count" in data or "tokens" in data):
                            self.how = f"text ({path})"
                            return int(data.get("count") or len(data["tokens"]))
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
        self.how = "text (usage)"
        return await _usage(session, ep, text)


async def _usage(session, ep: Endpoint, prompt) -> int:
    """The prompt tokens a one-token completion of `prompt` reports (its usage)."""
    url = ep.base + "/v1/completions"
    body = {"model": ep.served_model, "prompt": prompt, "max_tokens": 1}
    try:
        async with asyncio.timeout(ep.timeout):
            async with session.post(url, json=body, headers=ep.headers) as resp:
                if resp.status != 200:
                    raise MeasureError(f"{url}: HTTP {resp.status}: {await _message(resp)}")
                data = await resp.json(content_type=None)
        return int(data["usage"]["prompt_tokens"])
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
        raise MeasureError(f"{url}: {_reason(exc)}") from None


async def closed_loop(session, ep: Endpoint, prompts: Prompts, concurrency: int, inp: int,
                      out: int, seconds: float) -> tuple[list[Sample], list[Sample], float]:
    """Every request sent, those measured (past the warm-up), and the window's seconds.

    Clients that start together stay in lockstep (same sizes, same batch: every round's
    prompts queue behind each other, then decode alone), which no real load does: as the
    simulator's closed loop, client k starts k/c of one request's latency alone after the
    first (measured by one request sent alone first, not counted)."""
    alone = await request(session, ep, prompts(inp), out)
    spread = (alone.end - alone.sent) / concurrency
    start = time.perf_counter()
    stop = start + seconds
    samples: list[Sample] = []

    async def client(k: int) -> None:
        await asyncio.sleep(max(0.0, start + k * spread - time.perf_counter()))
        while time.perf_counter() < stop or not samples:
            samples.append(await request(session, ep, prompts(inp), out))

    await _all(client(k) for k in range(concurrency))
    samples.sort(key=lambda s: s.end)
    if len(samples) > concurrency:
        window = samples[-1].end - samples[concurrency - 1].end
        return [alone, *samples], samples[concurrency:], window
    return [alone, *samples], samples, samples[-1].end - min(s.sent for s in samples)


async def open_loop(session, ep: Endpoint, prompts: Prompts, rate: float, inp: int, out: int,
                    seconds: float, seed: int = SEED
                    ) -> tuple[list[Sample], list[Sample], float]:
    start = time.perf_counter()
    due = start + poisson_offsets(rate, seconds, seed)

    async def one(at: float) -> Sample:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        return await request(session, ep, prompts(inp), out)

    samples = await _all(one(float(t)) for t in due)
    return samples, samples, max(s.end for s in samples) - start


def poisson_offsets(rate: float, seconds: float, seed: int = SEED) -> np.ndarray:
    """Send times (s after the first) of Poisson arrivals at `rate` for `seconds`: the open
    loop's schedule, which the fit regenerates for a point that did not record its own."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=max(1, int(rate * seconds)))
    return np.cumsum(gaps) - gaps[0]


async def _all(coros) -> list:
    """Run all; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def point(mode: str, load: float, inp: int, out: int, every: list[Sample],
          samples: list[Sample], window: float, before: EngineMetrics,
          after: EngineMetrics) -> ProfilePoint:
    """`every`: all requests sent; `samples`: those measured (a subset of them)."""
    order = sorted(every, key=lambda s: s.sent)
    chosen = {id(s) for s in samples}
    ttft = np.array([s.first - s.sent for s in samples])
    itl = np.array([(s.end - s.first) / (s.tokens - 1) for s in samples if s.tokens > 1])
    return ProfilePoint(
        mode=mode, concurrency=int(load) if mode == "closed" else None,
        rate=float(load) if mode == "open" else None, input_tokens=inp, output_tokens=out,
        seconds=window, sent=len(every), completed=len(samples), ttft=float(ttft.mean()),
        ttft_p90=float(np.quantile(ttft, 0.9)), itl=float(itl.mean()) if len(itl) else 0.0,
        e2e_latency=float(np.mean([s.end - s.sent for s in samples])),
        output_throughput=_throughput(mode, load, samples, window),
        short_outputs=sum(s.tokens < out for s in samples), before=before, after=after,
        sent_at=[s.sent - order[0].sent for s in order],
        measured=[id(s) in chosen for s in order])


def _throughput(mode: str, load: float, samples: list[Sample], window: float) -> float:
    """Output tokens/s. Closed loop: Little's law, clients x tokens per request / latency (a
    window of a few seconds holds too few completions to count them); open loop: tokens over
    the run."""
    if mode == "closed":
        return load * float(np.mean([s.tokens for s in samples])) / float(
            np.mean([s.end - s.sent for s in samples]))
    return sum(s.tokens for s in samples) / max(window, 1e-9)


@dataclass(frozen=True)
class Sweep:
    """The points to measure, in order: sizes x (concurrencies, then rates)."""

    sizes: tuple[tuple[int, int], ...]
    concurrency: tuple[int, ...]
    rates: tuple[float, ...]
    seconds: float

    def points(self) -> list[tuple[str, float, int, int]]:
        return [(mode, load, inp, out) for inp, out in self.sizes
                for mode, loads in (("closed", self.concurrency), ("open", self.rates))
                for load in loads]


async def measure(ep: Endpoint, sweep: Sweep, vocab: int,
                  on_point: Callable[[ProfilePoint | None, str], None]) -> None:
    """Measure every point of `sweep` against `ep`, calling `on_point(point, label)` after each
    (first `on_point(None, how prompts are built)`, once the served model is resolved into
    ep). Raises MeasureError."""
    prompts = Prompts(vocab)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        models = await served_models(session, ep)
        if not ep.served_model:
            if len(models) != 1:
                raise MeasureError(f"{ep.base}/v1/models serves {len(models)} models "
                                   f"({', '.join(models)}): name one with --served-model")
            ep.served_model = models[0]
        elif ep.served_model not in models:
            raise MeasureError(f"{ep.base}/v1/models: no model {ep.served_model!r} (it serves "
                               f"{', '.join(models) or 'none'})")
        await prompts.prepare(session, ep, [inp for inp, _ in sweep.sizes])
        on_point(None, prompts.how)
        for mode, load, inp, out in sweep.points():
            before = await engine_metrics(session, ep)
            run = closed_loop if mode == "closed" else open_loop
            every, samples, window = await run(session, ep, prompts,
                                               int(load) if mode == "closed" else load,
                                               inp, out, sweep.seconds)
            after = await engine_metrics(session, ep)
            on_point(point(mode, load, inp, out, every, samples, window, before, after),
                     f"{inp}/{out} {mode} {load:g}")


async def _message(resp: aiohttp.ClientResponse) -> str:
    text = (await resp.text())[:300]
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip() or resp.reason or ""


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
