"""An OpenAI-compatible inference server for a checkpoint.

    python -m reference_llm.deploy.serve --checkpoint runs/demo [--host 127.0.0.1 --port 8000]

Endpoints (the subset of the OpenAI API that a single local model can honour):

    GET  /health                 {"status": "ok"}
    GET  /v1/models              the one model served
    POST /v1/completions         {"model", "prompt", "max_tokens", "temperature", "top_p", "stream", "stop", ...}
    POST /v1/chat/completions    {"model", "messages", ...}; needs a tokenizer with the chat tokens (SFT)

With "stream": true the reply is server-sent events: `data: {json chunk}\\n\\n` per piece of text, then
`data: [DONE]\\n\\n`; with "stream_options": {"include_usage": true} a last chunk before [DONE] carries
`usage` and no choices, as OpenAI's does. Requests are parsed and checked before any work by
`reference_llm.deploy.openai_schema` (body size, JSON syntax and depth, unknown fields, types and ranges,
the model name, prompt length and `max_tokens` against the server's limits): a bad request gets a 4xx
with an OpenAI-style body, `{"error": {"message", "type", "param", "code"}}`, and the server carries
on. One generation runs at a time (the model is shared); others wait their turn.

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
from reference_llm.deploy.openai_schema import (
    APIError,
    ChatRequest,
    CompletionRequest,
    SamplingOptions,
    ServeLimits,
    check_lengths,
    parse_body,
    parse_chat,
    parse_completion,
)
from reference_llm.errors import ConfigError, ReferenceLLMError

__all__ = ["APIError", "Generator", "ServeLimits", "create_app", "iter_sse", "main"]


# ----------------------------------------------------------------------------------------------------
# Model access: one generation at a time on the shared model
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    stop_ids: list[int]  # end-of-text and end-of-turn; for chat also the role markers (a new turn)
    options: SamplingOptions


class Generator:
    """The model, its tokenizer and a lock: one generation at a time on the shared model."""

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.lock = threading.Lock()

    def run(
        self,
        req: GenerationRequest,
        emit: Callable[[str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> tuple[str, int, str]:
        """Generate; returns (text, completion tokens, finish reason "stop" | "length")."""
        from reference_llm.deploy.generate import TextStream, generate

        opts = req.options
        stream = TextStream(self.tokenizer, opts.stop, emit)
        tokens, stopped = 0, False

        def on_token(_row: int, token: int) -> bool:
            nonlocal tokens, stopped
            tokens += 1
            stopped = stream.push(token)
            # A streaming client that went away ends the generation early.
            return stopped or (cancelled is not None and cancelled.is_set())

        with self.lock:
            generate(
                self.model,
                [req.prompt_ids],
                opts.max_tokens,
                temperature=opts.temperature,
                top_k=opts.top_k,
                top_p=opts.top_p,
                stop_ids=req.stop_ids,
                on_token=on_token,
                seed=opts.seed,
                vocab_size=self.tokenizer.vocab_size,
            )
        stream.close()
        full = tokens >= opts.max_tokens or len(req.prompt_ids) + tokens >= self.model.config.block_size
        return stream.text, tokens, "length" if full and not stopped else "stop"


def completion_request(req: CompletionRequest, tokenizer, limits: ServeLimits, block_size: int) -> GenerationRequest:
    """The prompt's token ids, checked against the limits, and the ids that end a document."""
    from reference_llm.deploy.generate import default_stop_ids

    try:
        ids = tokenizer.encode(req.prompt)
    except ReferenceLLMError as exc:  # e.g. a character a char-level tokenizer has never seen
        raise APIError(400, str(exc), param="prompt") from None
    if not ids and tokenizer.eot_id is not None:
        ids = [tokenizer.eot_id]  # an empty prompt starts a new document
    check_lengths(ids, req.options.max_tokens, limits, block_size, "prompt")
    return GenerationRequest(prompt_ids=ids, stop_ids=default_stop_ids(tokenizer), options=req.options)


def chat_request(req: ChatRequest, tokenizer, limits: ServeLimits, block_size: int) -> GenerationRequest:
    """The conversation through the chat template, checked against the limits; generation stops at the
    end of the assistant's turn or at any role marker (the model starting a new turn)."""
    from reference_llm.deploy.generate import default_stop_ids
    from reference_llm.tokenizer.chat import chat_token_ids, encode_prompt

    try:
        ids = encode_prompt(req.messages, tokenizer)
    except ReferenceLLMError as exc:  # no chat tokens, or a conversation that does not end with the user
        raise APIError(400, str(exc), param="messages") from None
    check_lengths(ids, req.options.max_tokens, limits, block_size, "messages")
    stop_ids = sorted(set(default_stop_ids(tokenizer)) | set(chat_token_ids(tokenizer).values()))
    return GenerationRequest(prompt_ids=ids, stop_ids=stop_ids, options=req.options)


