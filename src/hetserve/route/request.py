"""What a gateway reads of an OpenAI request to route it: the prompt's token count and the
`max_tokens` asked for (a completion without one gets DEFAULT_COMPLETION_TOKENS, as the engines
give it), never the output it will get.

Prompts are counted by a PromptCounter. With a tokenizer file (the `tokenizer.json` of Hugging
Face tokenizers that every model repository ships; read locally, never downloaded) a string
prompt counts as that tokenizer encodes it, special tokens (BOS) included, as vLLM counts a
completion's prompt. Without one, a string has one token per whitespace-separated word (at
least one): English runs about 1.3 tokens a word, so the estimate moves a request across a
prompt range's edge only near it. A list of token ids counts its length either way. A chat
counts its messages' contents (without special tokens) plus CHAT_OVERHEAD tokens per message
for the chat template's role markers. The emulator counts the same way (words, unless given
the same tokenizer), so a gateway in front of emulated engines routes on exact counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hetserve.errors import HetserveError

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


class PromptCounter:
    """Counts prompt tokens: by a tokenizer file when given, else one token per word."""

    def __init__(self, tokenizer: Any = None, name: str = "words") -> None:
        self._tokenizer = tokenizer
        self.name = name

    @classmethod
    def from_file(cls, path: str | Path) -> PromptCounter:
        """A Hugging Face `tokenizer.json`; HetserveError naming the file if it is not one."""
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise HetserveError(f"--tokenizer {path}: needs the tokenizers package (pip "
                                "install 'hetserve[tokenizer]')") from None
        if not Path(path).is_file():
            raise HetserveError(f"--tokenizer {path}: no such file (expected a tokenizer.json "
                                "of Hugging Face tokenizers)")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own Exception for any bad file
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise HetserveError(f"--tokenizer {path}: not a tokenizer.json of Hugging Face "
                                f"tokenizers ({reason})") from None
        return cls(tokenizer, str(path))

    def text(self, text: str, special: bool = True) -> int:
        if self._tokenizer is None:
            return len(text.split())
        return len(self._tokenizer.encode(text, add_special_tokens=special).ids)

    def _content(self, content) -> int:
        if isinstance(content, str):
            return self.text(content, special=False)
        if isinstance(content, list):  # content parts
            return sum(self.text(p.get("text", ""), special=False) for p in content
                       if isinstance(p, dict) and isinstance(p.get("text", ""), str))
        return 0

    def prompt(self, prompt) -> int:
        """A completion's `prompt`: a string, or a list of token ids (one prompt per request)."""
        if isinstance(prompt, str):
            return max(1, self.text(prompt))
        if isinstance(prompt, list) and prompt and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return len(prompt)
        if isinstance(prompt, list) and len(prompt) == 1:
            return self.prompt(prompt[0])
        raise BadRequest("prompt: expected a string, or a list of token ids (one prompt per "
                         "request)", "prompt")

    def chat(self, messages) -> int:
        """A chat's `messages`: their contents plus CHAT_OVERHEAD per message."""
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and "role" in m for m in messages):
            raise BadRequest("messages: expected a non-empty list of {role, content}",
                             "messages")
        return sum(self._content(m.get("content") or "") + CHAT_OVERHEAD for m in messages)


WORDS = PromptCounter()


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


def route_request(body: dict, chat: bool, counter: PromptCounter = WORDS) -> RouteRequest:
    """The routing view of an OpenAI request body (/v1/chat/completions when `chat`); a body
    the engines would refuse is refused here (BadRequest)."""
    stream_options(body)
    tokens = counter.chat(body.get("messages")) if chat else counter.prompt(body.get("prompt"))
    asked = positive_int(body, "max_completion_tokens") or positive_int(body, "max_tokens")
    if asked is None and not chat:
        asked = DEFAULT_COMPLETION_TOKENS
    return RouteRequest(tokens, asked)


def check_context(prompt: int, max_tokens: int | None, max_model_len: int) -> None:
    """Refuse (BadRequest) a request vLLM would refuse for its `--max-model-len`: a prompt that
    leaves no room for an output token, or prompt + max_tokens over the limit. vLLM's words."""
    if prompt >= max_model_len:
        raise BadRequest(f"This model's maximum context length is {max_model_len} tokens. "
                         f"However, your request has {prompt} input tokens. Please reduce the "
                         "length of the input messages.", "prompt")
    if max_tokens is not None and prompt + max_tokens > max_model_len:
        raise BadRequest(f"This model's maximum context length is {max_model_len} tokens. "
                         f"However, you requested {prompt + max_tokens} tokens ({prompt} in the "
                         f"messages, {max_tokens} in the completion). Please reduce the length "
                         "of the messages or completion.", "max_tokens")


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
