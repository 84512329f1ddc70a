"""The lm-evaluation-harness adapter: its log-likelihoods are the project's own, lm-eval's `hf` model on the
export agrees with them, generation stops where asked, and docs/evaluation.md's lm-eval commands run as
written. Offline: the task reads its items from the file beside its YAML."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="the 'lm-eval' extra is not installed")
pytest.importorskip("transformers", reason="the 'hf' extra (transformers) is not installed")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from reference_llm.assets import corpus_path  # noqa: E402
from reference_llm.cli import run_main  # noqa: E402
from reference_llm.deploy.export import export_hf  # noqa: E402
from reference_llm.deploy.generate import generate_text  # noqa: E402
from reference_llm.errors import ConfigError  # noqa: E402
from reference_llm.evaluate.lm_eval_adapter import TASKS_DIR, ReferenceLM, main  # noqa: E402
from reference_llm.evaluate.multiple_choice import (  # noqa: E402
    BUILTIN_ITEMS,
    choice_logprobs,
    evaluate_multiple_choice,
    load_items,
)
from reference_llm.evaluate.perplexity import evaluate_text  # noqa: E402
from reference_llm.model import ModelConfig, Transformer  # noqa: E402
from reference_llm.tokenizer import EOT, train_tokenizer  # noqa: E402
from reference_llm.train.checkpoint import save_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "evaluation.md"
TEXT = corpus_path().read_text(encoding="utf-8")
TASK = "reference_llm_mc"
BLOCK = 64


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny Llama-style character model, weights moved far from their initialisation so that the
    choices' log-likelihoods differ, saved as a checkpoint and exported to the Hugging Face layout."""
    tokenizer = train_tokenizer("char", [TEXT], None, special_tokens=(EOT,))
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig.for_arch(
            "llama", vocab_size=tokenizer.vocab_size, block_size=BLOCK, n_layer=2, n_head=4, d_model=64
        )
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    root = tmp_path_factory.mktemp("lm_eval")
    save_model(model, tokenizer, root / "run")
    export_hf(model, tokenizer, root / "hf")
    return {"model": model, "tokenizer": tokenizer, "run": root / "run", "hf": root / "hf"}


def evaluate(model: str, model_args: dict) -> dict:
    # Without lm-eval's own task directory: indexing its thousands of YAML files takes 10-30 s.
    tasks = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[TASK],
        device="cpu",
        batch_size=5,
        task_manager=tasks,
        log_samples=True,
    )


def per_item_logprobs(out: dict) -> list[list[float]]:
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    return [[logprob for logprob, _ in s["filtered_resps"]] for s in samples]


def requests(kind: str, *args: tuple) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_the_task_holds_the_builtin_items() -> None:
    assert load_items(TASKS_DIR / f"{TASK}.jsonl") == list(BUILTIN_ITEMS)


def test_the_task_scores_what_the_projects_own_evaluation_scores(run: dict) -> None:
    model, tokenizer = run["model"], run["tokenizer"]
    out = evaluate("reference_llm", {"checkpoint": str(run["run"])})
    ours = [
        [logprob for logprob, _ in choice_logprobs(model, tokenizer, item.context, item.choices)]
        for item in BUILTIN_ITEMS
    ]
    theirs = per_item_logprobs(out)
    assert len(theirs) == len(ours) == len(BUILTIN_ITEMS)
    assert max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y)) <= 1e-5
    spread = [max(x) - min(x) for x in ours]
    assert min(spread) > 0.1  # the choices are told apart: an argmax, not a tie, decides each item
    results = out["results"][TASK]
    assert results["acc,none"] == evaluate_multiple_choice(model, tokenizer, BUILTIN_ITEMS, "none").accuracy
    assert results["acc_norm,none"] == evaluate_multiple_choice(model, tokenizer, BUILTIN_ITEMS, "chars").accuracy


def test_lm_evals_hf_model_on_the_export_gives_the_same_numbers(run: dict) -> None:
    ours = evaluate("reference_llm", {"checkpoint": str(run["run"])})
    hf = evaluate("hf", {"pretrained": str(run["hf"]), "add_bos_token": True, "dtype": "float32"})
    a, b = per_item_logprobs(ours), per_item_logprobs(hf)
    assert max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b)) <= 1e-4
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"][TASK][metric] == hf["results"][TASK][metric]
    # Negative control: without add_bos_token the hf model sees no <|endoftext|> first, and disagrees.
    from lm_eval.models.huggingface import HFLM

    plain = HFLM(pretrained=str(run["hf"]), dtype="float32", device="cpu", batch_size=8)
    pairs = [(item.context, choice) for item in BUILTIN_ITEMS for choice in item.choices]
    without = [logprob for logprob, _ in plain.loglikelihood(requests("loglikelihood", *pairs))]
    assert max(abs(x - y) for x, y in zip(sum(a, []), without)) > 0.1


