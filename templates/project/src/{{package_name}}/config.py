"""The project's run config, and a scaled-down model of the same family for fast tests."""

from __future__ import annotations

import dataclasses

from reference_llm.config import RunConfig, load_config
from reference_llm.model import ModelConfig

from .paths import CONFIG


def load_run_config(*overrides: str) -> RunConfig:
    """configs/train.toml with optional `section.key=value` overrides, validated by reference_llm."""
    return load_config(CONFIG, overrides)


def small_model_config(config: ModelConfig, vocab_size: int, block_size: int = 64) -> ModelConfig:
    """Two layers, 64 wide, but the same family as `config`: norm, positions, MLP, biases, tied head,
    and grouped-query attention when `config` uses it. Small enough to train in seconds on a CPU."""
    n_head = 4
    n_kv_head = 2 if config.n_kv_head < config.n_head else n_head
    return dataclasses.replace(config, vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=n_head,
                               n_kv_head=n_kv_head, d_model=64, ffn_hidden=None, dropout=0.0,
                               name=f"small-{config.name}")
