"""Notebook cells of the steps that ship the model: quantize, export and deploy. They start from the
tiny pretraining and SFT runs (`cells.pretrained`, `cells.fine_tuned`), made here when missing."""

from __future__ import annotations

from generator.notebooks.cells import Cell, Project, fine_tuned, pretrained


def quantize(p: Project) -> list[Cell]:
    return [
        *pretrained(p),
        p.md("""
            ## Rounding the weights

            Weight-only quantization stores each Linear layer's weights as small integers plus a scale: int8
            with one scale per row (s = max|w| / 127), int4 with one scale per group of 32 weights. Rounding
            to the nearest step moves no weight by more than half a step. The cost shows up as a small change
            in the model's predictions and its held-out loss. Measured here on the tiny pretrained model, whose
            held-out perplexity means something (the roadmap quantizes the fine-tuned model; the command is the
            same):
        """),
        p.code("""
            import copy

            from reference_llm.deploy.quantize import load_quantized, quantize_model
            from reference_llm.evaluate import evaluate_text

            held_out = corpus[-5_000:]
            idx = torch.tensor([tokenizer.encode(held_out)[:64]])
            with torch.no_grad():
                probs = model(idx)[0].softmax(-1)
            results = {"float32": (evaluate_text(model, tokenizer, held_out).perplexity, 0.0, 0.0)}
            quantized = {}
            for bits in (8, 4):
                q = copy.deepcopy(model)
                names = quantize_model(q, bits=bits, group_size=32)
                worst = 0.0
                for name in names:
                    weight = model.get_submodule(name).weight.detach()
                    if bits == 8:
                        half_step = weight.abs().amax(dim=1, keepdim=True) / 127 / 2
                    else:
                        groups = weight.view(weight.size(0), -1, 32)
                        half_step = ((groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / 15 / 2
                                     ).expand_as(groups).reshape_as(weight)
                    moved = (q.get_submodule(name).dequantize() - weight).abs()
                    worst = max(worst, (moved / (half_step + 1e-12)).max().item())
                with torch.no_grad():
                    tv = 0.5 * (q(idx)[0].softmax(-1) - probs).abs().sum(-1).max().item()
                results[f"int{bits}"] = (evaluate_text(q, tokenizer, held_out).perplexity, worst, tv)
                quantized[bits] = q
            for label, (ppl, worst, tv) in results.items():
                print(f"{label:>7}: held-out perplexity {ppl:7.2f} | largest rounding / half step {worst:.3f} | "
                      f"next-token probabilities moved by {tv:.4f} (total variation)")
        """),
        p.md("""
            You should see every rounding within half a step (int4 slightly above 1.0 at most: its scales are
            stored in float16), int8 moving the next-token probabilities by well under 0.01 with a perplexity
            almost equal to float32's, and int4 moving them more (under 0.1) at a slightly higher perplexity.
        """),
        p.md("""
            ## The command

            `python -m reference_llm.deploy.quantize` writes the quantized weights (safetensors) and the
            tokenizer to a folder; `load_quantized` reads them back, with the same outputs as the in-memory
            version above.
        """),
        p.code("""
            INT8 = WORK / "int8"
            run(f"python -m reference_llm.deploy.quantize --checkpoint {PRETRAINED} --out {INT8}")
            loaded, _ = load_quantized(INT8)
            with torch.no_grad():
                same = torch.allclose(loaded(idx)[0], quantized[8](idx)[0], atol=1e-5)
            from reference_llm.train.checkpoint import resolve_checkpoint

            FLOAT = resolve_checkpoint(PRETRAINED) / "model.safetensors"
            sizes = {path: path.stat().st_size for path in (FLOAT, INT8 / "model.safetensors")}
            for path, size in sizes.items():
                print(f"{path}: {size / 1024:,.0f} KiB")
            print("same outputs as the in-memory int8 model:", same)
        """),
        p.md("""
            You should see `quantized N layers to int8`, the int8 file a good deal smaller than the float32 one
            (the embeddings and norms stay in floating point, so less than the 4x of the weights alone), and
            `True`.
        """),
        p.code("""
            # Check: what the notes above say.
            assert results["int8"][1] <= 1.0 + 1e-3 and results["int4"][1] <= 1.02, results
            assert results["int8"][2] < 0.01 and results["int4"][2] < 0.1, results
            assert same
            assert sizes[INT8 / "model.safetensors"] < sizes[FLOAT], sizes
            print("all checks passed")
        """),
    ]


