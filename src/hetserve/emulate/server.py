"""The OpenAI API in front of emulated engines (aiohttp), one port per replica.

Serves `POST /v1/completions` and `POST /v1/chat/completions` (with `stream: true`, server-sent
events as vLLM sends them, `usage` in a last chunk when `stream_options.include_usage` asks),
`GET /v1/models`, `GET /health` and `GET /metrics` (vLLM's metric names). Bad requests get
vLLM's 400 body: `{"error": {"message", "type": "BadRequestError", "param", "code": 400}}`; a
request whose prompt, or prompt + max_tokens, exceeds `max_model_len` is one (vLLM's words,
hetserve.route.request.check_context). A replica answers to each of its served names (as
`vllm serve --served-model-name NAME...`: the plan's name and the Hugging Face id), lists each
in /v1/models, and names the one asked for in its responses; any other model is vLLM's 404.

Token counts: see hetserve.route.request (the gateway counts the same way). Without `max_tokens`
(or `max_completion_tokens`), completions generate 16 tokens (the OpenAI default vLLM keeps)
and chats DEFAULT_CHAT_TOKENS, within the context left. The emulated model ends its output
(finish_reason "stop") as soon as the request lets it: after `min_tokens` when one is given and
`ignore_eos` is not set; otherwise it runs to `max_tokens` ("length"). So a client sets the
exact output length with `min_tokens` while `max_tokens` stays the loose cap a real client sends
(and that a gateway routes on).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hetserve.emulate.engine import EmulatedEngine, Job, filler
from hetserve.route.request import (
    DEFAULT_COMPLETION_TOKENS,
    MAX_BODY,
    WORDS,
    BadRequest,
    PromptCounter,
    check_context,
    error_body,
    openai_routes,
    positive_int,
    stream_options,
)

DEFAULT_CHAT_TOKENS = 256
BACKLOG = 2048  # connections queued before accept (aiohttp's 128 drops bursts; see gateway)


@dataclass
class Ask:
    """A parsed request."""

    prompt_tokens: int
    output_tokens: int  # what the engine generates
    stopped: bool  # ended before max_tokens (finish_reason "stop", not "length")
    stream: bool
    include_usage: bool
    model: str  # the served name the request asked for (vLLM answers with it)


class UnknownModel(Exception):
    """A request for a model this replica does not serve (vLLM's 404)."""


class ReplicaServer:
    """One replica's HTTP endpoints over its EmulatedEngine: `model` and `aliases` are the
    names it serves (`--served-model-name`), `root` what /v1/models gives as their root (the
    model's Hugging Face id, as vLLM gives the model it loaded)."""

    def __init__(self, engine: EmulatedEngine, model: str, max_model_len: int,
                 counter: PromptCounter = WORDS, aliases: Sequence[str] = (),
                 root: str | None = None) -> None:
        self.engine = engine
        self.model = model
        self.names = tuple(dict.fromkeys((model, *aliases)))
        self.root = root or model
        self.max_model_len = max_model_len
        self.counter = counter
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes(openai_routes(self))

    # ---- parsing --------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("body: expected a JSON object") from None
        if not isinstance(body, dict):
            raise BadRequest("body: expected a JSON object")
        if body.get("model") is not None and body.get("model") not in self.names:
            raise UnknownModel(f"The model `{body.get('model')}` does not exist.")
        return body

    def _ask(self, body: dict, prompt: int, default: int) -> Ask:
        asked = positive_int(body, "max_completion_tokens") or positive_int(body, "max_tokens")
        least = positive_int(body, "min_tokens")
        check_context(prompt, asked, self.max_model_len)
        out = asked if asked is not None else min(default, self.max_model_len - prompt)
        if least is not None and least > out:
            raise BadRequest(f"min_tokens ({least}) must be <= max_tokens ({out})", "min_tokens")
        if prompt + out > self.engine.engine.kv_limit:
            raise BadRequest(f"{prompt + out} tokens exceed the KV cache of "
                             f"{self.engine.dep.label} ({self.engine.engine.kv_limit} tokens)",
                             "max_tokens")
        options = stream_options(body)
        gets = out if least is None or body.get("ignore_eos") else least
        return Ask(prompt, gets, gets < out, bool(body.get("stream")),
                   bool(options.get("include_usage")), body.get("model") or self.model)

    # ---- endpoints ------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=True)

    async def _handle(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await self._body(request)
            if chat:
                ask = self._ask(body, self.counter.chat(body.get("messages")),
                                DEFAULT_CHAT_TOKENS)
            else:
                ask = self._ask(body, self.counter.prompt(body.get("prompt")),
                                DEFAULT_COMPLETION_TOKENS)
        except BadRequest as exc:
            return _error(exc)
        except UnknownModel as exc:
            return web.json_response(error_body(404, str(exc), "model", "NotFoundError"),
                                     status=404)
        return await self._serve(request, ask, chat)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": name, "object": "model", "created": int(time.time()),
            "owned_by": "hetserve", "root": self.root, "max_model_len": self.max_model_len}
            for name in self.names]})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.engine.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---- responses ------------------------------------------------------------------------
    async def _serve(self, request: web.Request, ask: Ask, chat: bool) -> web.StreamResponse:
        job = self.engine.submit(ask.prompt_tokens, ask.output_tokens)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        usage = {"prompt_tokens": ask.prompt_tokens, "completion_tokens": ask.output_tokens,
                 "total_tokens": ask.prompt_tokens + ask.output_tokens}
        finish = "stop" if ask.stopped else "length"
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created, "model": ask.model}
        try:
            if not ask.stream:
                text = "".join([filler(k) async for k in _tokens(job)])
                choice = {"index": 0, "logprobs": None, "finish_reason": finish,
                          "stop_reason": None}
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                return web.json_response({**head, "object": "chat.completion" if chat
                                          else "text_completion", "choices": [choice],
                                          "usage": usage})
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
            await resp.prepare(request)
            tokens = _tokens(job)
            first = await anext(tokens)  # as vLLM, the role comes with the first output
            if chat:
                await _event(resp, {**head, "choices": [{
                    "index": 0, "delta": {"role": "assistant", "content": ""},
                    "logprobs": None, "finish_reason": None}]})
            # every chunk but the last is the same JSON around one filler word (JSON-safe):
            # built once, so a chunk costs a join, not an encoding
            if chat:
                chunk = {**head, "choices": [{"index": 0, "delta": {"content": "\0"},
                                              "logprobs": None, "finish_reason": None}]}
            else:
                chunk = {**head, "choices": [{"index": 0, "text": "\0", "logprobs": None,
                                              "finish_reason": None, "stop_reason": None}]}
            before, after = ("data: " + json.dumps(chunk) + "\n\n").encode().split(b"\\u0000")
            async for k in _chain(first, tokens):
                if k < ask.output_tokens - 1:
                    await resp.write(before + filler(k).encode() + after)
                    continue
                choice = {"index": 0, "logprobs": None, "finish_reason": finish}
                if chat:
                    choice["delta"] = {"content": filler(k)}
                else:
                    choice["text"] = filler(k)
                    choice["stop_reason"] = None
                await _event(resp, {**head, "choices": [choice]})
            if ask.include_usage:
                await _event(resp, {**head, "choices": [], "usage": usage})
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:  # a client that went away (the handler is cancelled) frees its slot
            self.engine.abort(job)


