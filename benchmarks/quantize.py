"""Weight-only quantization: size on disk, speed and perplexity of int8, int4, NF4 and MXFP4 against float32.

    python benchmarks/quantize.py                          # train a small model for 300 steps, then measure
    python benchmarks/quantize.py --quick                  # a 2-layer model, 20 steps: checks that it runs
    python benchmarks/quantize.py --checkpoint runs/demo   # measure a trained checkpoint instead
    python benchmarks/quantize.py --json                   # JSON instead of a table

Without --checkpoint the script trains a Llama-style model (6 layers, 256 wide, character tokenizer,
context 128) on the bundled Shakespeare corpus with the last 5% of the text held out, in float32 on the
CPU. A model trained for a few hundred steps has weights far from their random start, which is what
quantization error depends on; random weights would understate it.

For each scheme it reports:
- size on disk of `model.safetensors` (embeddings, norms and output head stay float32 in every row, so
  the file shrinks less than the quantized layers do; the "layers" column is the blocks' Linear layers
  alone);
- tokens/s: greedy generation with the KV cache (batch 1, 128 new tokens) and a batched forward pass
  (prefill) over 8 x context tokens. Weight-only schemes dequantize every weight in every forward pass,
  so on a CPU they are slower, not faster: the gain is memory and disk, not speed;
- perplexity and bits per byte on the held-out text, and the change against float32.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import save_file

from reference_llm.assets import corpus_path
from reference_llm.deploy.generate import generate
from reference_llm.deploy.quantize import quantizable_layers, quantize_model, save_quantized
from reference_llm.evaluate.perplexity import evaluate_text
from reference_llm.model import ModelConfig, Transformer
from reference_llm.tokenizer import train_tokenizer

# (label, bits, group size, format); None bits is the float32 model itself.
SCHEMES = [
    ("float32", None, None, "int"),
    ("int8", 8, None, "int"),
    ("int4 g128", 4, 128, "int"),
    ("int4 g64", 4, 64, "int"),
    ("int4 g32", 4, 32, "int"),
    ("nf4 g64", 4, 64, "nf4"),
    ("nf4 g32", 4, 32, "nf4"),
    ("mxfp4 g32", 4, 32, "mxfp4"),
]


def train_small_model(steps: int, small: bool = False, seed: int = 0) -> tuple[Transformer, Any, str]:
    """A character-level Llama-style model trained on the first 95% of the corpus; returns the held-out rest.
    `small` (for --quick): 2 layers, 128 wide instead of 6 layers, 256 wide."""
    text = corpus_path().read_text(encoding="utf-8")
    split = int(len(text) * 0.95)
    tokenizer = train_tokenizer("char", [text], None)
    data = torch.tensor(tokenizer.encode(text[:split]))
    torch.manual_seed(seed)
    width, layers = (128, 2) if small else (256, 6)
    config = ModelConfig.llama_style(
        vocab_size=tokenizer.vocab_size,
        block_size=128,
        n_layer=layers,
        n_head=8,
        n_kv_head=4,
        d_model=width,
        ffn_hidden=3 * width,
        tie_embeddings=True,
    )
    model = Transformer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95))
    T, B = config.block_size, 16
    for step in range(steps):
        for group in optimizer.param_groups:  # linear warm-up over 10% of the steps, then constant
            group["lr"] = 2e-3 * min(1.0, (step + 1) / max(1, steps // 10))
        starts = torch.randint(0, len(data) - T - 1, (B,))
        x = torch.stack([data[s : s + T] for s in starts])
        y = torch.stack([data[s + 1 : s + T + 1] for s in starts])
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model.eval(), tokenizer, text[split:]


def tokens_per_second(model: Transformer, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(generation tok/s, prefill tok/s), best of `repeats` (the machine is shared and noisy)."""
    T = model.config.block_size
    prompt = torch.randint(0, model.config.vocab_size, (16,)).tolist()
    batch = torch.randint(0, model.config.vocab_size, (8, T))
    gen, prefill = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            generate(model, [prompt], min(new_tokens, T - len(prompt)), temperature=0.0)
            gen.append(min(new_tokens, T - len(prompt)) / (time.perf_counter() - start))
            start = time.perf_counter()
            model(batch)
            prefill.append(batch.numel() / (time.perf_counter() - start))
    return max(gen), max(prefill)


