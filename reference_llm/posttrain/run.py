"""What every post-training method shares: its config file, the run (model, tokenizer, LoRA, engine,
schedule, checkpoints, resume) and its command line. SFT (`sft.py`) and DPO (`dpo.py`) add their data
and loss on top; the training loop itself is pretraining's (`reference_llm.train.loop.fit`).

A post-training config is a run config (reference_llm/config.py: [model], [data], [train], [eval],
[checkpoint]) plus the method's own section ([sft] or [dpo]) and an optional [lora] section. With an
`init` checkpoint the output goes to `<init run dir>-<method>` unless `checkpoint.dir` says otherwise.

The checkpoint has the pretraining layout (model.safetensors + optimizer.safetensors + state.json +
tokenizer.json) and loads with `reference_llm.train.checkpoint.load_model`. With LoRA, model.safetensors
holds the merged weights and adapter.safetensors the adapters alone. `--resume` continues from the
run's latest checkpoint: optimizer state, step, RNG and the batch sampler's position are restored, so
on a CPU the resumed run logs the same losses as an uninterrupted one. With LoRA the base weights come
again from `init` and only the adapters from the checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from reference_llm.cli import ArgumentParser
from reference_llm.config import SECTIONS, RunConfig, build_section, coerce_value, config_from_dict, read_config_file
from reference_llm.distributed import build_engine
from reference_llm.errors import CheckpointError, ConfigError
from reference_llm.model import Transformer
from reference_llm.posttrain.lora import LoRAConfig, apply_lora, load_lora_weights, merged_state_dict, save_lora
from reference_llm.tokenizer import EOT, train_tokenizer
from reference_llm.tokenizer.chat import CHAT_TOKENS, add_chat_tokens
from reference_llm.train import loop
from reference_llm.train.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
    unique_state_dict,
)
from reference_llm.train.loop import Batch, Forward, LoopState, padded_vocab_size, seed_everything
from reference_llm.train.optim import CosineSchedule, optimizer_factory
from reference_llm.train.perf import resolve_dtype

ADAPTER_FILE = "adapter.safetensors"


# ----------------------------------------------------------------------------------------------------
# Vocabulary growth
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def resize_vocab(model: Transformer, vocab_size: int) -> None:
    """Grow the token embedding (and an untied output head) to `vocab_size` rows, new rows at the mean
    of the old ones (see the module docstring). A tied head follows the embedding."""
    old = model.config.vocab_size
    if vocab_size <= old:
        return
    weight = model.tok_emb.weight
    emb = nn.Embedding(vocab_size, weight.shape[1], device=weight.device, dtype=weight.dtype)
    emb.weight[:old] = weight
    emb.weight[old:] = weight.mean(dim=0)
    model.tok_emb = emb
    if model.config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    else:
        head = model.lm_head.weight
        lm_head = nn.Linear(head.shape[1], vocab_size, bias=False, device=head.device, dtype=head.dtype)
        lm_head.weight[:old] = head
        lm_head.weight[old:] = head.mean(dim=0)
        model.lm_head = lm_head
    model.config = dataclasses.replace(model.config, vocab_size=vocab_size)


# ----------------------------------------------------------------------------------------------------
# Config (shared with DPO)
# ----------------------------------------------------------------------------------------------------

# Fields of the model that decide the weights' names and shapes: a checkpoint must agree on them.
_SHAPE_FIELDS = (
    "n_layer",
    "n_head",
    "n_kv_head",
    "d_model",
    "ffn_hidden",
    "norm",
    "position",
    "mlp",
    "bias",
    "tie_embeddings",
    "block_size",
)


@dataclass
class PostTrainConfig:
    run: RunConfig
    method: Any  # SFTConfig or DPOConfig
    lora: LoRAConfig | None
    model_section: dict[str, Any]  # the [model] keys the file set explicitly (checked against `init`)


def load_posttrain_config(
    path: str | Path | None,
    overrides: Sequence[str],
    section: str,
    method_class: type,
    train_defaults: dict[str, Any],
    init: str | None = None,
) -> PostTrainConfig:
    """Read a post-training TOML file: run config sections + [section] (sft or dpo) + optional [lora].

    `train_defaults` replace pretraining's [train] defaults (fine-tuning runs are shorter and gentler);
    `init`, when given (the CLI's --checkpoint), sets `<section>.init`. With an init checkpoint and no
    `checkpoint.dir`, the output goes next to the init run, in `<init run dir>-<section>`.
    """
    known = {section, "lora", "model", *SECTIONS}
    raw = read_config_file(path, overrides, sections=known)
    if init is not None:
        raw.setdefault(section, {})["init"] = init
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    method = build_section(section, method_class, raw.pop(section, {}))
    lora = _lora_section(raw.pop("lora")) if "lora" in raw else None
    raw["train"] = {**train_defaults, **raw.get("train", {})}
    if method.init:
        init_run = resolve_checkpoint(method.init).parent
        raw.setdefault("checkpoint", {}).setdefault("dir", f"{init_run}-{section}")
    run = config_from_dict(raw)
    if method.init and Path(run.checkpoint.dir).resolve() == init_run.resolve():
        raise ConfigError(
            f"checkpoint.dir={run.checkpoint.dir} is the run directory of {section}.init; keeping "
            f"only checkpoint.keep checkpoints there would delete the ones you start from"
        )
    if run.distributed.strategy != "single":
        raise ConfigError(
            f"distributed.strategy={run.distributed.strategy!r}: {section.upper()} runs on one device; accepted: single"
        )
    if getattr(method, "max_examples", 0) < 0:
        raise ConfigError(f"{section}.max_examples must be >= 0 (0 means all), got {method.max_examples}")
    return PostTrainConfig(run, method, lora, dict(raw.get("model", {})))


def _lora_section(values: Any) -> LoRAConfig | None:
    if not isinstance(values, dict):
        raise ConfigError(f"[lora] must be a table of keys, got {values!r}")
    values = dict(values)
    fields = {f.name: f for f in dataclasses.fields(LoRAConfig)}
    unknown = set(values) - set(fields) - {"enabled"}
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [lora]: {', '.join(sorted(unknown))}; known: enabled, {', '.join(fields)}"
        )
    if not coerce_value("lora.enabled", values.pop("enabled", True), "bool"):
        return None
    targets = values.pop("targets", None)
    if targets is not None and (not isinstance(targets, list) or not all(isinstance(t, str) for t in targets)):
        raise ConfigError(f"lora.targets must be a list of layer-name patterns, got {targets!r}")
    typed: dict[str, Any] = {k: coerce_value(f"lora.{k}", v, fields[k].type) for k, v in values.items()}
    if targets is not None:
        typed["targets"] = tuple(targets)
    return LoRAConfig(**typed)


# ----------------------------------------------------------------------------------------------------
# The run (shared with DPO)
# ----------------------------------------------------------------------------------------------------


class RowSampler:
    """Which rows each micro-batch takes: uniform draws from a seeded generator. Its state goes into
    every checkpoint, so a resumed run draws the rows the uninterrupted one would have."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, n_rows: int, batch: int) -> torch.Tensor:
        return torch.randint(n_rows, (batch,), generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


class PostTrainRun:
    """Model, tokenizer, LoRA, engine, schedule, metrics and checkpoints of an SFT or DPO run.

    `tokenizer_texts` is called only for a random init, to train a tokenizer of kind `data.tokenizer`.
    `keep_reference` keeps a frozen copy of the starting model (DPO's pi_ref) as `self.reference`.
    """

    def __init__(
        self,
        config: PostTrainConfig,
        tokenizer_texts: Callable[[], list[str]],
        keep_reference: bool = False,
        resume: bool = False,
    ) -> None:
        self.config = config
        self.section = type(config.method).__name__.removesuffix("Config").lower()  # "sft" or "dpo"
        run = config.run
        seed_everything(run.train.seed)
        init = config.method.init
        if init:
            model, tokenizer = self._from_checkpoint(init)
        else:
            tokenizer = train_tokenizer(
                run.data.tokenizer, tokenizer_texts(), run.data.vocab_size, special_tokens=(EOT, *CHAT_TOKENS)
            )
            model_config = dataclasses.replace(run.model, vocab_size=padded_vocab_size(tokenizer.vocab_size))
            model_config.check_memory()  # one line, not the OOM killer, for a model too large for this machine
            model = Transformer(model_config)
        self.tokenizer = tokenizer
        run.model = model.config  # what the checkpoint's state.json records
        if run.seq_len > model.config.block_size:  # the file's check ran against [model], not the checkpoint
            raise ConfigError(
                f"train.seq_len={run.train.seq_len} exceeds the model's block_size="
                f"{model.config.block_size}; use at most that (0 means block_size)"
            )
        self.reference = copy.deepcopy(model).eval().requires_grad_(False) if keep_reference else None
        if config.lora is not None:
            apply_lora(model, config.lora)
        self.engine = build_engine(run, model, optimizer_factory(run.train))
        self.device = self.engine.device
        if self.reference is not None:
            self.reference.to(self.device)
        self.dtype = resolve_dtype(run.train.dtype, self.device)
        self.run_dir = Path(run.checkpoint.dir)
        self.pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
        self.rows = RowSampler(run.train.seed)
        self.state = LoopState()
        if resume:
            self._resume()

    @property
    def model(self) -> nn.Module:
        return self.engine.model

    def _from_checkpoint(self, init: str) -> tuple[Transformer, Any]:
        model, tokenizer, stored = load_model(init, "cpu")
        # A preset fixes every shape field; otherwise only the fields the [model] section names are checked.
        given = self.config.model_section
        check = _SHAPE_FIELDS if "preset" in given else [k for k in _SHAPE_FIELDS if k in given]
        wanted = self.config.run.model
        for key in check:
            if getattr(wanted, key) != getattr(stored.model, key):
                raise CheckpointError(
                    f"{self.section}.init={init} has model.{key}={getattr(stored.model, key)!r} "
                    f"but the config's [model] gives {getattr(wanted, key)!r}; remove [model] (the "
                    f"checkpoint fixes the model) or use a matching checkpoint"
                )
        tokenizer = add_chat_tokens(tokenizer)
        resize_vocab(model, padded_vocab_size(tokenizer.vocab_size))
        # Dropout and the attention kernel may differ from pretraining; they change no weight.
        overrides = {
            k: getattr(self.config.run.model, k) for k in ("dropout", "attention") if k in self.config.model_section
        }
        if overrides:
            model.config = dataclasses.replace(model.config, **overrides)
        return model, tokenizer

    def _resume(self) -> None:
        """Continue from the run's latest checkpoint (a fresh start, with a note, when there is none)."""
        found = latest_checkpoint(self.run_dir)
        if found is None:
            print(f"note: --resume but {self.run_dir} has no checkpoint yet; starting from step 0", file=sys.stderr)
            return
        ckpt = load_checkpoint(found)
        state = ckpt.state
        if self.section not in state:
            raise CheckpointError(
                f"{found} was not written by {self.section.upper()} (its state has no "
                f"{self.section} settings); resume it with the command that wrote it"
            )
        if state.get("tokenizer_fingerprint") != self.tokenizer.fingerprint():
            raise CheckpointError(
                f"{found}: written with a different tokenizer than this run builds "
                f"(fingerprints differ); check {self.section}.init and [data]"
            )
        weights = ckpt.weights
        if self.config.lora is not None:
            # The checkpoint's weights are merged; the run trains base (from init) + adapters, so load those.
            load_lora_weights(self.model, ckpt.path / ADAPTER_FILE)
            weights = unique_state_dict(self.model)
        self.engine.load_state(weights, ckpt.optimizer_state)
        self.rows.load_state_dict(state["rows"])
        restore_rng_state(state["rng"])
        self.state = LoopState(step=ckpt.step, elapsed=float(state.get("elapsed_s", 0.0)), saved_step=ckpt.step)

    def note(self, text: str) -> None:
        """A line on stderr before training starts (what data the run trains on, what it skipped)."""
        print(text, file=sys.stderr, flush=True)

    def fit(
        self,
        forward: Forward,
        next_batch: Callable[[], Batch],
        stats: Callable[[], dict[str, float]] | None = None,
        validate: Callable[[], dict[str, float]] | None = None,
        extra_state: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Train for `train.max_steps` optimizer steps (or `train.max_minutes`) with the shared loop
        (`reference_llm.train.loop.fit`): checkpoints at `checkpoint.interval` and at the end.
        `forward(x, y)` returns (anything, loss), like the model; `stats()` adds run-specific numbers
        to each log line; `validate()` runs at `eval.interval` and at the end; `extra_state` goes into
        every checkpoint's state.json. Returns the last logged metrics. MFU counts the model's training
        FLOPs per input token (padding included); DPO's extra forward pass through the reference is not
        counted."""
        run = self.config.run
        total = sum(p.numel() for p in self.model.parameters())  # a tied head once, as num_params counts
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.note(
            f"{total / 1e6:.2f}M params ({trainable / 1e6:.3f}M trained), vocab "
            f"{run.model.vocab_size}; {self.device.type} {str(self.dtype).removeprefix('torch.')}"
        )
        return loop.fit(
            self.engine,
            CosineSchedule.from_config(run.train),
            next_batch,
            forward,
            self.state,
            run,
            self.dtype,
            functools.partial(self.save, extra_state=extra_state),
            validate=validate,
            stats=stats,
        )

    def save(self, metrics: dict[str, Any], extra_state: dict[str, Any] | None = None) -> Path:
        """A checkpoint of the current step in the pretraining layout, resumable; with LoRA, merged
        weights plus adapter.safetensors."""
        lora = self.config.lora
        weights = merged_state_dict(self.model) if lora else unique_state_dict(self.model)
        state = {
            "step": self.state.step,
            "elapsed_s": self.state.elapsed,
            "config": self.config.run.to_dict(),
            "tokenizer_fingerprint": self.tokenizer.fingerprint(),
            "metrics": metrics,
            "lora": dataclasses.asdict(lora) if lora else None,
            "rng": capture_rng_state(),
            "rows": self.rows.state_dict(),
            **(extra_state or {}),
        }
        path = save_checkpoint(
            self.run_dir,
            self.state.step,
            weights,
            self.engine.optimizer_state(),
            state,
            self.tokenizer,
            keep=self.config.run.checkpoint.keep,
        )
        if lora:
            save_lora(self.model, path / ADAPTER_FILE)
        return path


def posttrain_parser(section: str, description: str) -> argparse.ArgumentParser:
    """The command line that `python -m reference_llm.posttrain.sft` and `... .dpo` share."""
    parser = ArgumentParser(prog=f"python -m reference_llm.posttrain.{section}", description=description)
    parser.add_argument("--config", help=f"TOML file: [{section}], optional [lora], and run config sections")
    parser.add_argument("--checkpoint", help=f"the checkpoint to start from (sets {section}.init)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in checkpoint.dir (the same config and overrides)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help=f"config overrides in TOML syntax, e.g. train.max_steps=100 {section}.max_examples=500",
    )
    return parser
