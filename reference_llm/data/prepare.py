"""`python -m reference_llm.data.prepare`: build the tokenizer and token shards for a corpus, print a report.

    python -m reference_llm.data.prepare --corpus data/shakespeare.txt --tokenizer bpe --vocab-size 1024 \
        --out data/cache
    python -m reference_llm.data.prepare --corpus "data/web/*.jsonl.zst" --text-field content --workers 4
    python -m reference_llm.data.prepare --config configs/train.toml     # its [data], sources and weights

`--out` is the cache directory that training's `data.cache_dir` names: the result lands in a
subdirectory keyed by content and settings, so a later training run with the same settings reuses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from reference_llm.assets import corpus_path
from reference_llm.cli import ArgumentParser, run_main
from reference_llm.config import CHOICES, DataConfig, load_config
from reference_llm.data.build import PreparedData, prepare_data
from reference_llm.data.pipeline import PipelineSettings, setting_keys
from reference_llm.data.sources import FORMATS
from reference_llm.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    defaults = DataConfig()
    parser = ArgumentParser(
        prog="python -m reference_llm.data.prepare",
        description="Clean, filter, deduplicate and PII-scrub a corpus, train a tokenizer on its "
        "train split, and write token shards.",
    )
    parser.add_argument(
        "--corpus",
        metavar="PATH",
        help="a file, a folder or a glob: text (.txt/.md), JSON Lines, JSON arrays, CSV, Parquet, "
        "Arrow or a datasets save_to_disk folder, optionally .gz/.zst (default: the bundled "
        "Shakespeare, or the sources of --config)",
    )
    parser.add_argument(
        "--text-field",
        metavar="NAME",
        help=f"field with the text in JSON/CSV/Parquet/Arrow records; dots reach nested fields "
        f"(default {defaults.text_field})",
    )
    parser.add_argument("--format", choices=FORMATS, help="read every file as this format (default: by file name)")
    parser.add_argument(
        "--config",
        metavar="TOML",
        help="take [data] from a training config (its [[data.sources]], weights, tokenizer, ...); "
        "the options given here override it",
    )
    parser.add_argument(
        "--tokenizer",
        choices=CHOICES["data.tokenizer"],
        help=f"tokenizer kind, trained on the train split (default {defaults.tokenizer})",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        metavar="N",
        help=f"BPE vocabulary size (default {defaults.vocab_size}; char uses the alphabet)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help=f"held out for validation: whole documents, or the end of a single document "
        f"(default {defaults.val_fraction})",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help=f"cache directory; the data goes to a keyed subdirectory (default {defaults.cache_dir})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes that clean and tokenise (default: one per CPU); the result is the same for any number",
    )
    parser.add_argument(
        "--chunk-mb",
        type=float,
        metavar="MB",
        help=f"text in flight at once, which bounds memory (default {defaults.chunk_mb:g})",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        default=None,
        help="leave out and count records that cannot be read (bad JSON, missing field, not "
        "UTF-8, a damaged file) instead of stopping at the first",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="fail if any file of the corpus is not read (unknown format, broken link, ...)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help=f"pipeline setting, value in TOML syntax, e.g. filters.min_chars=50 or "
        f"scrub_pii=false; keys: {', '.join(setting_keys())}",
    )
    parser.add_argument("--json", action="store_true", help="print meta.json instead of the report table")
    return parser


# argparse destination -> DataConfig field, for the options that override --config
_FIELDS = {
    "corpus": "corpus",
    "text_field": "text_field",
    "format": "format",
    "tokenizer": "tokenizer",
    "vocab_size": "vocab_size",
    "val_fraction": "val_fraction",
    "out": "cache_dir",
    "workers": "workers",
    "chunk_mb": "chunk_mb",
    "skip_bad": "skip_bad",
    "strict": "strict",
}


def data_config(args: argparse.Namespace) -> DataConfig:
    """[data] of --config (or the defaults, with the bundled corpus), then the options given."""
    base = load_config(args.config).data if args.config else DataConfig(corpus=str(corpus_path()))
    given = {f: getattr(args, dest) for dest, f in _FIELDS.items() if getattr(args, dest) is not None}
    if "corpus" in given:
        given["sources"] = []  # an explicit corpus replaces the config's sources
    return dataclasses.replace(base, **given)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} must look like KEY=VALUE (e.g. filters.min_chars=50)")
        try:
            out[key.strip()] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(
                f"--set {item!r}: {text.strip()!r} is not a TOML value (numbers, true/false, or a quoted string)"
            ) from None
    return out


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    data_cfg = data_config(args)
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
    formats = Counter(s["format"] + (f"+{s['compression']}" if s["compression"] else "") for s in meta["sources"])
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(formats.items()))
    table.add_row("corpus", f"{len(meta['sources'])} file(s) ({kinds}), {size / 1e6:.2f} MB")
    skipped = report.get("skipped_files", {})
    if skipped:
        table.add_row("not read", "; ".join(f"{reason} {info['count']}" for reason, info in skipped.items()))
    if report.get("bad_records", {}).get("skipped"):
        bad = report["bad_records"]
        table.add_row(
            "bad records",
            f"{bad['skipped']} left out (" + ", ".join(f"{reason} {n}" for reason, n in bad["by_reason"].items()) + ")",
        )
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
    if len(meta["mixture"]) > 1:
        for part in meta["mixture"]:
            weight = "natural size" if part["weight"] is None else f"weight {part['weight']:g}"
            table.add_row(f"source {part['source']}", f"{weight}: {part['share']:.1%} of the train text")
    for split, info in meta["splits"].items():
        table.add_row(
            f"{split} tokens",
            f"{info['tokens']:,} in {len(info['shards'])} shard(s) of {meta['dtype']}, {info['documents']} document(s)",
        )
    return table


if __name__ == "__main__":
    sys.exit(run_main(main))
