"""An OpenAI-compatible inference server for a checkpoint.

    python -m reference_llm.deploy.serve --checkpoint runs/demo [--host 127.0.0.1 --port 8000]

Endpoints (the subset of the OpenAI API that a single local model can honour):

    GET  /health                 {"status": "ok"}
    GET  /v1/models              the one model served
    POST /v1/completions         {"model", "prompt", "max_tokens", "temperature", "top_p", "stream", "stop", ...}
    POST /v1/chat/completions    {"model", "messages", ...}; needs a tokenizer with the chat tokens (SFT)

With "stream": true the reply is server-sent events: `data: {json chunk}\\n\\n` per piece of text, then
`data: [DONE]\\n\\n`. Requests are checked before any work: body size, JSON syntax, unknown fields (named,
with the accepted ones), types and ranges, the model name, prompt length and `max_tokens` against the
server's limits. A bad request gets a 4xx with an OpenAI-style body, `{"error": {"message", "type",
"param", "code"}}`, and the server carries on. One generation runs at a time (the model is shared);
others wait their turn.

FastAPI and uvicorn are the optional extra `serve` (pip install 'llmgen[serve]'); they are imported only
when a server is built.
"""

import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reference_llm.cli import ArgumentParser
from reference_llm.errors import ConfigError, ReferenceLLMError


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


# ----------------------------------------------------------------------------------------------------
# Request validation (plain Python, so each message says exactly what is wrong and what is accepted)
# ----------------------------------------------------------------------------------------------------

_SAMPLING_FIELDS = ("model", "max_tokens", "temperature", "top_p", "top_k", "stream", "stop", "seed", "n", "user")
COMPLETION_FIELDS = ("prompt", *_SAMPLING_FIELDS)
CHAT_FIELDS = ("messages", "max_completion_tokens", *_SAMPLING_FIELDS)


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float | None
    top_k: int | None
    stop: list[str]
    seed: int | None
    stream: bool
    stop_ids: list[int]  # end-of-text and end-of-turn; for chat also the role markers (a new turn)


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def _field(body: dict[str, Any], key: str, types: tuple[type, ...], default: Any, what: str) -> Any:
    value = body.get(key, default)
    if value is None and default is None:
        return None
    # bool is an int in Python; JSON true is not a number here.
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise APIError(400, f"'{key}' must be {what}, got {json.dumps(value)}", param=key)
    return value


