"""Evaluation: perplexity and bits per byte, HumanEval pass@k in a sandbox, multiple choice.

    from reference_llm.evaluate import evaluate_text, load_problems, score_samples, evaluate_multiple_choice

CLI: `python -m reference_llm.evaluate {perplexity,humaneval,mc} --checkpoint DIR ...` (see docs/evaluation.md).
"""

from reference_llm.evaluate.humaneval import (
    HumanEvalReport,
    Problem,
    generate_samples,
    load_problems,
    pass_at_k,
    reference_samples,
    score_samples,
)
from reference_llm.evaluate.multiple_choice import (
    BUILTIN_ITEMS,
    MCItem,
    MCReport,
    choice_logprobs,
    evaluate_multiple_choice,
    load_items,
)
from reference_llm.evaluate.perplexity import PerplexityResult, evaluate_text
from reference_llm.evaluate.sandbox import SandboxLimits, SandboxResult, run_many, run_untrusted

__all__ = [
    "BUILTIN_ITEMS",
    "HumanEvalReport",
    "MCItem",
    "MCReport",
    "PerplexityResult",
    "Problem",
    "SandboxLimits",
    "SandboxResult",
    "choice_logprobs",
    "evaluate_multiple_choice",
    "evaluate_text",
    "generate_samples",
    "load_items",
    "load_problems",
    "pass_at_k",
    "reference_samples",
    "run_many",
    "run_untrusted",
    "score_samples",
]