def measure(model: Transformer, tokenizer, heldout: str, repeats: int, new_tokens: int) -> list[dict[str, Any]]:
    state = {name: t.clone() for name, t in model.state_dict().items()}
    rows = []
    for label, bits, group, fmt in SCHEMES:
        candidate = Transformer(model.config)
        candidate.load_state_dict(state)
        candidate.eval()
        names = quantizable_layers(candidate)
        with tempfile.TemporaryDirectory() as tmp:
            if bits is None:
                path = Path(tmp) / "model.safetensors"
                weights = {
                    n: t
                    for n, t in candidate.state_dict().items()
                    if not (model.config.tie_embeddings and n == "lm_head.weight")
                }
                save_file({n: t.contiguous() for n, t in weights.items()}, str(path))
            else:
                quantize_model(candidate, bits, group, fmt)
                path = save_quantized(candidate, tmp)
            size = path.stat().st_size
        layers = _layer_bytes(candidate, names)
        gen, prefill = tokens_per_second(candidate, new_tokens, repeats)
        ppl = evaluate_text(candidate, tokenizer, heldout)
        rows.append(
            {
                "scheme": label,
                "file_bytes": size,
                "layer_bytes": layers,
                "generate_tok_s": gen,
                "prefill_tok_s": prefill,
                "perplexity": ppl.perplexity,
                "bits_per_byte": ppl.bits_per_byte,
            }
        )
    base = rows[0]
    for row in rows:
        row["perplexity_change_pct"] = 100 * (row["perplexity"] / base["perplexity"] - 1)
        row["size_ratio"] = row["file_bytes"] / base["file_bytes"]
    return rows


def _layer_bytes(model: Transformer, names: list[str]) -> int:
    """Bytes held by the blocks' Linear layers: weights (or codes and every level of scales) and biases."""
    total = 0
    for name in names:
        module = model.get_submodule(name)
        tensors = list(module.buffers(recurse=False)) + list(module.parameters(recurse=False))
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a trained checkpoint to measure instead of training one")
    parser.add_argument("--text", help="held-out text file (default: the last 5%% of the bundled corpus)")
    parser.add_argument("--steps", type=int, default=300, help="training steps when no checkpoint is given")
    parser.add_argument(
        "--quick", action="store_true", help="a 2-layer model, 20 steps, 2,000 held-out characters, 1 repeat"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.checkpoint:
        from reference_llm.train.checkpoint import load_model

        model, tokenizer, _ = load_model(args.checkpoint, "cpu")
        heldout = corpus_path().read_text(encoding="utf-8")
        heldout = heldout[int(len(heldout) * 0.95) :]
        source = f"checkpoint {args.checkpoint}"
    else:
        steps = 20 if args.quick else args.steps
        model, tokenizer, heldout = train_small_model(steps, small=args.quick)
        source = f"trained here for {steps} steps"
    if args.text:
        heldout = Path(args.text).read_text(encoding="utf-8")
    heldout = heldout[:2000] if args.quick else heldout
    rows = measure(model, tokenizer, heldout, repeats=1 if args.quick else 3, new_tokens=32 if args.quick else 128)
    result = {
        "model": source,
        "params": model.num_params(),
        "config": model.config.to_dict(),
        "heldout_chars": len(heldout),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    table = Table(
        title=f"weight-only quantization: {source}, {result['params'] / 1e6:.2f}M params, "
        f"{len(heldout):,} held-out chars, {result['threads']} threads"
    )
    for column in (
        "scheme",
        "file MiB",
        "x fp32",
        "layers MiB",
        "generate tok/s",
        "prefill tok/s",
        "perplexity",
        "change",
        "bits/byte",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["scheme"],
            f"{row['file_bytes'] / 2**20:.2f}",
            f"{row['size_ratio']:.2f}",
            f"{row['layer_bytes'] / 2**20:.2f}",
            f"{row['generate_tok_s']:,.0f}",
            f"{row['prefill_tok_s']:,.0f}",
            f"{row['perplexity']:.3f}",
            f"{row['perplexity_change_pct']:+.2f}%",
            f"{row['bits_per_byte']:.4f}",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
