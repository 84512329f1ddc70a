"""`python -m reference_llm.data.prepare`: build the tokenizer and token shards for a corpus, print a report.

    python -m reference_llm.data.prepare --corpus data/shakespeare.txt --tokenizer bpe --vocab-size 1024 \
        --out data/cache

`--out` is the cache directory that training's `data.cache_dir` names: the result lands in a
subdirectory keyed by content and settings, so a later training run with the same settings reuses it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from typing import Any

from rich.console import Console
from rich.table import Table

from reference_llm.assets import corpus_path
from reference_llm.cli import ArgumentParser, run_main
from reference_llm.config import CHOICES, DataConfig
from reference_llm.data.build import PreparedData, prepare_data
from reference_llm.data.pipeline import PipelineSettings, setting_keys
from reference_llm.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    defaults = DataConfig()
    parser = ArgumentParser(prog="python -m reference_llm.data.prepare",
                     description="Clean, filter, deduplicate and PII-scrub a corpus, train a tokenizer on its "
                                 "train split, and write token shards.")
    parser.add_argument("--corpus", default=str(corpus_path()), metavar="PATH",
                        help="a text file (one document) or a folder of .txt/.md files (default: the bundled "
                             "Shakespeare)")
    parser.add_argument("--tokenizer", default=defaults.tokenizer, choices=CHOICES["data.tokenizer"],
                        help=f"tokenizer kind, trained on the train split (default {defaults.tokenizer})")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size, metavar="N",
                        help=f"BPE vocabulary size (default {defaults.vocab_size}; char uses the alphabet)")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction, metavar="F",
                        help=f"held out for validation: whole documents, or the end of a single document "
                             f"(default {defaults.val_fraction})")
    parser.add_argument("--out", default=defaults.cache_dir, metavar="DIR",
                        help=f"cache directory; the data goes to a keyed subdirectory (default {defaults.cache_dir})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help=f"pipeline setting, value in TOML syntax, e.g. filters.min_chars=50 or "
                             f"scrub_pii=false; keys: {', '.join(setting_keys())}")
    parser.add_argument("--json", action="store_true", help="print meta.json instead of the report table")
    return parser


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} must look like KEY=VALUE (e.g. filters.min_chars=50)")
        try:
            out[key.strip()] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"--set {item!r}: {text.strip()!r} is not a TOML value "
                              f"(numbers, true/false, or a quoted string)") from None
    return out


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    data_cfg = DataConfig(corpus=args.corpus, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                          cache_dir=args.out, val_fraction=args.val_fraction)
    settings = PipelineSettings().with_overrides(parse_overrides(args.overrides))
    prepared = prepare_data(data_cfg, settings)
    if args.json:
        print(json.dumps(prepared.meta, indent=1, ensure_ascii=False))
    else:
        Console().print(report_table(prepared))
    return 0


def report_table(prepared: PreparedData) -> Table:
    meta, report = prepared.meta, prepared.meta["report"]
    table = Table(title=f"{prepared.dir} ({'reused' if prepared.from_cache else 'built'})", show_header=False)
    table.add_column("step", style="bold")
    table.add_column("result")
    size = sum(s["bytes"] for s in meta["sources"])
    table.add_row("corpus", f"{len(meta['sources'])} file(s), {size / 1e6:.2f} MB")
    table.add_row("normalised", f"{report['chars_in']:,} -> {report['chars_after_normalising']:,} characters")
    for name, info in report["filters"].items():
        table.add_row(f"filter {name}", f"dropped {info['dropped']}")
    for stage in ("exact_dedup", "near_dedup"):
        if stage in report:
            table.add_row(stage.replace("_", " "), f"dropped {report[stage]['dropped']}")
    if "pii" in report:
        kinds = ", ".join(f"{k} {n}" for k, n in report["pii"]["by_kind"].items()) or "none found"
        table.add_row("PII replaced", f"{report['pii']['replaced']} ({kinds})")
    table.add_row("documents", f"{report['documents_in']} in, {report['documents_out']} kept")
    tok = meta["tokenizer"]
    table.add_row("tokenizer", f"{tok['kind']}, vocab {tok['vocab_size']}, end-of-text id {tok['eot_id']}")
    for split, info in meta["splits"].items():
        table.add_row(f"{split} tokens", f"{info['tokens']:,} in {len(info['shards'])} shard(s) of {meta['dtype']}, "
                                         f"{info['documents']} document(s)")
    return table


if __name__ == "__main__":
    sys.exit(run_main(main))
