"""Generation speed with and without the KV cache.

    python benchmarks/generate.py            # demo preset, block_size 1088, 256 and 1024 new tokens
    python benchmarks/generate.py --quick    # 16 and 64 new tokens: checks that the script runs
    python benchmarks/generate.py --json     # JSON instead of a table

Random weights (speed does not depend on what the weights are), greedy decoding, one prompt of 64
tokens, fp32. Without the cache every step runs the whole sequence again, so its cost per token grows
with the length and the cache's advantage grows with it. Target: >= 5x at 1024 new tokens (printed,
not asserted). The uncached 1024-token run takes minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from rich.console import Console
from rich.table import Table

from reference_llm.deploy.generate import generate
from reference_llm.model import ModelConfig, Transformer

PROMPT_LEN = 64


def time_generation(model: Transformer, prompt: list[int], new_tokens: int, use_cache: bool) -> float:
    """Seconds for one greedy generation of exactly `new_tokens` tokens (no stop tokens)."""
    start = time.perf_counter()
    out = generate(model, [prompt], new_tokens, use_cache=use_cache)
    elapsed = time.perf_counter() - start
    assert len(out[0]) == new_tokens, "generation ended early"  # a broken benchmark, not a user error
    return elapsed


def run(lengths: list[int], preset: str, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = ModelConfig.preset(preset, block_size=PROMPT_LEN + max(lengths))
    model = Transformer(config).eval()
    prompt = torch.randint(config.vocab_size, (PROMPT_LEN,)).tolist()
    generate(model, [prompt], 8)  # warm-up: first calls pay for allocation and kernel selection
    rows = []
    for n in lengths:
        cached = time_generation(model, prompt, n, use_cache=True)
        uncached = time_generation(model, prompt, n, use_cache=False)
        rows.append(
            {
                "new_tokens": n,
                "cached_s": cached,
                "uncached_s": uncached,
                "cached_tokens_per_s": n / cached,
                "uncached_tokens_per_s": n / uncached,
                "speedup": uncached / cached,
            }
        )
    return {
        "preset": preset,
        "block_size": config.block_size,
        "params": model.num_params(),
        "prompt_tokens": PROMPT_LEN,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 and 64 new tokens")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    result = run([16, 64] if args.quick else [256, 1024], args.preset, args.threads)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    table = Table(
        title=f"generation, {result['preset']} preset ({result['params'] / 1e6:.1f}M params), "
        f"prompt {PROMPT_LEN} tokens, fp32, {result['threads']} threads"
    )
    for column in ("new tokens", "KV cache tok/s", "no cache tok/s", "speed-up (target >= 5x at 1024)"):
        table.add_column(column, justify="right")
    for row in result["rows"]:
        table.add_row(
            str(row["new_tokens"]),
            f"{row['cached_tokens_per_s']:,.1f}",
            f"{row['uncached_tokens_per_s']:,.1f}",
            f"{row['speedup']:.1f}x",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
