"""Consolidate a sharded checkpoint: `python -m reference_llm.train.consolidate RUN_DIR [--optimizer]`.

FSDP2 and ZeRO runs write each rank's shard (sharded_checkpoint.py) and never gather the model
while training. Everything in reference_llm reads those checkpoints directly (generation,
evaluation, export, resuming in one process gather them in memory), but a tool that reads
`model.safetensors` itself needs the consolidated file. This writes it, into the step directory,
from the shards: `model.safetensors` (weights by parameter name, tied tensors once) and with
`--optimizer` also `optimizer.safetensors`, exactly as a single-process run would have written them.

    python -m reference_llm.train.consolidate runs/my-run            # the step that `latest` names
    python -m reference_llm.train.consolidate runs/my-run/step_0000500 --optimizer

It needs the memory of the whole model in one process (and of its optimizer state with
`--optimizer`). Files are written under a temporary name and renamed; an existing
model.safetensors is kept unless --force.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safetensors.torch import save_file

from reference_llm.cli import ArgumentParser, run_main
from reference_llm.errors import CheckpointError
from reference_llm.train import files
from reference_llm.train.checkpoint import MODEL_FILE, OPTIMIZER_FILE, flatten_optimizer_state, resolve_checkpoint
from reference_llm.train.sharded_checkpoint import is_sharded, read_full


def consolidate(path: str | Path, optimizer: bool = False, force: bool = False) -> list[Path]:
    """Write model.safetensors (and optimizer.safetensors) into a sharded step directory from its
    shards; returns the files written."""
    step_dir = resolve_checkpoint(path)
    if not is_sharded(step_dir):
        raise CheckpointError(f"{step_dir} is not a sharded checkpoint: its {MODEL_FILE} is already consolidated")
    targets = [step_dir / MODEL_FILE] + ([step_dir / OPTIMIZER_FILE] if optimizer else [])
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise CheckpointError(f"{existing[0]} exists; pass --force to write it again")
    weights, optimizer_state = read_full(step_dir, with_optimizer=optimizer)
    written = [_write(step_dir / MODEL_FILE, weights, {"format": "pt"})]
    if optimizer_state is not None:
        tensors, metadata = flatten_optimizer_state(optimizer_state)
        written.append(_write(step_dir / OPTIMIZER_FILE, tensors, metadata))
    return written


def _write(path: Path, tensors: dict, metadata: dict[str, str]) -> Path:
    tmp = path.with_name(files.temp_name(path.name))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        files.fsync_path(tmp)
        tmp.rename(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path} ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    files.fsync_path(path.parent)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m reference_llm.train.consolidate",
        description="Write model.safetensors (and optimizer.safetensors) into a sharded "
        "checkpoint's step directory, gathered from its shards.",
    )
    parser.add_argument("checkpoint", metavar="RUN_DIR", help="a run directory (its latest step) or a step directory")
    parser.add_argument("--optimizer", action="store_true", help="also write optimizer.safetensors")
    parser.add_argument("--force", action="store_true", help="replace files that exist")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    for path in consolidate(args.checkpoint, optimizer=args.optimizer, force=args.force):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