def test_a_bpe_checkpoint_scores_as_choice_logprobs(tmp_path: Path) -> None:
    """Context and choice are tokenized separately, as the project does, whatever the tokenizer."""
    tokenizer = train_tokenizer("bpe", [TEXT[:30_000]], 300, special_tokens=(EOT,))
    torch.manual_seed(1)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=BLOCK)).eval()
    save_model(model, tokenizer, tmp_path / "run")
    lm = ReferenceLM(checkpoint=str(tmp_path / "run"), batch_size=7, device="cpu")
    pairs = [(item.context, choice) for item in BUILTIN_ITEMS for choice in item.choices]
    theirs = [logprob for logprob, _ in lm.loglikelihood(requests("loglikelihood", *pairs))]
    ours = [
        logprob
        for item in BUILTIN_ITEMS
        for logprob, _ in choice_logprobs(model, tokenizer, item.context, item.choices)
    ]
    assert theirs == pytest.approx(ours, abs=1e-5)


def test_loglikelihood_rolling_is_evaluate_text_and_lm_evals_hf_rolling(run: dict) -> None:
    model, tokenizer = run["model"], run["tokenizer"]
    # Three full windows (the eot predicts the first character, so 3·BLOCK targets), one short text, and
    # one whose last window is partial, where lm-eval's windows keep a full context and ours is compared
    # with lm-eval's hf model instead.
    full, short, ragged = TEXT[: 3 * BLOCK], TEXT[500:540], TEXT[1000 : 1000 + 2 * BLOCK + 17]
    texts = (full, short, ragged)
    lm = ReferenceLM(checkpoint=str(run["run"]), batch_size=3, device="cpu")
    rolled = lm.loglikelihood_rolling(requests("loglikelihood_rolling", *[(t,) for t in texts]))
    for text, logprob in zip((full, short), rolled):
        assert logprob == pytest.approx(-evaluate_text(model, tokenizer, text).nats, rel=1e-6)  # float32 sums
    assert ReferenceLM(checkpoint=str(run["run"]), batch_size=1, device="cpu").loglikelihood_rolling(
        requests("loglikelihood_rolling", (ragged,))
    ) == pytest.approx([rolled[2]], abs=1e-4)
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=str(run["hf"]), dtype="float32", device="cpu", batch_size=2)
    assert hf.loglikelihood_rolling(requests("loglikelihood_rolling", *[(t,) for t in texts])) == pytest.approx(
        rolled, abs=1e-3
    )


def test_loglikelihood_flags_greedy_continuations_and_keeps_the_end_of_long_contexts(run: dict) -> None:
    model, tokenizer = run["model"], run["tokenizer"]
    lm = ReferenceLM(checkpoint=str(run["run"]), batch_size=2, device="cpu")
    context = "ROMEO:\nI pray"
    greedy = generate_text(model, tokenizer, [[tokenizer.eot_id, *tokenizer.encode(context)]], 3, stop_ids=[])[0]
    long_context = TEXT[:300]  # longer than the window: its last tokens are kept
    not_greedy = greedy[:-1] + ("a" if greedy[-1] != "a" else "b")
    results = lm.loglikelihood(
        requests("loglikelihood", (context, greedy), (context, not_greedy), (long_context, " the"))
    )
    assert results[0][1] is True and results[1][1] is False
    ids = tokenizer.encode(long_context + " the")[-(BLOCK + 1) :]
    logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0][0], dim=-1)
    expected = sum(logp[BLOCK - 4 + i, ids[BLOCK - 3 + i]].item() for i in range(4))
    assert results[2][0] == pytest.approx(expected, abs=1e-4)


