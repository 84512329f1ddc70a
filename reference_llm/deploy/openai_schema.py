"""OpenAI-compatible request bodies: parsed, bounded and validated into typed requests.

Plain Python rather than a schema library, so that every refusal is one line saying what is wrong and
what is accepted, and so that nothing a client sends reaches the model unchecked. Everything here is
free of torch and FastAPI; `reference_llm.deploy.serve` turns an `APIError` into an HTTP reply.

Hostile input is refused before any work, each case with a 4xx and an OpenAI-style error body:

- the body: at most `ServeLimits.max_body_bytes` (413), UTF-8 JSON holding an object, nested at most
  `MAX_JSON_DEPTH` deep (Python's parser and encoder recurse: deeper bodies raise RecursionError), integers
  of at most `MAX_INT_DIGITS` digits (Python refuses to convert integers of more than 4,300 digits, and
  converting long ones costs quadratic time), finite numbers only (no NaN, Infinity or 1e999);
- every number within the range the sampler handles: `max_tokens` 1..limit, `temperature` 0..2,
  `top_p` (0, 1], `top_k` >= 1, `seed` a signed 64-bit integer (what torch's generator and OpenAI take);
- `stop`: up to 4 strings of at most `MAX_STOP_CHARS` characters (the streamer compares every prefix
  of each stop string after every token);
- chat contents must not contain the tokenizer's special tokens as text: the tokenizer would encode
  them as the markers themselves, letting a user forge a system or assistant turn.

Temperature: OpenAI accepts 0 to 2. The sampler divides the logits by the temperature, so values just
above 0 overflow float32 (1e-300 gives inf, then NaN probabilities). Temperatures below
`GREEDY_BELOW` are therefore taken as 0, greedy decoding, which is their limit as the temperature goes
to 0 (vLLM's sampler uses the same cut-off, `_SAMPLING_EPS = 1e-5`). Likewise `top_p` below
`MIN_TOP_P` is raised to it: the sampler compares probabilities with top_p in float32, where 5e-324
rounds to 0 and the nucleus would drop even the most likely token. Any top_p below the most likely
token's probability keeps that token alone, so raising it changes nothing else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reference_llm.errors import ConfigError, ReferenceLLMError

MAX_JSON_DEPTH = 16  # a chat request nests 3 deep ({"messages": [{...}]})
MAX_INT_DIGITS = 20  # an int64 has at most 19 digits; no valid field needs more
MAX_STOP_CHARS = 256
MAX_STOP_STRINGS = 4  # OpenAI's limit
GREEDY_BELOW = 1e-5
MIN_TOP_P = 2.0**-126  # float32's smallest normal number (see the module docstring)
INT64 = (-(1 << 63), (1 << 63) - 1)

_SAMPLING_FIELDS = (
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "n",
    "user",
)
COMPLETION_FIELDS = ("prompt", *_SAMPLING_FIELDS)
CHAT_FIELDS = ("messages", "max_completion_tokens", *_SAMPLING_FIELDS)


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_tokens: int = 512  # most tokens one request may ask for
    max_prompt_tokens: int | None = None  # None: the model's block_size - 1
    default_max_tokens: int = 16  # OpenAI's default for completions

    def __post_init__(self) -> None:
        for key in ("max_body_bytes", "max_tokens", "default_max_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"serve limit {key} must be a positive integer, got {getattr(self, key)}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ConfigError(f"serve limit max_prompt_tokens must be positive, got {self.max_prompt_tokens}")


class APIError(Exception):
    """A request the server refuses: HTTP status, message, the offending parameter, an error code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class SamplingOptions:
    """What both endpoints accept besides the prompt, checked and with defaults filled in."""

    max_tokens: int
    temperature: float  # 0: greedy (temperatures below GREEDY_BELOW arrive here as 0)
    top_p: float
    top_k: int | None
    seed: int | None
    stop: list[str]
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the token counts


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str
    options: SamplingOptions


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]  # roles and contents as sent; reference_llm.tokenizer.chat checks them
    options: SamplingOptions


# ----------------------------------------------------------------------------------------------------
# The body
# ----------------------------------------------------------------------------------------------------


def _show(value: Any, most: int = 60) -> str:
    """A value as JSON for an error message, cut short: the message echoes what the client sent."""
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"


