"""LoRA: identical start, adapters-only training, exact merge/unmerge, adapter files, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from reference_llm.errors import CheckpointError, ConfigError
from reference_llm.model import ModelConfig, Transformer
from reference_llm.posttrain.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_lora,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    merged_state_dict,
    save_lora,
    unmerge_lora,
)
from reference_llm.train.checkpoint import unique_state_dict


def make(preset: str = "tiny", seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.preset(preset)).eval()


IDX = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
TARGETS = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(2))


def randomise_adapters(model: nn.Module) -> None:
    """B starts at zero; give it values so that merging has something to merge."""
    torch.manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.05)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
def test_wrapped_model_starts_identical(preset):
    model = make(preset)
    before = model(IDX)[0]
    names = apply_lora(model, LoRAConfig(r=4, alpha=8))
    assert len(names) == 4 * model.config.n_layer  # qkv, proj, fc, proj in every block
    assert torch.equal(model(IDX)[0], before)  # B = 0: the update is exactly zero


def test_only_adapters_get_gradients():
    model = make()
    apply_lora(model, LoRAConfig(r=4, targets=("attn.qkv", "mlp.proj")))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    model.train()
    _, loss = model(IDX, TARGETS)
    loss.backward()
    for name, param in model.named_parameters():
        if name.endswith(".lora_B"):
            assert param.grad is not None and param.grad.abs().sum() > 0
        elif not name.endswith(".lora_A"):  # A's gradient is exactly zero while B is zero
            assert param.grad is None
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_merge_and_unmerge_are_exact():
    model = make()
    apply_lora(model, LoRAConfig(r=4, alpha=8))
    randomise_adapters(model)
    original = {n: t.clone() for n, t in model.state_dict().items()}
    unmerged_out = model(IDX)[0]
    merge_lora(model)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, original["blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(model(IDX)[0], unmerged_out, rtol=0, atol=1e-5)
    unmerge_lora(model)
    assert all(torch.equal(model.state_dict()[n], t) for n, t in original.items())  # bit for bit
    assert torch.equal(model(IDX)[0], unmerged_out)


def test_merged_state_dict_is_a_plain_checkpoint():
    model = make("tiny-gpt2")  # tied embeddings: lm_head.weight appears once, as tok_emb.weight
    apply_lora(model, LoRAConfig(r=2))
    randomise_adapters(model)
    merged = merged_state_dict(model)
    fresh = make("tiny-gpt2", seed=9)
    assert set(merged) == set(unique_state_dict(fresh))
    fresh.load_state_dict(merged, strict=False)
    torch.testing.assert_close(fresh(IDX)[0], model(IDX)[0], rtol=0, atol=1e-5)

    unloaded = merge_and_unload(model)
    assert not any(isinstance(m, LoRALinear) for m in unloaded.modules())
    torch.testing.assert_close(unloaded(IDX)[0], fresh(IDX)[0], rtol=0, atol=1e-6)


def test_adapter_file_holds_only_adapters_and_round_trips(tmp_path):
    model = make()
    apply_lora(model, LoRAConfig(r=3, alpha=6, targets=("blocks.1.attn.*",)))
    randomise_adapters(model)
    path = tmp_path / "adapter.safetensors"
    save_lora(model, path)
    saved = load_file(str(path))
    assert set(saved) == {f"blocks.1.attn.{m}.lora_{x}" for m in ("qkv", "proj") for x in "AB"}

    other = make()  # same base weights (same seed), no adapters yet
    assert load_lora(other, path) == ["blocks.1.attn.qkv", "blocks.1.attn.proj"]
    assert torch.equal(other(IDX)[0], model(IDX)[0])
    assert all(torch.equal(lora_state_dict(other)[k], v) for k, v in saved.items())


def test_bad_targets_and_mismatched_adapters(tmp_path):
    with pytest.raises(ConfigError, match="match no Linear layer"):
        apply_lora(make(), LoRAConfig(targets=("attn.query",)))
    with pytest.raises(ConfigError, match="tied"):
        apply_lora(make("tiny-gpt2"), LoRAConfig(targets=("lm_head",)))
    with pytest.raises(ConfigError, match="lora.r"):
        LoRAConfig(r=0)

    model = make()
    apply_lora(model, LoRAConfig(r=2))
    path = tmp_path / "a.safetensors"
    save_lora(model, path)
    wider = Transformer(ModelConfig.preset("tiny", d_model=128))
    with pytest.raises(CheckpointError, match="shape"):
        load_lora(wider, path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        load_lora(make(), tmp_path / "junk.safetensors")