def test_generate_until_stops_at_the_until_strings(run: dict) -> None:
    model, tokenizer = run["model"], run["tokenizer"]
    prompts = ["ROMEO:\n", "JULIET:\nO", "All the world's", "What"]
    lm = ReferenceLM(checkpoint=str(run["run"]), batch_size=3, device="cpu")
    free = lm.generate_until(requests("generate_until", *[(p, {"until": [], "max_gen_toks": 30}) for p in prompts]))
    expected = generate_text(model, tokenizer, [[tokenizer.eot_id, *tokenizer.encode(p)] for p in prompts], 30)
    assert free == expected and all(0 < len(text) <= 30 for text in free)  # one character per token
    stops = [text[12:14] for text in free]
    cut = ReferenceLM(checkpoint=str(run["run"]), batch_size=1, device="cpu").generate_until(
        requests("generate_until", *[(p, {"until": [s, "never"], "max_gen_toks": 30}) for p, s in zip(prompts, stops)])
    )
    assert cut == [text[: text.find(stop)] for text, stop in zip(free, stops)]
    assert all(len(c) <= 12 < len(f) for c, f in zip(cut, free))


def test_bad_model_arguments_are_named(run: dict) -> None:
    with pytest.raises(ConfigError, match="checkpiont"):
        ReferenceLM(checkpiont=str(run["run"]))
    with pytest.raises(ConfigError, match="batch_size"):
        ReferenceLM(checkpoint=str(run["run"]), batch_size="auto")
    lm = ReferenceLM(checkpoint=str(run["run"]), device="cpu")
    with pytest.raises(ConfigError, match="num_beams"):
        lm.generate_until(requests("generate_until", ("a", {"until": [], "num_beams": 4})))


@pytest.mark.slow  # lm-eval's command line indexes its own task directory first: 10-30 s
def test_a_missing_checkpoint_is_one_line_on_the_command_line(
    run: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main hands lm-eval its command line there
    code = run_main(
        main,
        [
            "--model",
            "reference_llm",
            "--model_args",
            f"checkpoint={run['run']}/missing",
            "--tasks",
            TASK,
            "--device",
            "cpu",
        ],
    )
    err = capsys.readouterr().err
    assert code == 2 and "error: checkpoint not found" in err and "Traceback" not in err


def doc_section() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("## lm-evaluation-harness")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def table_metrics(stdout: str) -> dict[str, float]:
    """{"acc": value, "acc_norm": value} from lm-eval's results table."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"\|(acc(?:_norm)?)\s*\|[^|]*\|\s*([0-9.]+)\|", stdout)}


@pytest.mark.slow
def test_the_lm_eval_commands_in_the_evaluation_doc_run_as_written(run: dict, tmp_path: Path) -> None:
    """Each bash and python block of the doc's lm-eval section, in a directory whose runs/demo is the
    tiny checkpoint; both command-line paths print the figures of the project's own evaluation."""
    save_model(run["model"], run["tokenizer"], tmp_path / "runs" / "demo")
    blocks = re.findall(r"^```(bash|python)\n(.*?)^```$", doc_section(), re.DOTALL | re.MULTILINE)
    assert [kind for kind, _ in blocks] == ["bash", "python"]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
    }
    outputs = []
    for kind, block in blocks:
        command = [sys.executable, "-c", block] if kind == "python" else ["bash", "-euo", "pipefail", "-c", block]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "Traceback" not in done.stderr, f"{block}\nfailed:\n{done.stderr}"
        outputs.append(done.stdout)
    # The section's claim: acc is what `python -m reference_llm.evaluate mc` reports, acc_norm what it
    # reports with --normalize chars.
    expected = {}
    for metric, normalize in (("acc", "none"), ("acc_norm", "chars")):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "reference_llm.evaluate",
                "mc",
                "--checkpoint",
                "runs/demo",
                "--normalize",
                normalize,
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        expected[metric] = float(re.search(r"accuracy: ([0-9.]+)", done.stdout).group(1))
    library = {
        metric: evaluate_multiple_choice(run["model"], run["tokenizer"], BUILTIN_ITEMS, normalize).accuracy
        for metric, normalize in (("acc", "none"), ("acc_norm", "chars"))
    }
    assert expected == pytest.approx(library, abs=5e-5)  # the command prints 4 decimals
    tables = re.split(r"\|\s+Tasks\s+\|", outputs[0])[1:]  # the bash block prints one table per lm-eval run
    assert len(tables) == 2 and all(table_metrics(t) == pytest.approx(expected, abs=0.005) for t in tables)
    assert [float(v) for v in outputs[1].split()[-2:]] == pytest.approx(
        [expected["acc"], expected["acc_norm"]], abs=5e-5
    )
