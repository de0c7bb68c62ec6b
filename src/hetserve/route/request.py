"""What a gateway reads of an OpenAI request to route it: the prompt's token count and the
`max_tokens` asked for (a completion without one gets DEFAULT_COMPLETION_TOKENS, as the engines
give it), never the output it will get.

Prompts are counted without a tokenizer: a string has one token per whitespace-separated word
(at least one), a list of token ids its length; a chat counts its messages' words plus
CHAT_OVERHEAD tokens per message (the chat template's role markers). The emulator counts the
same way, so a gateway in front of emulated engines routes on exact counts; in front of real
engines the count is an estimate (English runs about 1.3 tokens a word), which moves a request
across a prompt range's edge only near it.
"""

from __future__ import annotations

from dataclasses import dataclass

CHAT_OVERHEAD = 4
# a completion without max_tokens stops after 16 tokens (OpenAI's default, which vLLM keeps); a
# chat without one may run to the end of the context
DEFAULT_COMPLETION_TOKENS = 16
MAX_BODY = 8 * 2**20  # bytes of a request body the gateway and the emulator accept


class BadRequest(Exception):
    """A request the OpenAI API refuses (400), naming the parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class RouteRequest:
    input_tokens: int
    max_tokens: int | None = None  # (the output is unknown: a KV-fit check counts this)


def _words(text) -> int:
    if isinstance(text, str):
        return len(text.split())
    if isinstance(text, list):  # content parts
        return sum(_words(p.get("text", "")) for p in text if isinstance(p, dict))
    return 0


def prompt_tokens(prompt) -> int:
    if isinstance(prompt, str):
        return max(1, len(prompt.split()))
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list) and len(prompt) == 1:
        return prompt_tokens(prompt[0])
    raise BadRequest("prompt: expected a string, or a list of token ids (one prompt per "
                     "request)", "prompt")


def chat_tokens(messages) -> int:
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and "role" in m for m in messages):
        raise BadRequest("messages: expected a non-empty list of {role, content}", "messages")
    return sum(_words(m.get("content") or "") + CHAT_OVERHEAD for m in messages)


def positive_int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{name}: expected an integer >= 1, got {value!r}", name)
    return value


def stream_options(body: dict) -> dict:
    options = body.get("stream_options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise BadRequest(f"stream_options: expected an object, got {options!r}",
                         "stream_options")
    return options


def route_request(body: dict, chat: bool) -> RouteRequest:
    """The routing view of an OpenAI request body (/v1/chat/completions when `chat`); a body
    the engines would refuse is refused here (BadRequest)."""
    stream_options(body)
    tokens = chat_tokens(body.get("messages")) if chat else prompt_tokens(body.get("prompt"))
    asked = positive_int(body, "max_completion_tokens") or positive_int(body, "max_tokens")
    if asked is None and not chat:
        asked = DEFAULT_COMPLETION_TOKENS
    return RouteRequest(tokens, asked)


def openai_routes(server) -> list:
    """The OpenAI API surface (aiohttp routes) of a server with these five handlers; the
    emulator and the gateway serve the same one."""
    from aiohttp import web

    return [web.post("/v1/completions", server.completions),
            web.post("/v1/chat/completions", server.chat),
            web.get("/v1/models", server.models),
            web.get("/health", server.health),
            web.get("/metrics", server.metrics)]


def error_body(status: int, message: str, param: str | None = None,
               kind: str = "BadRequestError") -> dict:
    """An OpenAI-style error, as vLLM sends it."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}
