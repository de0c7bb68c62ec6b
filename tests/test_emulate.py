"""The emulator behind the OpenAI API, driven by the real `openai` client: token counts, SSE
chunks as vLLM sends them, vLLM's metric names, timing from the step physics, queueing under
load, and a client that goes away freeing its slot. Servers bind 127.0.0.1 on ephemeral ports;
every load is bounded."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from contextlib import contextmanager

import openai
import pytest

from hetserve.catalog import load_catalog
from hetserve.emulate import Emulator
from hetserve.emulate.engine import filler
from hetserve.models import get_model
from hetserve.perf import Deployment

from .conftest import hang_up_after, in_background

MODEL = "llama-3.1-8b"


@contextmanager
def emulator(accelerator="L4", replicas=1, max_model_len=None, aliases=(), **knobs):
    dep = Deployment(get_model(MODEL), load_catalog().get(accelerator), **knobs)
    emu = Emulator(dep, MODEL, replicas, max_model_len=max_model_len, aliases=aliases)
    with in_background(emu.start, emu.stop) as urls:
        yield dep, urls


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)


def metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'^(vllm:[a-z0-9_]+)\{model_name="[^"]+"\} (\S+)$', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_completion_counts_text_and_timing_follow_the_engine():
    with emulator() as (dep, (url,)):
        c = client(url)
        start = time.perf_counter()
        r = c.completions.create(model=MODEL, prompt="word " * 1000, max_tokens=12)
        took = time.perf_counter() - start
        assert r.usage.prompt_tokens == 1000 and r.usage.completion_tokens == 12
        assert r.choices[0].text == "".join(filler(k) for k in range(12))
        assert r.choices[0].finish_reason == "length"
        # one request alone: its prefill, then 11 decode steps at batch 1 (the step physics)
        physics = float(dep.prefill_time(1000)) + sum(
            float(dep.decode_step_time(1, 1000 + k)) for k in range(1, 12))
        # never faster than the physics; the upper bound only catches gross errors (a busy
        # machine adds HTTP and scheduling time, never a second per request)
        assert physics * 0.97 <= took <= physics * 1.5 + 0.5
        got = metrics(url)
        assert got["vllm:prompt_tokens_total"] == 1000
        assert got["vllm:generation_tokens_total"] == 12
        assert got["vllm:e2e_request_latency_seconds_count"] == 1
        assert got["vllm:time_to_first_token_seconds_count"] == 1
        assert got["vllm:inter_token_latency_seconds_count"] == 11
        assert got["vllm:num_requests_running"] == 0 and got["vllm:kv_cache_usage_perc"] == 0
        models = c.models.list().data
        assert [m.id for m in models] == [MODEL]
        assert urllib.request.urlopen(url + "/health", timeout=10).status == 200
        # the emulated model stops at min_tokens ("stop"); ignore_eos runs to max_tokens
        short = c.completions.create(model=MODEL, prompt="a", max_tokens=50,
                                     extra_body={"min_tokens": 3})
        assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "stop"
        full = c.completions.create(model=MODEL, prompt="a", max_tokens=5,
                                    extra_body={"min_tokens": 3, "ignore_eos": True})
        assert full.usage.completion_tokens == 5 and full.choices[0].finish_reason == "length"


def test_chat_stream_sends_a_chunk_per_token_and_usage_last():
    with emulator() as (_, (url,)):
        stream = client(url).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "three words here"}],
            max_tokens=5, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [ch.choices[0].delta.content for ch in chunks[1:-1]]
    assert content == [filler(k) for k in range(5)]
    assert [ch.choices[0].finish_reason for ch in chunks[1:-1]] == [None] * 4 + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens == 3 + 4  # words + the chat template's overhead


def test_bad_requests_get_vllms_400():
    with emulator() as (_, (url,)):
        c = client(url)
        # the context is the model's, within what the KV cache holds (as vLLM's max_model_len)
        (entry,) = c.models.list().data
        limit = entry.model_extra["max_model_len"]
        assert 2048 < limit <= 131_072
        with pytest.raises(openai.BadRequestError, match=f"maximum context length is {limit}"):
            c.completions.create(model=MODEL, prompt=[1] * (limit - 10), max_tokens=100)
        with pytest.raises(openai.NotFoundError, match="The model `gpt-9` does not exist"):
            c.completions.create(model="gpt-9", prompt="hi")
        with pytest.raises(openai.BadRequestError, match="stream_options: expected an object"):
            c.completions.create(model=MODEL, prompt="hi", extra_body={"stream_options": "yes"})
        with pytest.raises(openai.BadRequestError, match="min_tokens"):
            c.completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                 extra_body={"min_tokens": 5})


def test_the_plans_max_model_len_and_served_names_hold_as_in_vllm():
    """`vllm serve HF_ID --served-model-name NAME HF_ID --max-model-len 1000`: both names are
    answered (and echoed), both listed; a prompt or prompt + max_tokens over 1000 is vLLM's
    400; a chat without max_tokens gets what the context leaves."""
    hf_id = "meta-llama/Llama-3.1-8B-Instruct"
    with emulator(max_model_len=1000, aliases=[hf_id]) as (_, (url,)):
        c = client(url)
        assert [(m.id, m.root, m.model_extra["max_model_len"]) for m in c.models.list().data] \
            == [(MODEL, hf_id, 1000), (hf_id, hf_id, 1000)]
        r = c.completions.create(model=hf_id, prompt=[1] * 990, max_tokens=10)
        assert r.model == hf_id and r.usage.total_tokens == 1000
        with pytest.raises(openai.BadRequestError) as over:
            c.completions.create(model=MODEL, prompt=[1] * 990, max_tokens=11)
        assert over.value.body["message"] == (
            "This model's maximum context length is 1000 tokens. However, you requested 1001 "
            "tokens (990 in the messages, 11 in the completion). Please reduce the length of "
            "the messages or completion.")
        with pytest.raises(openai.BadRequestError, match="your request has 1000 input tokens"):
            c.completions.create(model=MODEL, prompt=[1] * 1000)
        chat = c.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": "w " * 900}], extra_body={"ignore_eos": True})
        assert chat.usage.completion_tokens == 1000 - 904  # the context left, under 256
        assert chat.usage.prompt_tokens == 904


def test_a_saturated_replica_queues_and_every_request_completes():
    # two sequences a step: 12 requests at once queue behind them, and all finish
    with emulator(max_seqs=2) as (_, (url,)):
        async def burst():
            c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0,
                                   timeout=30)
            seen = []

            async def watch():
                while len(seen) < 200:
                    seen.append(await asyncio.to_thread(metrics, url))
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            done = await asyncio.gather(*(c.completions.create(
                model=MODEL, prompt="w " * 200, max_tokens=8) for _ in range(12)))
            watcher.cancel()
            await c.close()
            return done, seen

        done, seen = asyncio.run(burst())
    assert all(r.usage.completion_tokens == 8 for r in done)
    assert max(s["vllm:num_requests_waiting"] for s in seen) >= 5
    assert max(s["vllm:num_requests_running"] for s in seen) == 2


def test_a_client_that_goes_away_frees_its_slot():
    with emulator() as (_, (url,)):
        hang_up_after(client(url).completions.create(model=MODEL, prompt="hi", max_tokens=5000,
                                                     stream=True), 4)
        deadline = time.monotonic() + 5
        while metrics(url)["vllm:num_requests_running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        got = metrics(url)
    assert got["vllm:num_requests_running"] == 0 and got["vllm:kv_cache_usage_perc"] == 0
    assert got["vllm:generation_tokens_total"] < 5000


def test_one_process_hosts_many_replicas():
    with emulator(replicas=4) as (_, urls):
        assert len(set(urls)) == 4
        for url in urls:
            r = client(url).completions.create(model=MODEL, prompt="a b c", max_tokens=2)
            assert r.usage.total_tokens == 5
