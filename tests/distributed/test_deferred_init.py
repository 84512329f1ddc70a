"""Deferred initialisation (reference_llm/distributed/deferred_init.py) in one process: a model recorded
on the meta device replays, tensor by tensor, exactly the values that building it on the CPU gives,
and leaves the random generator where the CPU construction leaves it. The 2-process tests (FSDP2 on
the meta device, ZeRO-3 under zero.Init) gather the sharded weights and compare them the same way
(test_engines.py, `init_exact`)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn

from reference_llm.distributed.deferred_init import record_init
from reference_llm.errors import DistributedError
from reference_llm.model import ModelConfig, Transformer

PRESETS = [
    ("tiny", {}),  # llama: RMSNorm (ones), RoPE buffers (computed), SwiGLU, GQA, untied head
    ("tiny-gpt2", {}),  # GPT-2: LayerNorm with biases, learned positions, tied head (initialised twice)
    ("tiny", {"n_kv_head": 1, "bias": True}),
]


def cpu_state(config: ModelConfig, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(seed)
    model = Transformer(config)
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    return tensors, torch.get_rng_state()


@pytest.mark.parametrize(("preset", "overrides"), PRESETS)
def test_replay_equals_the_cpu_construction_bit_for_bit(preset, overrides):
    config = ModelConfig.preset(preset, **overrides)
    expected, rng_after = cpu_state(config, seed=11)
    torch.manual_seed(11)
    model, record = record_init(functools.partial(Transformer, config))
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing was allocated
    assert torch.equal(torch.get_rng_state(), rng_after)  # later draws (dropout, data) are unchanged
    assert set(record.tensors) == set(expected)
    for name, tensor in expected.items():
        value = record.value(name)
        assert value.dtype == tensor.dtype and torch.equal(value, tensor), name
    assert torch.equal(torch.get_rng_state(), rng_after)  # replaying draws nothing from the generator


def test_initialising_shards_in_order_would_not_give_the_same_weights():
    """The control: what a meta-device model usually does (allocate, then run each tensor's init on
    what this rank holds, drawing from the generator in turn) starts from different weights than one
    process does; only the recorded generator states make them equal."""
    config = ModelConfig.preset("tiny-gpt2")
    expected, _ = cpu_state(config, seed=11)
    torch.manual_seed(11)
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device="cpu")
    model.apply(model._init_weights)  # the model's own init, rerun after allocation
    params = dict(model.named_parameters())
    different = [name for name in params if name in expected and not torch.equal(params[name], expected[name])]
    assert "blocks.0.attn.qkv.weight" in different


def test_a_constructor_with_its_own_generator_is_refused():
    class OwnGenerator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.empty(4, 4))
            nn.init.normal_(self.w, generator=torch.Generator().manual_seed(0))

    with pytest.raises(DistributedError, match="own torch.Generator"):
        record_init(OwnGenerator)


def test_a_tensor_changed_after_it_was_read_is_refused():
    """Replay computes a tensor from its inputs' final values; a constructor that reads a tensor and
    then changes it would be replayed wrongly, so it is refused."""

    class ReadThenWrite(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.ones(3))
            self.register_buffer("b", self.a.detach() * 2)
            with torch.no_grad():
                self.a.fill_(5.0)

    _, record = record_init(ReadThenWrite)
    assert torch.equal(record.value("a"), torch.full((3,), 5.0))
    with pytest.raises(DistributedError, match="reads a tensor and later changes it"):
        record.value("b")
