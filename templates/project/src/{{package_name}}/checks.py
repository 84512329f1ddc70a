"""One quick check per exercise: your part against reference_llm's on one small input. `train.py` and
`sample.py` run it before they use your part, so that a half-finished one is reported rather than trained
with; the checkpoint tests (tests/checkpoints/) check each part thoroughly and say what is wrong.

Each check returns None when the part agrees with the reference, else one line saying how it differs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from reference_llm.deploy.generate import generate as reference_generate
from reference_llm.model import Block as ReferenceBlock
from reference_llm.model import Transformer, rope_tables

from . import attention, block, bpe, sampling, train_step
from .config import load_run_config, small_model_config


def _small_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(small_model_config(load_run_config().model, vocab_size=64, block_size=16))


def _differs(ours: torch.Tensor, reference: torch.Tensor, what: str, tolerance: float = 1e-4) -> str | None:
    if ours.shape != reference.shape:
        return f"{what}: shape {tuple(ours.shape)}, expected {tuple(reference.shape)}"
    error = (ours.float() - reference.float()).abs().max().item()
    return None if error < tolerance else f"{what}: differs from reference_llm's by up to {error:.2e}"


def check_train_merges() -> str | None:
    merges = bpe.train_merges(list(b"aaabdaaabac"), 3)
    expected = [((97, 97), 256), ((256, 97), 257), ((257, 98), 258)]
    return None if merges == expected else f"train_merges: {merges} on 'aaabdaaabac', expected {expected}"


def check_causal_attention() -> str | None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8) for _ in range(3))
    return _differs(attention.causal_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True),
                    "causal_attention")


def check_block() -> str | None:
    torch.manual_seed(0)
    config = small_model_config(load_run_config().model, vocab_size=64, block_size=16)
    reference, ours = ReferenceBlock(config).eval(), block.Block(config).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 6, config.d_model)
    rope = rope_tables(config.head_dim, 6, config.rope_theta) if config.position == "rope" else None
    with torch.no_grad():
        return _differs(ours(x, rope), reference(x, rope), "Block.forward")


def check_train_step() -> str | None:
    ours = _small_model()
    theirs = copy.deepcopy(ours)
    x = torch.randint(0, 64, (2, 8))
    y = torch.randint(0, 64, (2, 8))
    loss = train_step.train_step(ours, torch.optim.AdamW(ours.parameters(), lr=1e-2), x, y, grad_clip=1.0)
    optimizer = torch.optim.AdamW(theirs.parameters(), lr=1e-2)  # the step written out, as reference
    _, expected = theirs(x, y)
    expected.backward()
    torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
    optimizer.step()
    if not isinstance(loss, float):
        return f"train_step returned {type(loss).__name__}, expected the loss as a float (loss.item())"
    if any(p.grad is not None and p.grad.abs().sum() > 0 for p in ours.parameters()):
        return "train_step left gradients in .grad (they would add up over steps)"
    weights = torch.cat([p.detach().flatten() for p in ours.parameters()])
    return _differs(weights, torch.cat([p.detach().flatten() for p in theirs.parameters()]),
                    "train_step: the weights after one step", tolerance=1e-5)


def check_sample_next() -> str | None:
    torch.manual_seed(0)
    logits = torch.randn(3, 10)
    greedy = sampling.sample_next(logits, temperature=0.0)
    if greedy.shape != (3,) or greedy.tolist() != logits.argmax(dim=-1).tolist():
        return f"sample_next at temperature 0: {greedy.tolist()}, expected the largest logits {logits.argmax(-1).tolist()}"
    top1 = sampling.sample_next(logits, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    return None if top1.tolist() == greedy.tolist() else "sample_next with top_k=1 drew outside the top token"


def check_generate() -> str | None:
    model = _small_model().eval()
    prompt = torch.randint(0, 64, (1, 4))
    ours = sampling.generate(model, prompt, max_new_tokens=6, temperature=0.0)
    expected = reference_generate(model, prompt.tolist(), max_new_tokens=6, temperature=0.0)
    got = ours[:, 4:].tolist()
    return None if got == expected else f"generate (greedy): {got}, expected {expected}"


CHECKS: dict[str, Callable[[], str | None]] = {
    "train_merges": check_train_merges,
    "causal_attention": check_causal_attention,
    "Block.forward": check_block,
    "train_step": check_train_step,
    "sample_next": check_sample_next,
    "generate": check_generate,
}