def validate(body: dict[str, Any], allowed: tuple[str, ...], model_name: str, limits: ServeLimits) -> dict[str, Any]:
    """Check the fields every endpoint shares; returns them with defaults filled in."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise APIError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(allowed)}",
                       param=unknown[0], code="unknown_field")
    if "model" not in body:
        raise APIError(400, f"'model' is required; this server serves {model_name!r}", param="model")
    if body["model"] != model_name:
        raise APIError(404, f"model {body['model']!r} does not exist; this server serves {model_name!r}",
                       param="model", code="model_not_found")
    out: dict[str, Any] = {}
    out["max_tokens"] = _field(body, "max_tokens", (int,), limits.default_max_tokens, "an integer")
    if not 1 <= out["max_tokens"] <= limits.max_tokens:
        raise APIError(400, f"'max_tokens' must be between 1 and {limits.max_tokens} (this server's limit), "
                            f"got {out['max_tokens']}", param="max_tokens")
    out["temperature"] = float(_field(body, "temperature", (int, float), 1.0, "a number"))
    if not 0.0 <= out["temperature"] <= 2.0:
        raise APIError(400, f"'temperature' must be between 0 and 2, got {out['temperature']}", param="temperature")
    out["top_p"] = float(_field(body, "top_p", (int, float), 1.0, "a number"))
    if not 0.0 < out["top_p"] <= 1.0:
        raise APIError(400, f"'top_p' must be in (0, 1], got {out['top_p']}", param="top_p")
    out["top_k"] = _field(body, "top_k", (int,), None, "a positive integer or null")
    if out["top_k"] is not None and out["top_k"] < 1:
        raise APIError(400, f"'top_k' must be a positive integer or null, got {out['top_k']}", param="top_k")
    out["stream"] = _field(body, "stream", (bool,), False, "true or false")
    out["seed"] = _field(body, "seed", (int,), None, "an integer or null")
    n = _field(body, "n", (int,), 1, "an integer")
    if n != 1:
        raise APIError(400, f"'n' must be 1 (one choice per request), got {n}", param="n")
    _field(body, "user", (str,), None, "a string")
    stop = _field(body, "stop", (str, list), None, "a string, a list of up to 4 strings, or null")
    stop = [stop] if isinstance(stop, str) else stop or []
    if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "'stop' must be a non-empty string or a list of up to 4 of them", param="stop")
    out["stop"] = stop
    return out


def check_lengths(prompt_ids: list[int], max_tokens: int, limits: ServeLimits, block_size: int, param: str) -> None:
    most = min(limits.max_prompt_tokens or block_size - 1, block_size - 1)
    if not prompt_ids:
        raise APIError(400, f"'{param}' is empty and the tokenizer has no end-of-text token to start from",
                       param=param)
    if len(prompt_ids) > most:
        raise APIError(400, f"'{param}' is {len(prompt_ids)} tokens; this server accepts at most {most}",
                       param=param, code="context_length_exceeded")
    if len(prompt_ids) + max_tokens > block_size:
        raise APIError(400, f"the model's context is {block_size} tokens, but the prompt ({len(prompt_ids)}) "
                            f"plus max_tokens ({max_tokens}) is {len(prompt_ids) + max_tokens}; lower max_tokens",
                       param="max_tokens", code="context_length_exceeded")


# ----------------------------------------------------------------------------------------------------
# Generation, shared by both endpoints
# ----------------------------------------------------------------------------------------------------


class Generator:
    """The model, its tokenizer and a lock: one generation at a time on the shared model."""

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.lock = threading.Lock()

    def run(self, req: GenerationRequest, emit: Callable[[str], None] | None = None,
            cancelled: threading.Event | None = None) -> tuple[str, int, str]:
        """Generate; returns (text, completion tokens, finish reason "stop" | "length")."""
        from reference_llm.deploy.generate import TextStream, generate

        stream = TextStream(self.tokenizer, req.stop, emit)
        state = {"tokens": 0, "stopped": False}

        def on_token(_row: int, token: int) -> bool:
            state["tokens"] += 1
            state["stopped"] = stream.push(token)
            # A streaming client that went away ends the generation early.
            return state["stopped"] or (cancelled is not None and cancelled.is_set())

        with self.lock:
            generate(self.model, [req.prompt_ids], req.max_tokens, temperature=req.temperature, top_k=req.top_k,
                     top_p=req.top_p, stop_ids=req.stop_ids, on_token=on_token, seed=req.seed,
                     vocab_size=self.tokenizer.vocab_size)
        stream.close()
        used = len(req.prompt_ids) + state["tokens"]
        full = state["tokens"] >= req.max_tokens or used >= self.model.config.block_size
        return stream.text, state["tokens"], "length" if full and not state["stopped"] else "stop"


# ----------------------------------------------------------------------------------------------------
# The application
# ----------------------------------------------------------------------------------------------------


def _require_fastapi():
    try:
        import fastapi
        import uvicorn  # noqa: F401  (checked here so that the error comes before any work)
    except ImportError:
        raise ConfigError("serving needs the 'serve' extra: pip install 'llmgen[serve]' (fastapi, uvicorn)") from None
    return fastapi


def create_app(model, tokenizer, model_name: str, limits: ServeLimits | None = None):
    """A FastAPI app serving `model` under the id `model_name`."""
    fastapi = _require_fastapi()
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from reference_llm.deploy.generate import default_stop_ids

    limits = limits or ServeLimits()
    block_size = model.config.block_size
    generator = Generator(model.eval(), tokenizer)
    created = int(time.time())
    app = fastapi.FastAPI(title="llmgen server", docs_url=None, redoc_url=None, openapi_url=None)

    def error_response(exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):  # unknown path, wrong method
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _unexpected(_request, exc):
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}"))

    async def read_body(request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            raise APIError(413, f"the request body is {length} bytes; this server accepts at most "
                                f"{limits.max_body_bytes}", code="request_too_large")
        # A body sent in chunks has no Content-Length: count while reading, and stop at the limit.
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limits.max_body_bytes:
                raise APIError(413, f"the request body exceeds this server's limit of {limits.max_body_bytes} bytes",
                               code="request_too_large")
        return parse_body(bytes(raw))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "llmgen"}]}

    @app.post("/v1/completions")
    async def completions(request: fastapi.Request):
        body = await read_body(request)
        opts = validate(body, COMPLETION_FIELDS, model_name, limits)
        if "prompt" not in body:
            raise APIError(400, "'prompt' is required", param="prompt")
        prompt = body["prompt"]
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]  # OpenAI clients may send a batch of one
        if not isinstance(prompt, str):
            raise APIError(400, "'prompt' must be a string (or a list holding one string)", param="prompt")
        try:
            ids = tokenizer.encode(prompt)
        except ReferenceLLMError as exc:  # e.g. a character a char-level tokenizer has never seen
            raise APIError(400, str(exc), param="prompt") from None
        if not ids and tokenizer.eot_id is not None:
            ids = [tokenizer.eot_id]  # an empty prompt starts a new document
        check_lengths(ids, opts["max_tokens"], limits, block_size, "prompt")
        req = GenerationRequest(prompt_ids=ids, stop_ids=default_stop_ids(tokenizer), **opts)
        ident = f"cmpl-{uuid.uuid4().hex}"
        head = {"id": ident, "object": "text_completion", "created": int(time.time()), "model": model_name}
        if req.stream:
            def chunk(piece: str, finish: str | None) -> dict[str, Any]:
                return {**head, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}]}
            return sse_response(req, chunk, chunk)
        text, n_tokens, finish = await asyncio.to_thread(generator.run, req)
        return {**head, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
                "usage": _usage(len(ids), n_tokens)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: fastapi.Request):
        body = await read_body(request)
        if "max_completion_tokens" in body:  # the newer name for max_tokens
            if "max_tokens" in body:
                raise APIError(400, "give either 'max_tokens' or 'max_completion_tokens', not both",
                               param="max_completion_tokens")
            body["max_tokens"] = body.pop("max_completion_tokens")
        opts = validate(body, CHAT_FIELDS, model_name, limits)
        if "messages" not in body:
            raise APIError(400, "'messages' is required", param="messages")
        from reference_llm.tokenizer.chat import chat_token_ids, encode_prompt

        try:
            ids = encode_prompt(body["messages"], tokenizer)
        except ReferenceLLMError as exc:  # no chat tokens, or a malformed conversation
            raise APIError(400, str(exc), param="messages") from None
        check_lengths(ids, opts["max_tokens"], limits, block_size, "messages")
        stop_ids = sorted(set(default_stop_ids(tokenizer)) | set(chat_token_ids(tokenizer).values()))
        req = GenerationRequest(prompt_ids=ids, stop_ids=stop_ids, **opts)
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        head = {"id": ident, "object": "chat.completion", "created": int(time.time()), "model": model_name}
        if req.stream:
            head["object"] = "chat.completion.chunk"

            def chunk(piece: str, finish: str | None) -> dict[str, Any]:
                delta = {"content": piece} if finish is None else {}
                return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

            def first() -> dict[str, Any]:  # OpenAI opens a chat stream with the role alone
                return {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None}]}
            return sse_response(req, chunk, chunk, opening=first)
        text, n_tokens, finish = await asyncio.to_thread(generator.run, req)
        return {**head, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": finish}], "usage": _usage(len(ids), n_tokens)}

    def sse_response(req: GenerationRequest, piece_chunk, final_chunk, opening=None):
        async def events():
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()
            cancelled = threading.Event()

            def emit(piece: str) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))

            def work() -> None:
                try:
                    result = generator.run(req, emit, cancelled)
                    loop.call_soon_threadsafe(queue.put_nowait, ("done", result))
                except Exception as exc:  # reported in the stream: the status line is already sent
                    loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

            worker = loop.run_in_executor(None, work)
            try:
                if opening is not None:
                    yield _sse(opening())
                while True:
                    kind, value = await queue.get()
                    if kind == "piece":
                        yield _sse(piece_chunk(value, None))
                    elif kind == "done":
                        yield _sse(final_chunk("", value[2]))
                        break
                    else:
                        yield _sse(APIError(500, f"generation failed: {value}").body())
                        break
                yield "data: [DONE]\n\n"
            finally:
                cancelled.set()  # the client left (or we are done): let the worker stop
                await worker

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def iter_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parse a server-sent-event stream from this server (lines without their newline) into chunks."""
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            return
        yield json.loads(data)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m reference_llm.deploy.serve",
                                     description="Serve a checkpoint over an OpenAI-compatible HTTP API.")
    parser.add_argument("--checkpoint", required=True, help="a step directory or a run directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default=None, help="the model id clients send (default: run directory name)")
    parser.add_argument("--max-tokens", type=int, default=ServeLimits.max_tokens, help="most tokens per request")
    parser.add_argument("--max-prompt-tokens", type=int, default=None, help="default: block_size - 1")
    parser.add_argument("--max-body-bytes", type=int, default=ServeLimits.max_body_bytes)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    limits = ServeLimits(max_body_bytes=args.max_body_bytes, max_tokens=args.max_tokens,
                         max_prompt_tokens=args.max_prompt_tokens)
    _require_fastapi()
    import uvicorn

    from reference_llm.train.checkpoint import load_model, resolve_checkpoint

    step_dir = resolve_checkpoint(args.checkpoint)
    model, tokenizer, _ = load_model(step_dir, args.device)
    name = args.model_name or Path(step_dir).resolve().parent.name
    app = create_app(model, tokenizer, name, limits)
    print(f"serving {name!r} from {step_dir} on http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    from reference_llm.cli import run_main

    sys.exit(run_main(main))