def _nesting_depth(value: Any) -> int:
    """How deep arrays and objects nest in a parsed body, walked without recursion; stops counting
    once past MAX_JSON_DEPTH."""
    deepest, todo = 0, [(value, 1)]
    while todo and deepest <= MAX_JSON_DEPTH:
        item, depth = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            todo += [(child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)]
    return deepest


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise APIError(
            400,
            f"the request body holds an integer of {digits} digits; at most {MAX_INT_DIGITS} are accepted",
            code="invalid_json",
        )
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise APIError(400, f"the number {_show(text)} in the request body is out of range", code="invalid_json")
    return value


def _parse_constant(name: str) -> Any:
    raise APIError(400, f"{name} is not a JSON number; numbers must be finite", code="invalid_json")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object in a request body (already within the size limit), or APIError 400."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(
            400, f"the request body is not UTF-8 ({exc.reason} at byte {exc.start})", code="invalid_json"
        ) from None
    too_deep = f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"
    try:
        body = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except RecursionError:  # the parser recurses per level; Python stops it at its recursion limit
        raise APIError(400, too_deep, code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise APIError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    # Measured after parsing (a scan of the text for brackets must skip strings, which a regular
    # expression does in quadratic time on hostile escapes); later steps such as json.dumps of a value
    # in an error message recurse too.
    if _nesting_depth(body) > MAX_JSON_DEPTH:
        raise APIError(400, too_deep, code="invalid_json")
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return body


# ----------------------------------------------------------------------------------------------------
# Fields
# ----------------------------------------------------------------------------------------------------


def _field(body: dict[str, Any], key: str, types: tuple[type, ...], default: Any, what: str) -> Any:
    value = body.get(key, default)
    if value is None and default is None:
        return None
    # bool is an int in Python; JSON true is not a number here.
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise APIError(400, f"'{key}' must be {what}, got {_show(value)}", param=key)
    return value


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    """A number within [low, high] (or (low, high] with `low_open`)."""
    value = float(_field(body, key, (int, float), default, "a number"))  # ints have <= 20 digits: float() is exact
    if value < low or value > high or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise APIError(400, f"'{key}' must be in {interval}, got {_show(body[key])}", param=key)
    return value


def _sampling_options(
    body: dict[str, Any], allowed: tuple[str, ...], model_name: str, limits: ServeLimits
) -> SamplingOptions:
    """Check the fields every endpoint shares."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise APIError(
            400,
            f"unknown field(s) {', '.join(_show(k) for k in unknown)}; accepted: {', '.join(allowed)}",
            param=unknown[0][:60],
            code="unknown_field",
        )
    if "model" not in body:
        raise APIError(400, f"'model' is required; this server serves {model_name!r}", param="model")
    if body["model"] != model_name:
        raise APIError(
            404,
            f"model {_show(body['model'])} does not exist; this server serves {model_name!r}",
            param="model",
            code="model_not_found",
        )
    max_tokens = _field(body, "max_tokens", (int,), limits.default_max_tokens, "an integer")
    if not 1 <= max_tokens <= limits.max_tokens:
        raise APIError(
            400,
            f"'max_tokens' must be between 1 and {limits.max_tokens} (this server's limit), got {max_tokens}",
            param="max_tokens",
        )
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    top_k = _field(body, "top_k", (int,), None, "a positive integer or null")
    if top_k is not None and top_k < 1:
        raise APIError(400, f"'top_k' must be a positive integer or null, got {top_k}", param="top_k")
    seed = _field(body, "seed", (int,), None, "an integer or null")
    if seed is not None and not INT64[0] <= seed <= INT64[1]:
        raise APIError(
            400, f"'seed' must be a 64-bit signed integer, between {INT64[0]} and {INT64[1]}, got {seed}", param="seed"
        )
    n = _field(body, "n", (int,), 1, "an integer")
    if n != 1:
        raise APIError(400, f"'n' must be 1 (one choice per request), got {n}", param="n")
    _field(body, "user", (str,), None, "a string")
    stream = _field(body, "stream", (bool,), False, "true or false")
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=0.0 if temperature < GREEDY_BELOW else temperature,
        top_p=max(top_p, MIN_TOP_P),
        top_k=top_k,
        seed=seed,
        stop=_stop(body),
        stream=stream,
        include_usage=_include_usage(body, stream),
    )


def _stop(body: dict[str, Any]) -> list[str]:
    stop = _field(body, "stop", (str, list), None, "a string, a list of up to 4 strings, or null")
    stop = [stop] if isinstance(stop, str) else stop or []
    if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop):
        raise APIError(
            400,
            f"'stop' must be a string or a list of up to {MAX_STOP_STRINGS} strings, each of 1 to "
            f"{MAX_STOP_CHARS} characters",
            param="stop",
        )
    return stop


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    options = _field(body, "stream_options", (dict,), None, 'an object such as {"include_usage": true}, or null')
    if options is None:
        return False
    if not stream:  # as OpenAI answers
        raise APIError(400, "'stream_options' is only allowed when 'stream' is true", param="stream_options")
    unknown = sorted(set(options) - {"include_usage"})
    if unknown:
        raise APIError(
            400,
            f"unknown field(s) {', '.join(_show(k) for k in unknown)} in 'stream_options'; accepted: include_usage",
            param="stream_options",
        )
    value = options.get("include_usage", False)
    if not isinstance(value, bool):
        raise APIError(
            400, f"'stream_options.include_usage' must be true or false, got {_show(value)}", param="stream_options"
        )
    return value


# ----------------------------------------------------------------------------------------------------
# The two endpoints
# ----------------------------------------------------------------------------------------------------


def parse_completion(body: dict[str, Any], model_name: str, limits: ServeLimits) -> CompletionRequest:
    """A /v1/completions body as a `CompletionRequest`, or APIError."""
    options = _sampling_options(body, COMPLETION_FIELDS, model_name, limits)
    if "prompt" not in body:
        raise APIError(400, "'prompt' is required", param="prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]  # OpenAI clients may send a batch of one
    if not isinstance(prompt, str):
        raise APIError(400, "'prompt' must be a string (or a list holding one string)", param="prompt")
    return CompletionRequest(prompt=prompt, options=options)


def parse_chat(
    body: dict[str, Any], model_name: str, limits: ServeLimits, special_tokens: Sequence[str] = ()
) -> ChatRequest:
    """A /v1/chat/completions body as a `ChatRequest`, or APIError. `special_tokens`: the tokenizer's
    markers, refused inside contents (see the module docstring)."""
    body = dict(body)
    if "max_completion_tokens" in body:  # the newer name for max_tokens
        if "max_tokens" in body:
            raise APIError(
                400, "give either 'max_tokens' or 'max_completion_tokens', not both", param="max_completion_tokens"
            )
        body["max_tokens"] = body.pop("max_completion_tokens")
    options = _sampling_options(body, CHAT_FIELDS, model_name, limits)
    if "messages" not in body:
        raise APIError(400, "'messages' is required", param="messages")
    from reference_llm.tokenizer.chat import check_conversation

    try:
        messages = check_conversation(body["messages"], "messages", require_assistant=False)
    except ReferenceLLMError as exc:
        raise APIError(400, str(exc), param="messages") from None
    for i, message in enumerate(messages):
        found = [token for token in special_tokens if token in message["content"]]
        if found:
            first = min(found, key=message["content"].find)
            raise APIError(
                400,
                f"messages: message {i} content contains the special token {first!r} as text; "
                f"it would be read as the marker itself, so it is refused",
                param="messages",
            )
    return ChatRequest(messages=messages, options=options)


def check_lengths(prompt_ids: list[int], max_tokens: int, limits: ServeLimits, block_size: int, param: str) -> None:
    """The tokenized prompt against the server's limits and the model's context."""
    most = min(limits.max_prompt_tokens or block_size - 1, block_size - 1)
    if not prompt_ids:
        raise APIError(400, f"'{param}' is empty and the tokenizer has no end-of-text token to start from", param=param)
    if len(prompt_ids) > most:
        raise APIError(
            400,
            f"'{param}' is {len(prompt_ids)} tokens; this server accepts at most {most}",
            param=param,
            code="context_length_exceeded",
        )
    if len(prompt_ids) + max_tokens > block_size:
        raise APIError(
            400,
            f"the model's context is {block_size} tokens, but the prompt ({len(prompt_ids)}) "
            f"plus max_tokens ({max_tokens}) is {len(prompt_ids) + max_tokens}; lower max_tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
