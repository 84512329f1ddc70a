"""The training recipe llmgen plans, rule by rule with its source: tokens per step, the number of steps,
the warm-up, the learning rate, evaluation and checkpoint intervals, and how often a run may repeat its
corpus. `generator.plan` applies these rules; `generator.estimate.invariants` checks a plan against them.

- Tokens per step: DeepSeek LLM (DeepSeek-AI 2024, sec. 3.1, eq. 1) fits the compute-optimal batch as
  B_opt = 0.2920 · C^0.3271 tokens for a compute budget C in FLOPs (their runs spanned about 1e17 to
  3e20 FLOPs; the fit is extended beyond them). Its near-optimal region is wide (their Fig. 3), so a
  batch within BATCH_BAND of B_opt counts as right. C here is the run's training FLOPs, 6·N·D plus
  attention (DeepSeek's M·D counts attention too, though not the output head).
- Steps: at least MIN_STEPS, ten warm-ups (below), so that warming up takes at most a tenth of the run
  and the cosine decay has the rest to work in; a run shorter than that is mostly warm-up.
- Warm-up: WARMUP_FRACTION of the steps (nanoGPT's Shakespeare recipe warms up over 2% of its steps,
  Pythia over 1%, llm.c's GPT-2 over 3.7%), at least MIN_WARMUP and at most MAX_WARMUP (the 2000 of
  LLaMA, TinyLlama and nanoGPT's GPT-2). MIN_WARMUP is 1 / (1 - β2) = 20 steps: AdamW's second-moment
  average with reference_llm's β2 = 0.95 spans about that many steps, and until it has, the first
  full-size updates would rest on a few gradients (Goyal et al. 2017 warm up for the same reason).
- Peak learning rate by parameter count: GPT-3 (Brown et al. 2020, Table 2.1); below 100M, nanoGPT's
  1e-3. The minimum is a tenth of the peak (Chinchilla, Hoffmann et al. 2022, decays 10x).
- Repeating data: up to about MAX_EPOCHS epochs of the same text train nearly as well as fresh text,
  beyond that returns fall fast (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models").
"""

from __future__ import annotations

import math

# ---- Tokens per step -------------------------------------------------------------------------------

BATCH_COEFFICIENT, BATCH_EXPONENT = 0.2920, 0.3271  # DeepSeek LLM, eq. 1: B_opt = 0.2920 · C^0.3271
BATCH_BAND = 4.0  # a batch within 4x of B_opt either way is near-optimal (DeepSeek LLM, Fig. 3)
MAX_BATCH_TOKENS = 16 * 2**20  # Llama 3 405B's final 16M-token batch: no published run used more
CPU_MAX_MICRO_BATCH = 8  # 8 x 256 tokens keeps a demo step well under a second on a laptop CPU


def optimal_batch_tokens(compute: float) -> float:
    """B_opt in tokens per optimizer step for a run of `compute` training FLOPs (DeepSeek LLM, eq. 1),
    at most MAX_BATCH_TOKENS."""
    return min(BATCH_COEFFICIENT * compute**BATCH_EXPONENT, float(MAX_BATCH_TOKENS))


def split_batch(
    target_tokens: float, seq_len: int, devices: int, max_micro_batch: int, at_most: bool = False
) -> tuple[int, int]:
    """(micro_batch, grad_accum) whose tokens per step, micro_batch x grad_accum x devices x seq_len, come
    nearest `target_tokens` (with `at_most`, the largest not above it, but at least one sequence per
    device), the micro-batch a power of two no larger than `max_micro_batch` (what fits in memory): as
    many sequences per pass as the target needs, accumulation for the rest."""
    exact = target_tokens / (seq_len * devices)
    per_device = max(1, math.floor(exact) if at_most else round(exact))
    micro_batch = 2 ** int(math.log2(min(per_device, max(1, max_micro_batch))))
    accum = per_device // micro_batch if at_most else round(per_device / micro_batch)
    return micro_batch, max(1, accum)


# ---- Steps, warm-up, learning rate --------------------------------------------------------------------