# ----------------------------------------------------------------------------------------------------
# Replies: whole, or streamed as server-sent events
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyShape:
    """How an endpoint words its replies: the choice's content for a whole reply, a streamed piece and
    the last streamed chunk, and the chunk a stream opens with, if any."""

    id_prefix: str
    object: str
    chunk_object: str
    whole: Callable[[str], dict[str, Any]]
    piece: Callable[[str], dict[str, Any]]
    last: dict[str, Any]
    opening: dict[str, Any] | None = None


COMPLETION = ReplyShape(
    "cmpl",
    "text_completion",
    "text_completion",
    whole=lambda text: {"text": text, "logprobs": None},
    piece=lambda text: {"text": text, "logprobs": None},
    last={"text": "", "logprobs": None},
)
CHAT = ReplyShape(
    "chatcmpl",
    "chat.completion",
    "chat.completion.chunk",
    whole=lambda text: {"message": {"role": "assistant", "content": text}},
    piece=lambda text: {"delta": {"content": text}},
    last={"delta": {}},
    opening={"delta": {"role": "assistant", "content": ""}},
)  # OpenAI opens with the role alone


async def reply(generator: Generator, req: GenerationRequest, shape: ReplyShape, model_name: str):
    """The whole reply as a dict, or a StreamingResponse of chunks when the request streams."""
    head = {
        "id": f"{shape.id_prefix}-{uuid.uuid4().hex}",
        "object": shape.object,
        "created": int(time.time()),
        "model": model_name,
    }
    if req.options.stream:
        return stream_reply(generator, req, shape, {**head, "object": shape.chunk_object})
    text, n_tokens, finish = await asyncio.to_thread(generator.run, req)
    return {
        **head,
        "choices": [{"index": 0, **shape.whole(text), "finish_reason": finish}],
        "usage": _usage(len(req.prompt_ids), n_tokens),
    }


def stream_reply(generator: Generator, req: GenerationRequest, shape: ReplyShape, head: dict[str, Any]):
    """Server-sent events: the opening chunk, one chunk per piece of text, a chunk with the finish
    reason, with `include_usage` a chunk with no choices and the token counts, then [DONE]."""
    from fastapi.responses import StreamingResponse

    # With include_usage, OpenAI gives every chunk a "usage" key, null until the last one.
    usage_key = {"usage": None} if req.options.include_usage else {}

    def chunk(content: dict[str, Any], finish: str | None) -> str:
        return _sse({**head, "choices": [{"index": 0, **content, "finish_reason": finish}], **usage_key})

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
            if shape.opening is not None:
                yield chunk(shape.opening, None)
            while True:
                kind, value = await queue.get()
                if kind == "piece":
                    yield chunk(shape.piece(value), None)
                elif kind == "done":
                    yield chunk(shape.last, value[2])
                    if req.options.include_usage:
                        yield _sse({**head, "choices": [], "usage": _usage(len(req.prompt_ids), value[1])})
                    break
                else:
                    yield _sse(APIError(500, f"generation failed: {value}").body())
                    break
            yield "data: [DONE]\n\n"
        finally:
            cancelled.set()  # the client left (or we are done): let the worker stop
            await worker

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def iter_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parse a server-sent-event stream from this server (lines without their newline) into chunks."""
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            return
        yield json.loads(data)


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


async def read_body(request, max_body_bytes: int) -> dict[str, Any]:
    """The request's JSON object; 413 past `max_body_bytes`, whether or not Content-Length says so."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or len(length) > 19 or int(length) > max_body_bytes):
        raise APIError(
            413,
            f"the request body is {length[:40]} bytes; this server accepts at most {max_body_bytes}",
            code="request_too_large",
        )
    # A body sent in chunks has no Content-Length: count while reading, and stop at the limit.
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_body_bytes:
            raise APIError(
                413, f"the request body exceeds this server's limit of {max_body_bytes} bytes", code="request_too_large"
            )
    return parse_body(bytes(raw))


def _add_error_handlers(app) -> None:
    """Every error becomes an OpenAI-style body; a bug is a 500 that names itself, never a traceback."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

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


def create_app(model, tokenizer, model_name: str, limits: ServeLimits | None = None):
    """A FastAPI app serving `model` under the id `model_name`."""
    fastapi = _require_fastapi()
    from fastapi import Request

    limits = limits or ServeLimits()
    block_size = model.config.block_size
    generator = Generator(model.eval(), tokenizer)
    special_tokens = tuple(tokenizer.special_tokens)
    created = int(time.time())
    app = fastapi.FastAPI(title="llmgen server", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "llmgen"}],
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse_completion(await read_body(request, limits.max_body_bytes), model_name, limits)
        return await reply(generator, completion_request(body, tokenizer, limits, block_size), COMPLETION, model_name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = parse_chat(await read_body(request, limits.max_body_bytes), model_name, limits, special_tokens)
        return await reply(generator, chat_request(body, tokenizer, limits, block_size), CHAT, model_name)

    return app


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="python -m reference_llm.deploy.serve",
        description="Serve a checkpoint over an OpenAI-compatible HTTP API.",
    )
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
    limits = ServeLimits(
        max_body_bytes=args.max_body_bytes, max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens
    )
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