def export(p: Project) -> list[Cell]:
    return [
        *fine_tuned(p),
        p.md("""
            ## Hugging Face layout

            Other tools (transformers, vLLM, llama.cpp's converters, the Hub) read models in the Hugging Face
            transformers layout: `config.json` with the architecture and shape, the weights under HF's names in
            `model.safetensors`, and `tokenizer.json`. A GPT-2-style project exports as `GPT2LMHeadModel`, a
            Llama-style one as `LlamaForCausalLM`.
        """),
        p.code("""
            import json

            from reference_llm.deploy.export import import_hf

            HF = WORK / "hf"
            run(f"python -m reference_llm.deploy.export --checkpoint {SFTED} --out {HF}")
            hf_config = json.loads((HF / "config.json").read_text(encoding="utf-8"))
            print(sorted(p.name for p in HF.iterdir()))
            print({key: hf_config.get(key) for key in ("architectures", "model_type", "vocab_size")})
        """),
        p.md("""
            You should see `config.json`, `model.safetensors` and `tokenizer.json` (with their companion files),
            and the architecture of this project's model family.

            ## Round trip

            Importing the export gives back the same model: identical logits, and a tokenizer that encodes text
            identically. When `transformers` is installed (the `hf` extra), its own loader computes the same
            logits from the files, offline.
        """),
        p.code("""
            import importlib.util

            sft_model, chat, _ = load_model(SFTED)
            again, chat_again = import_hf(HF)
            text = corpus[-2_000:]
            idx = torch.tensor([chat.encode(text)[:48]])
            with torch.no_grad():
                expected = sft_model(idx)[0]
                round_trip_gap = (again.eval()(idx)[0] - expected).abs().max().item()
            print("largest logit difference after export and import:", round_trip_gap)
            print("tokenizer encodes the same:", chat_again.encode(text) == chat.encode(text))
            transformers_gap = None
            if importlib.util.find_spec("transformers") is not None:
                import transformers

                hf_model = transformers.AutoModelForCausalLM.from_pretrained(HF, local_files_only=True).eval()
                with torch.no_grad():
                    transformers_gap = (hf_model(idx).logits - expected).abs().max().item()
                print("largest logit difference, transformers vs reference_llm:", transformers_gap)
            else:
                print("transformers is not installed: pip install 'llmgen[hf]' to compare with it")
        """),
        p.md("""
            You should see a difference of 0.0, `True`, and, with transformers installed, a difference around
            1e-6 (different kernels round differently).
        """),
        p.code("""
            # Check: what the notes above say.
            assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in HF.iterdir()}
            assert round_trip_gap == 0.0 and chat_again.encode(text) == chat.encode(text)
            assert transformers_gap is None or transformers_gap < 1e-4, transformers_gap
            print("all checks passed")
        """),
    ]


def deploy(p: Project) -> list[Cell]:
    return [
        *fine_tuned(p),
        p.md("""
            ## An OpenAI-compatible server

            `python -m reference_llm.deploy.serve` loads a checkpoint and answers `/v1/completions` and
            `/v1/chat/completions` (optionally streamed as server-sent events), so that any OpenAI client can
            talk to it. It listens on the loopback address only, unless `--host` says otherwise. This cell
            starts it in the background on a free port and waits until it answers.
        """),
        p.code('''
            import importlib.util
            import json
            import socket
            import time
            import urllib.error
            import urllib.request

            missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
            if missing:
                raise ModuleNotFoundError(f"the server needs {', '.join(missing)}: pip install 'llmgen[serve]'")
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            command = f"python -m reference_llm.deploy.serve --checkpoint {SFTED} --port {port}"
            print("$", command)
            server = subprocess.Popen([sys.executable, *shlex.split(command)[1:]], cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
            URL = f"http://127.0.0.1:{port}"


            def call(path, body=None):
                """(status, JSON reply) of a GET, or of a POST when `body` is given."""
                data = None if body is None else json.dumps(body).encode()
                request = urllib.request.Request(URL + path, data=data, headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=60) as reply:
                        return reply.status, json.loads(reply.read())
                except urllib.error.HTTPError as error:
                    return error.code, json.loads(error.read())


            for _ in range(600):  # up to a minute: the server imports torch and loads the model first
                if server.poll() is not None:
                    raise RuntimeError("the server stopped:\\n" + server.stdout.read())
                try:
                    status, models = call("/v1/models")
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                raise TimeoutError("the server did not answer within a minute")
            model_name = models["data"][0]["id"]
            print(status, models)
        '''),
        p.md("""
            You should see `200` and the model list: one model, named after the checkpoint's run folder
            (`sft`).

            ## Requests

            A completion with temperature 0 must be exactly what `reference_llm.deploy.generate` gives greedily
            for the same prompt; a chat request is wrapped in the chat template; a request with a misspelt field
            is refused with a 400 that names it, instead of being silently ignored.
        """),
        p.code("""
            from reference_llm.deploy.generate import generate_text

            try:
                status, completion = call("/v1/completions", {"model": model_name, "prompt": "ROMEO:", "max_tokens": 12,
                                                              "temperature": 0})
                print(status, repr(completion["choices"][0]["text"]), completion["usage"])
                chat_status, chat_reply = call("/v1/chat/completions", {
                    "model": model_name, "messages": [{"role": "user", "content": "Who loves Juliet?"}],
                    "max_tokens": 16, "temperature": 0})
                print(chat_status, repr(chat_reply["choices"][0]["message"]["content"]))
                bad_status, bad = call("/v1/completions", {"model": model_name, "prompt": "ROMEO:", "temprature": 0})
                print(bad_status, bad["error"]["message"])
            finally:
                server.terminate()
                server.wait(timeout=30)
            served_model, chat, _ = load_model(SFTED)
            [expected] = generate_text(served_model, chat, ["ROMEO:"], max_new_tokens=12, temperature=0.0)
            print("the same as generate_text:", completion["choices"][0]["text"] == expected)
        """),
        p.md("""
            You should see `200` with a dozen tokens of text and their usage counts, `200` with a chat reply,
            `400` with a message naming `temprature`, and `True`.
        """),
        p.code("""
            # Check: what the notes above say.
            assert status == 200 and chat_status == 200 and model_name == SFTED.name
            assert completion["choices"][0]["text"] == expected
            assert bad_status == 400 and "temprature" in bad["error"]["message"]
            print("all checks passed")
        """),
    ]


STEPS = {"quantize": quantize, "export": export, "deploy": deploy}

# The server needs the serve extra (fastapi, uvicorn): pip install 'llmgen[serve]'.
REQUIRES: dict[str, list[str]] = {"deploy": ["fastapi", "uvicorn"]}