async def _tokens(job: Job):
    while (k := await job.tokens.get()) is not None:
        if k < 0:
            raise RuntimeError("the emulated engine failed (see its log)")
        yield k


async def _chain(first: int, rest):
    yield first
    async for k in rest:
        yield k


async def _event(resp: web.StreamResponse, data: dict) -> None:
    await resp.write(b"data: " + json.dumps(data).encode() + b"\n\n")


def _error(exc: BadRequest) -> web.Response:
    return web.json_response(error_body(400, str(exc), exc.param), status=400)


class Emulator:
    """Replicas of one deployment, each on its own port of 127.0.0.1 (or `host`), serving
    `model` (and `aliases`) with a context of `max_model_len` (default: the model's) within
    what the KV cache holds."""

    def __init__(self, dep, model: str, replicas: int = 1, host: str = "127.0.0.1",
                 ports: Sequence[int] = (0,), kv_tokens: int | None = None,
                 counter: PromptCounter = WORDS, max_model_len: int | None = None,
                 aliases: Sequence[str] = ()) -> None:
        self.dep, self.model, self.host, self.counter = dep, model, host, counter
        self.max_model_len, self.aliases = max_model_len, tuple(aliases)
        self.engines = [EmulatedEngine(dep, model, kv_tokens) for _ in range(replicas)]
        self.ports = list(ports) + [0] * (replicas - len(ports))
        self._runners: list[web.AppRunner] = []
        self.urls: list[str] = []

    async def start(self) -> list[str]:
        max_len = min(self.max_model_len or self.dep.model.max_context,
                      self.engines[0].engine.kv_limit)
        root = self.dep.model.hf_id or self.model
        for engine, port in zip(self.engines, self.ports, strict=True):
            engine.start()
            server = ReplicaServer(engine, self.model, max_len, self.counter, self.aliases, root)
            runner = web.AppRunner(server.app,
                                   access_log=None, handle_signals=False,
                                   handler_cancellation=True,  # a client gone frees its slot
                                   shutdown_timeout=2.0)
            await runner.setup()
            site = web.TCPSite(runner, self.host, port, backlog=BACKLOG)
            await site.start()
            bound = runner.addresses[0][1]
            self._runners.append(runner)
            self.urls.append(f"http://{self.host}:{bound}")
        return self.urls

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        for engine in self.engines:
            await engine.stop()


def group_emulator(plan, group, host: str = "127.0.0.1", counter: PromptCounter = WORDS,
                   replicas: int | None = None) -> Emulator:
    """The emulated replicas of one replica group of a plan (`replicas` of them; default the
    group's), as its engines would run: the group's KV cache, the model's max_model_len and
    every name the plan's engines serve."""
    entry = plan.model_entry(group.model)
    return Emulator(plan.deployment(group), group.model, replicas or group.replicas, host,
                    kv_tokens=group.kv_tokens, counter=counter,
                    max_model_len=entry.context_limit, aliases=entry.served_names[1:])