ADAM_BETA2 = 0.95  # reference_llm's TrainConfig.beta2
MIN_WARMUP = math.ceil(1 / (1 - ADAM_BETA2))  # 20 steps
MAX_WARMUP = 2000
WARMUP_FRACTION = 0.02
MAX_WARMUP_SHARE = 0.1  # the warm-up takes at most a tenth of the run ...
MIN_STEPS = math.ceil(MIN_WARMUP / MAX_WARMUP_SHARE)  # ... so a run needs at least 200 steps

# Peak learning rate by parameter count (GPT-3, Table 2.1; nanoGPT's 1e-3 below 100M parameters).
LEARNING_RATES = (
    (1e8, 1e-3),
    (2e8, 6e-4),
    (5e8, 3e-4),
    (1e9, 2.5e-4),
    (2e9, 2e-4),
    (4e9, 1.6e-4),
    (1e10, 1.2e-4),
    (2e10, 1e-4),
)
LARGEST_LEARNING_RATE = 6e-5
LEARNING_RATE_BAND = 10.0  # a peak within 10x of the rule either way is a choice, not a mistake


def warmup_steps(max_steps: int) -> int:
    """Warm-up steps for a run of `max_steps` (see the module docstring)."""
    return min(max(round(WARMUP_FRACTION * max_steps), MIN_WARMUP), MAX_WARMUP, max(1, max_steps // 10))


def learning_rate(params: float) -> float:
    for limit, lr in LEARNING_RATES:
        if params < limit:
            return lr
    return LARGEST_LEARNING_RATE


def min_learning_rate(lr: float) -> float:
    """A tenth of the peak, as people write it (6e-05, not 5.9999999999999995e-05)."""
    return significant(lr / 10)


def significant(x: float, digits: int = 3) -> float:
    """`x` rounded to `digits` significant figures, so that Python and Jinja print it as people write it."""
    return float(f"{x:.{digits}g}")


def eval_interval(max_steps: int) -> int:
    """Steps between evaluations: ten over the run, at most every 1000 steps and at least every 10."""
    return min(max(max_steps // 10, 10), 1000)


def checkpoint_interval(max_steps: int) -> int:
    """Steps between checkpoints: four over the run, at least 10 and at most 2000 steps apart."""
    return min(max(max_steps // 4, 10), 2000)


# ---- Data ----------------------------------------------------------------------------------------------

MAX_EPOCHS = 4.0  # Muennighoff et al. 2023
# Bytes of text per token, measured on the bundled Shakespeare corpus (1,121,090 bytes) with the
# tokenizers reference_llm trains (`train_tokenizer(kind, [text], vocab)`): char 1.00; byte-level BPE 512
# 1.93, 1024 2.40, 4096 3.17, 8192 3.44; at 23,221 merged tokens the corpus has nothing left to merge
# (3.70), so a larger vocabulary asked of it stops there. Interpolated in log(vocabulary) between them.
BYTES_PER_TOKEN = ((256, 1.0), (512, 1.925), (1024, 2.396), (4096, 3.169), (8192, 3.439), (23221, 3.696))
# The most distinct tokens a byte-level BPE learns from the bundled corpus (measured as above).
BUNDLED_CORPUS_VOCAB = 23221


def bytes_per_token(tokenizer: str, vocab_size: int) -> float:
    """Bytes of English text per token for `tokenizer` ("char", "bpe", "hf-bpe") with `vocab_size` ids."""
    if tokenizer == "char":
        return 1.0
    points = BYTES_PER_TOKEN
    if vocab_size <= points[0][0]:
        return points[0][1]
    for (v0, b0), (v1, b1) in zip(points, points[1:]):
        if vocab_size <= v1:
            return b0 + (b1 - b0) * math.log(vocab_size / v0) / math.log(v1 / v0)
    return points[-1][1]


def corpus_tokens(n_bytes: float, tokenizer: str, vocab_size: int, val_fraction: float) -> float:
    """Training tokens in a corpus of `n_bytes` bytes: its tokens less the held-out split."""
    return n_bytes / bytes_per_token(tokenizer, vocab_size) * (1.0 - val_fraction)
