"""Send a trace's requests to an OpenAI endpoint at their arrival times (open loop), streamed,
and time each one at the client: what `hetserve up --burst` and the gateway benchmarks run.

Each request asks for its trace output length as `min_tokens` (the emulator stops there) under
a `max_tokens` cap of at least CAP_TOKENS: the loose cap a real client sends, so that a gateway
routes without knowing the output, as the simulator does; within the model's context
(`max_model_len`, when given), which the gateway and the engines enforce."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import numpy as np

CAP_TOKENS = 1024  # the last output range of the default class grid starts here


@dataclass(frozen=True)
class Sent:
    """One request as the client saw it (seconds on the client's clock)."""

    sent: float
    first: float | None  # first streamed chunk; None: none came
    last: float | None
    status: int  # HTTP status; 599: the stream broke (no [DONE]); 598: timed out
    output_tokens: int  # tokens received

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.first is not None

    @property
    def ttft(self) -> float:
        return self.first - self.sent if self.first is not None else np.inf

    @property
    def tpot(self) -> float:
        if self.first is None or self.last is None or self.output_tokens <= 1:
            return 0.0
        return (self.last - self.first) / (self.output_tokens - 1)


async def _one(session, url: str, model: str, at: float, inp: int, out: int,
               cap: int | None, headers: dict) -> Sent:
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    sent = time.perf_counter()
    first = last = None
    tokens, done = 0, False
    try:
        body = {"model": model, "prompt": [1] * inp, "max_tokens": out, "stream": True}
        if cap is not None and cap > out:
            body.update(max_tokens=cap, min_tokens=out)
        async with session.post(url, headers=headers, json=body) as resp:
            if resp.status != 200:
                await resp.read()
                return Sent(sent, None, None, resp.status, 0)
            async for line in resp.content:
                if line.startswith(b"data: [DONE]"):
                    done = True
                elif line.startswith(b'data: {"error"'):
                    break
                elif line.startswith(b"data: {") and b'"choices": []' not in line \
                        and b'"choices":[]' not in line:  # the usage chunk
                    last = time.perf_counter()
                    first = first or last
                    tokens += 1
    except aiohttp.ClientError:
        done = False
    except TimeoutError:
        return Sent(sent, first, last, 598, tokens)
    return Sent(sent, first, last, 200 if done and tokens == out else 599, tokens)


def request_cap(inp: int, cap: int | None, max_model_len: int | None) -> int | None:
    """The `max_tokens` cap of a request with `inp` prompt tokens: `cap`, within what the
    context leaves (never below one token: a prompt too long is the server's to refuse)."""
    if cap is None or max_model_len is None:
        return cap
    return max(1, min(cap, max_model_len - inp))


async def replay(base_url: str, model: str, arrivals: Sequence[float], inputs: Sequence[int],
                 outputs: Sequence[int], api_key: str | None = None,
                 cap: int | None = CAP_TOKENS, max_model_len: int | None = None) -> list[Sent]:
    """Each request at `arrivals[k]` seconds from now: `inputs[k]` prompt tokens (token ids),
    `outputs[k]` tokens out (`min_tokens`, under a `max_tokens` of at least `cap`, within
    `max_model_len`; cap None: `max_tokens` is the output), to `base_url`/v1/completions."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        start = time.perf_counter() + 0.2
        return await asyncio.gather(*(
            _one(session, base_url + "/v1/completions", model, start + a, int(i), int(o),
                 request_cap(int(i), cap, max_model_len), headers)
            for a, i, o in zip(arrivals, inputs, outputs, strict=True)))
