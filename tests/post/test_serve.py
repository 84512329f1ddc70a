"""The OpenAI-compatible server, tested over real HTTP on loopback with httpx."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
httpx = pytest.importorskip("httpx", reason="the 'serve' extra is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed")

from reference_llm.assets import corpus_path  # noqa: E402
from reference_llm.deploy.generate import generate  # noqa: E402
from reference_llm.deploy.serve import ServeLimits, create_app, iter_sse  # noqa: E402
from reference_llm.errors import ConfigError  # noqa: E402
from reference_llm.model import ModelConfig, Transformer  # noqa: E402
from reference_llm.tokenizer import EOT, train_tokenizer  # noqa: E402
from reference_llm.tokenizer.chat import CHAT_TOKENS, encode_prompt  # noqa: E402
from reference_llm.train.checkpoint import save_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TEXT = corpus_path().read_text(encoding="utf-8")[:20_000]
LIMITS = ServeLimits(max_body_bytes=4096, max_tokens=24, max_prompt_tokens=110)
NAME = "tiny-test"


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer("char", [TEXT], None, special_tokens=(EOT, *CHAT_TOKENS))


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=128)).eval()


class Server:
    """uvicorn in a thread, bound to a free port on 127.0.0.1."""

    def __init__(self, app) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def client(model, tokenizer) -> Iterator[httpx.Client]:
    server = Server(create_app(model, tokenizer, NAME, LIMITS))
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
    server.stop()


def greedy(model, ids: list[int], n: int, stop_ids: list[int]) -> list[int]:
    return generate(model, [ids], n, temperature=0.0, stop_ids=stop_ids)[0]


def still_serving(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    r = client.post("/v1/completions", json={"model": NAME, "prompt": "ROMEO:", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2


def test_health_and_models(client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [NAME]


def test_completion_is_the_models_greedy_continuation(client, model, tokenizer) -> None:
    r = client.post("/v1/completions", json={"model": NAME, "prompt": "ROMEO:\n", "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == NAME and body["id"].startswith("cmpl-")
    prompt = tokenizer.encode("ROMEO:\n")
    expected = greedy(model, prompt, 12, [tokenizer.eot_id])
    choice = body["choices"][0]
    assert choice["text"] == tokenizer.decode(expected)
    assert choice["finish_reason"] == ("length" if len(expected) == 12 else "stop")
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(expected),
                             "total_tokens": len(prompt) + len(expected)}


def test_stop_strings_cut_the_text(client) -> None:
    full = client.post("/v1/completions", json={"model": NAME, "prompt": "ROMEO:\n", "max_tokens": 12,
                                                 "temperature": 0}).json()["choices"][0]["text"]
    stop = full[3:5]
    cut = client.post("/v1/completions", json={"model": NAME, "prompt": "ROMEO:\n", "max_tokens": 12,
                                                "temperature": 0, "stop": [stop]}).json()["choices"][0]
    assert cut["text"] == full[:full.index(stop)] and cut["finish_reason"] == "stop"


def test_streamed_completion_sends_server_sent_events_that_add_up(client) -> None:
    request = {"model": NAME, "prompt": "HERMIA:\n", "max_tokens": 10, "temperature": 0}
    whole = client.post("/v1/completions", json=request).json()["choices"][0]
    with client.stream("POST", "/v1/completions", json={**request, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    chunks = list(iter_sse(raw.splitlines()))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == whole["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_chat_completion_uses_the_chat_template(client, model, tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}]
    r = client.post("/v1/chat/completions", json={"model": NAME, "messages": messages, "max_tokens": 10,
                                                   "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    prompt = encode_prompt(messages, tokenizer)
    stop_ids = [tokenizer.eot_id, *tokenizer.special_tokens.values()]  # end of text, end of turn, role markers
    expected = tokenizer.decode(greedy(model, prompt, 10, stop_ids))
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert body["usage"]["prompt_tokens"] == len(prompt)

    with client.stream("POST", "/v1/chat/completions", json={"model": NAME, "messages": messages, "max_tokens": 10,
                                                             "temperature": 0, "stream": True}) as s:
        chunks = list(iter_sse(s.iter_lines()))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == body["choices"][0]["finish_reason"]


def test_max_completion_tokens_is_accepted_for_chat(client) -> None:
    r = client.post("/v1/chat/completions", json={"model": NAME, "messages": [{"role": "user", "content": "Hi"}],
                                                   "max_completion_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3


def test_concurrent_requests_are_all_answered(client) -> None:
    def ask(i: int) -> int:
        return client.post("/v1/completions", json={"model": NAME, "prompt": "ROMEO:" * (i + 1), "max_tokens": 5,
                                                    "seed": i}).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(ask, range(4))) == [200] * 4


BAD_REQUESTS = [
    # (path, body bytes, status, words the message must contain, param)
    ("/v1/completions", b"{not json", 400, "not valid JSON", None),
    ("/v1/completions", b"[1, 2]", 400, "must be a JSON object", None),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "x" * 5000}).encode(), 413, "at most 4096", None),
    ("/v1/completions", json.dumps({"model": "gpt-4", "prompt": "x"}).encode(), 404, "does not exist", "model"),
    ("/v1/completions", json.dumps({"prompt": "x"}).encode(), 400, "'model' is required", "model"),
    ("/v1/completions", json.dumps({"model": NAME}).encode(), 400, "'prompt' is required", "prompt"),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "x", "max_tokens": 25}).encode(), 400,
     "between 1 and 24", "max_tokens"),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "x", "max_tokens": 0}).encode(), 400,
     "between 1 and 24", "max_tokens"),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "x", "logprobs": 5}).encode(), 400,
     "unknown field(s) 'logprobs'; accepted: prompt, model", "logprobs"),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "x", "temperature": "hot"}).encode(), 400,
     "'temperature' must be a number", "temperature"),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "x", "stream": "yes"}).encode(), 400,
     "'stream' must be true or false", "stream"),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "x", "n": 2}).encode(), 400, "'n' must be 1", "n"),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": ["a", "b"]}).encode(), 400, "one string", "prompt"),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "ROMEO " * 20}).encode(), 400,
     "120 tokens; this server accepts at most 110", "prompt"),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "a" * 110, "max_tokens": 20}).encode(), 400,
     "context is 128 tokens", "max_tokens"),
    ("/v1/completions", json.dumps({"model": NAME, "prompt": "5 €"}).encode(), 400, "not in the char tokenizer",
     "prompt"),
    ("/v1/chat/completions", json.dumps({"model": NAME, "messages": [{"role": "robot", "content": "hi"}]}).encode(),
     400, "role 'robot'", "messages"),
    ("/v1/chat/completions", json.dumps({"model": NAME, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}).encode(),
     400, "must end with a user message", "messages"),
    ("/v1/chat/completions", json.dumps({"model": NAME, "prompt": "hi"}).encode(), 400, "unknown field(s) 'prompt'",
     "prompt"),
]


@pytest.mark.parametrize("path, body, status, words, param", BAD_REQUESTS,
                         ids=[f"{i}-{b[3]}" for i, b in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(client, path, body, status, words, param) -> None:
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert words in error["message"] and error["param"] == param and error["type"] == "invalid_request_error"
    still_serving(client)


def test_oversize_body_without_content_length_is_cut_off(client) -> None:
    def chunks() -> Iterator[bytes]:  # sent chunked: the server must count as it reads
        yield b'{"model": "tiny-test", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    r = client.post("/v1/completions", content=chunks())
    assert r.status_code == 413 and "limit of 4096 bytes" in r.json()["error"]["message"]
    still_serving(client)


def test_unknown_paths_and_methods(client) -> None:
    r = client.get("/v1/engines")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/completions")
    assert r.status_code == 405 and "Method Not Allowed" in r.json()["error"]["message"]
    still_serving(client)


def test_a_client_that_leaves_mid_stream_does_not_stall_the_server(client) -> None:
    request = {"model": NAME, "prompt": "KING:", "max_tokens": 24, "stream": True}
    with client.stream("POST", "/v1/completions", json=request) as r:
        next(r.iter_lines())  # read one event, then hang up
    still_serving(client)


def test_chat_needs_a_tokenizer_with_chat_tokens(model) -> None:
    plain = train_tokenizer("char", [TEXT], None)
    server = Server(create_app(model, plain, NAME, LIMITS))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = c.post("/v1/chat/completions", json={"model": NAME, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 400 and "no chat tokens" in r.json()["error"]["message"]
            assert c.post("/v1/completions", json={"model": NAME, "prompt": "hi", "max_tokens": 2}).status_code == 200
    finally:
        server.stop()


def test_missing_serve_extra_is_a_clear_error(model, tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # makes `import fastapi` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install 'llmgen\[serve\]'"):
        create_app(model, tokenizer, NAME)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ConfigError, match="max_tokens"):
        ServeLimits(max_tokens=0)


def test_cli_serves_a_checkpoint(tmp_path: Path, model, tokenizer) -> None:
    save_model(model, tokenizer, tmp_path / "demo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reference_llm.deploy.serve", "--checkpoint", str(tmp_path / "demo"),
                             "--port", str(port), "--max-tokens", "8"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "demo"  # the run directory's name
        r = httpx.post(url + "/v1/completions", json={"model": "demo", "prompt": "ROMEO:", "max_tokens": 9})
        assert r.status_code == 400 and "between 1 and 8" in r.json()["error"]["message"]
        r = httpx.post(url + "/v1/completions", json={"model": "demo", "prompt": "ROMEO:", "max_tokens": 8}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 8
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cli_bad_checkpoint_is_one_line_exit_2(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "reference_llm.deploy.serve", "--checkpoint", str(tmp_path / "nope")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: checkpoint not found") and done.stderr.count("\n") == 1
