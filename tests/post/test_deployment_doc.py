"""docs/deployment.md, run as written: every bash and python block in order, in a directory whose
runs/demo is a tiny chat-capable checkpoint. The server block is started in the background on a free
port (the only change made to the text) and the blocks after it talk to it; a text block is a reply
the previous block must have printed."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the 'hf' extra is not installed")
pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
httpx = pytest.importorskip("httpx", reason="the 'serve' extra is not installed")

from reference_llm.assets import corpus_path  # noqa: E402
from reference_llm.model import ModelConfig, Transformer  # noqa: E402
from reference_llm.tokenizer import EOT, train_tokenizer  # noqa: E402
from reference_llm.tokenizer.chat import CHAT_TOKENS  # noqa: E402
from reference_llm.train.checkpoint import save_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deployment.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
# What a block's output must show, beyond exiting 0: keyed by a piece of the block's text.
EXPECTED = {
    "deploy.quantize --checkpoint": "quantized",
    "deploy.export --checkpoint": "exported LlamaForCausalLM",
    "AutoModelForCausalLM": "LlamaForCausalLM",
    "--import-hf": "imported hf/demo",
    "load_quantized": "['",
    "/v1/chat/completions": '"usage": {"prompt_tokens"',
}


def doc_blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(DOC.read_text(encoding="utf-8"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "the server exited"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)


def test_the_doc_has_the_blocks_this_test_expects() -> None:
    kinds = [kind for kind, _ in doc_blocks()]
    assert kinds.count("bash") >= 5 and kinds.count("python") == 2 and kinds.count("text") == 1
    assert all(kind in ("bash", "python", "text") for kind in kinds), kinds


@pytest.mark.slow
def test_every_command_in_the_deployment_doc_runs(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (the doc's client commands use it)")
    text = corpus_path().read_text(encoding="utf-8")  # every character the doc's prompts use
    tokenizer = train_tokenizer("char", [text], None, special_tokens=(EOT, *CHAT_TOKENS))
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=128))
    save_model(model, tokenizer, tmp_path / "runs" / "demo")
    port = free_port()
    # `python` in the doc is the interpreter running the tests.
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    server: subprocess.Popen | None = None
    output = ""
    try:
        for kind, block in doc_blocks():
            block = block.replace("--port 8000", f"--port {port}").replace("localhost:8000", f"localhost:{port}")
            if kind == "text":
                assert block.strip() in output, f"the doc shows a reply the server did not give:\n{output}"
                continue
            if "reference_llm.deploy.serve" in block:  # runs until stopped: start it and go on
                assert server is None
                server = subprocess.Popen(
                    ["bash", "-c", f"exec {block}"],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                wait_for(f"http://127.0.0.1:{port}/health", server)
                continue
            command = [sys.executable, "-c", block] if kind == "python" else ["bash", "-euo", "pipefail", "-c", block]
            done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{block}\nfailed:\n{done.stderr}"
            assert "Traceback" not in done.stderr and "server_error" not in done.stdout, done.stderr + done.stdout
            for key, words in EXPECTED.items():
                if key in block:
                    assert words in done.stdout, f"{block}\nprinted:\n{done.stdout}"
            output = done.stdout
        assert server is not None, "the doc has no server block"
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
