"""The planner over the whole space: a seeded random sample of track x hardware x budget form x preset x
parallelism that holds every value of every axis, plus the corners a new user found. Every combination
is either refused (one line naming the flags that conflict and a combination that works) or planned so
that a practitioner would sign it: the batch scaled to the run's compute, enough steps, a warm-up that is
a sane share of them, the learning rate of the model's size, a micro-batch that fits, the same numbers in
every answer; and the only warnings are the ones the plan cannot avoid (no memory, not enough text, a
budget below the shortest useful run). A few corners are rendered, and `llmgen check` on them is "ready"
exactly when the plan had no warning.

The test states the rules in its own words (DeepSeek LLM's B_opt, the step floor, Muennighoff et al.'s
four epochs) rather than calling the planner's helpers, so a planner that drifts from them fails here.
"""

from __future__ import annotations

import json
import math
import random
import re

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from generator.cli import app
from generator.commands.new import estimate_panel
from generator.errors import LLMGenError
from generator.estimate import RunSpec, estimate_run, parse_budget, parse_hardware
from generator.estimate.api import PARALLELISMS
from generator.plan import plan_run
from generator.tracks import load_tracks
from generator.units import si
from reference_llm.assets import corpus_path
from reference_llm.model.config import PRESETS, ModelConfig

pytestmark = pytest.mark.usefixtures("fixed_cpu")

TRACKS = load_tracks()
HARDWARE = ["cpu", "1xRTX4090", "1xT4", "1xA100-40GB", "2xA100-80GB", "8xH100", "4x8xH100", "8xMI300X"]
# None: no budget given (it follows the hardware); "{hw}" is the sampled hardware.
BUDGETS = [
    None,
    "laptop",
    "$20",
    "$500",
    "$50k",
    "10 gpu-hours",
    "5k gpu-hours",
    "{hw} for 30 minutes",
    "{hw} for 3 days",
]
SAMPLES, SEED = 240, 11
MIN_STEPS, MIN_WARMUP, MAX_EPOCHS = 200, 20, 4  # ten warm-ups of 1/(1 - 0.95); Muennighoff et al. 2023
# Bytes per token of the bundled corpus, measured with the tokenizers reference_llm trains (recipe.py)
BYTES_PER_TOKEN = {512: 1.925, 1024: 2.396, 32000: 3.696, 50257: 3.696, 128256: 3.696}
# GPT-3 (Brown et al. 2020, Table 2.1) by size, nanoGPT's 1e-3 below 100M
LEARNING_RATES = (
    (1e8, 1e-3),
    (2e8, 6e-4),
    (5e8, 3e-4),
    (1e9, 2.5e-4),
    (2e9, 2e-4),
    (4e9, 1.6e-4),
    (1e10, 1.2e-4),
    (2e10, 1e-4),
    (math.inf, 6e-5),
)


def sample() -> list[tuple[str, str, str | None, str, str]]:
    """SAMPLES combinations; each axis is a shuffled repetition of its values, so every value appears at
    least SAMPLES // len(axis) times."""
    rng = random.Random(SEED)
    columns = []
    for axis in (list(TRACKS), HARDWARE, BUDGETS, list(PRESETS), list(PARALLELISMS)):
        column = [axis[i % len(axis)] for i in range(SAMPLES)]
        rng.shuffle(column)
        columns.append(column)
    return [(t, h, b.format(hw=h) if b else b, p, s) for t, h, b, p, s in zip(*columns)]


# The corners of the issue: (name, given)
CORNERS = {
    "beginner 1xRTX4090": {"track": "beginner", "hardware": "1xRTX4090"},
    "beginner 1xRTX4090 gpt2-124m": {"track": "beginner", "hardware": "1xRTX4090", "model_preset": "gpt2-124m"},
    "beginner 8xH100": {"track": "beginner", "hardware": "8xH100"},
    "beginner $500": {"track": "beginner", "budget": "$500"},
    "beginner 8xH100 for 3 days": {"track": "beginner", "budget": "8xH100 for 3 days"},
    "practitioner default": {"track": "practitioner"},
    "practitioner $2000": {"track": "practitioner", "budget": "$2000"},
    "researcher llama-70b 8xH100": {"track": "researcher", "model_preset": "llama-70b", "hardware": "8xH100"},
    # tensor and pipeline parallelism (tests/generator/test_new_tp_pp.py renders one)
    "researcher tp=2 8xH100": {"track": "researcher", "hardware": "8xH100", "tp": 2},
    "researcher tp=8 4x8xH100": {"track": "researcher", "tp": 8},
    "researcher llama-8b pp=8 8xH100": {
        "track": "researcher",
        "model_preset": "llama-8b",
        "hardware": "8xH100",
        "pp": 8,
    },
}


def given_for(
    track: str, hardware: str | None, budget: str | None, preset: str | None, parallelism: str | None
) -> dict:
    defaults = TRACKS[track].defaults
    return {
        "track": track,
        "hardware": hardware,
        "budget": budget,
        "model_preset": preset or defaults.model_preset,
        "parallelism": parallelism or defaults.parallelism,
        "exercises": defaults.exercises,
    }


def refusal(hardware: str, budget: str | None, parallelism: str) -> set[str]:
    """The flags that conflict with --hardware, by the rules as a user would state them (empty: valid)."""
    hw = parse_hardware(hardware)
    conflicts = set()
    if parallelism != "auto" and (
        (hw.is_cpu and parallelism != "single")
        or (hw.n_gpus > 1 and parallelism == "single")
        or (hw.n_gpus == 1 and parallelism == "ddp")
    ):
        conflicts.add("--parallelism")
    if (budget and budget.startswith("$") and hw.is_cpu) or (budget == "laptop" and not hw.is_cpu):
        conflicts.add("--budget")
    return conflicts


def check_plan(plan) -> None:
    """The planner's guarantees, for any plan it makes without user overrides of tokens or batch."""
    a, est, f = plan.answers, plan.estimate, plan.facts
    hw = parse_hardware(a["hardware"])
    model = ModelConfig.preset(a["model_preset"])
    # The ranks of one tp x pp replica read the same batches: the batch counts data-parallel replicas.
    seq, devices = model.block_size, hw.n_gpus // (a["tp"] * a["pp"])
    per_step = a["micro_batch"] * a["grad_accum"] * devices * seq
    # The same numbers everywhere: answers, the facts judged, the estimate, DeepSpeed's config.
    assert a["tokens"] == a["max_steps"] * per_step == f.tokens == est.tokens
    assert (f.micro_batch, f.grad_accum, f.max_steps, f.warmup_steps) == (
        a["micro_batch"],
        a["grad_accum"],
        a["max_steps"],
        a["warmup_steps"],
    )
    if a["parallelism"].startswith("zero"):
        ds = a["deepspeed"]
        assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
            a["micro_batch"],
            a["grad_accum"],
        )
        assert ds["train_batch_size"] == a["micro_batch"] * a["grad_accum"] * devices
    else:
        assert a["deepspeed"] == {}
    # Enough steps to learn anything, and a warm-up that is a sane share of them.
    assert a["max_steps"] >= MIN_STEPS
    assert MIN_WARMUP <= a["warmup_steps"] <= a["max_steps"] / 10 and a["warmup_steps"] <= 2000
    # Tokens per step scaled to the run: within 4x of DeepSeek LLM's B_opt = 0.292·C^0.3271, unless one
    # sequence per device is already more, or the run is too short for B_opt and MIN_STEPS steps.
    b_opt = min(0.292 * (model.flops_per_token(seq) * a["tokens"]) ** 0.3271, 16 * 2**20)
    assert per_step <= max(4 * b_opt, devices * seq), (per_step, b_opt)
    assert per_step >= min(b_opt, a["tokens"] / MIN_STEPS) / 4, (per_step, b_opt)
    # The learning rate of the model's size, decaying to a tenth, written as people write it.
    n = model.flops_per_token(seq) / 6 - 2 * model.n_layer * model.d_model * seq  # 6N + 12·L·d·s over 6
    assert a["learning_rate"] == next(lr for limit, lr in LEARNING_RATES if n < limit)
    assert a["min_lr"] == float(f"{a['learning_rate'] / 10:.3g}") and len(repr(a["min_lr"])) <= 8
    # A micro-batch that fits whenever one sequence per device does.
    at_one = estimate_run(
        RunSpec(
            model,
            hw,
            1.0,
            parallelism=a["parallelism"],
            micro_batch=1,
            precision=hw.compute_precision(a["precision"]),
            tp=a["tp"],
            pp=a["pp"],
        )
    )
    assert est.fits == at_one.fits and (est.fits or "memory" in _names(plan))
    # Warnings only where the plan cannot help it, each one line with its fix.
    names = _names(plan)
    assert names <= {"memory", "data", "budget"}, plan.problems
    bytes_per_token = 1.0 if a["tokenizer"] == "char" else BYTES_PER_TOKEN[a["vocab_size"]]
    corpus = corpus_path().stat().st_size * 0.9 / bytes_per_token  # the training split: 90%
    assert ("data" in names) == (a["tokens"] > MAX_EPOCHS * corpus * 1.0001), (a["tokens"], corpus)
    if MAX_EPOCHS * corpus >= MIN_STEPS * devices * seq:
        assert "data" not in names  # the corpus can carry a run: the plan stays within four epochs
    budget = parse_budget(a["budget"])
    spent = {"usd": est.cost_usd, "gpu_hours": est.gpu_hours, "time": est.wall_hours}[budget.kind]
    assert ("budget" in names) == (spent > budget.amount * 1.01)
    if "budget" in names:
        assert a["max_steps"] == MIN_STEPS  # only the step floor may overrun a budget
    if budget.hardware is not None:
        assert str(budget.hardware) == a["hardware"]
    for problem in plan.problems:
        line = problem.line(flags=True)
        assert "\n" not in line and "; fix: " in line
    # The panel shows the answers' numbers.
    console = Console(width=400, record=True, file=open("/dev/null", "w"))  # noqa: SIM115 - closed with console
    console.print(estimate_panel(plan))
    panel = console.export_text()
    assert f"= {per_step:,} tokens per step" in panel
    assert f"{a['max_steps']:,} steps, warm-up {a['warmup_steps']:,}" in panel
    console.file.close()


def _names(plan) -> set[str]:
    return {p.name for p in plan.problems}


def test_the_sample_covers_every_value_of_every_axis():
    combos = sample()
    for index, axis in enumerate((list(TRACKS), HARDWARE, None, list(PRESETS), list(PARALLELISMS))):
        if axis is not None:
            assert {c[index] for c in combos} == set(axis)
    forms = {None if b is None else parse_budget(b).kind if b != "laptop" else "laptop" for _, _, b, _, _ in combos}
    assert forms == {None, "laptop", "usd", "gpu_hours", "time"}


def test_every_sampled_combination_is_refused_or_planned_as_a_practitioner_would_sign_it():
    planned = refused = 0
    for track, hardware, budget, preset, parallelism in sample():
        given = given_for(track, hardware, budget, preset, parallelism)
        expected = refusal(hardware, budget, parallelism)
        if expected:
            with pytest.raises(LLMGenError) as err:
                plan_run("matrix", given, tracks=TRACKS)
            message = str(err.value)
            assert "\n" not in message and any(f in message for f in expected) and "--hardware" in message, message
            assert re.search(r"use |e\.g\. |auto picks", message), message
            refused += 1
            continue
        plan = plan_run("matrix", given, tracks=TRACKS)
        check_plan(plan)
        planned += 1
    assert planned > 150 and refused > 20, (planned, refused)


@pytest.mark.parametrize("corner", list(CORNERS))
def test_the_corners_of_the_issue_are_planned_sanely(corner):
    given = {**{"budget": None, "hardware": None, "model_preset": None, "parallelism": None}, **CORNERS[corner]}
    layout = {k: v for k, v in given.items() if k in ("tp", "pp")}
    plan = plan_run(
        "corner",
        {
            **given_for(
                given["track"], given["hardware"], given["budget"], given["model_preset"], given["parallelism"]
            ),
            **layout,
        },
        tracks=TRACKS,
    )
    check_plan(plan)
    assert (plan.answers["tp"], plan.answers["pp"]) == (layout.get("tp", 1), layout.get("pp", 1))


# ----------------------------------------------------------------------------------------------------
# Rendered: the files say what the plan says, and `llmgen check` is ready exactly when it had no warning
# ----------------------------------------------------------------------------------------------------

RENDERED = {  # corner -> the flags of `llmgen new`
    "beginner 1xRTX4090 gpt2-124m": ["--hardware", "1xRTX4090", "--model", "gpt2-124m"],
    "practitioner default": ["--track", "practitioner"],
    "researcher llama-70b 8xH100": ["--track", "researcher", "--model", "llama-70b", "--hardware", "8xH100"],
    "nanogpt on cpu (character level)": ["--model", "nanogpt-shakespeare"],
}
LONG_FLOAT = re.compile(r"\d\.\d*(?:0000000|9999999)\d*")  # 5.9999999999999995e-05, 0.30000000000000004


@pytest.mark.usefixtures("template_cache")
@pytest.mark.parametrize("corner", list(RENDERED))
def test_rendered_corner_agrees_with_its_plan_and_check(tmp_path, monkeypatch, corner):
    assert LONG_FLOAT.search(repr(6e-4 / 10))  # control: what min_lr = lr / 10 wrote before
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["new", "p", "--yes", "--no-git", *RENDERED[corner]], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    project = tmp_path / "p"
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    train = (project / "configs" / "train.toml").read_text()
    for key, answer in (
        ("max_steps", "max_steps"),
        ("warmup_steps", "warmup_steps"),
        ("micro_batch", "micro_batch"),
        ("grad_accum", "grad_accum"),
        ("lr", "learning_rate"),
        ("min_lr", "min_lr"),
    ):
        assert f"\n{key} = {answers[answer]}\n" in train, key
    assert f'tokenizer = "{answers["tokenizer"]}"' in train
    readme = (project / "README.md").read_text()
    assert f"{answers['tokens']:,} ({answers['max_steps']:,} steps)" in readme
    assert f"{si(answers['tokens'])} tokens" in (project / "ROADMAP.md").read_text()  # the pretraining step
    slurm = (project / "scripts" / "slurm.sbatch").read_text()
    assert f"--nodes={answers['nodes']}\n" in slurm
    assert (f"--gpus-per-node={answers['gpus_per_node']}\n" in slurm) == (answers["gpu"] != "cpu")
    for path in project.rglob("*"):
        if path.is_file() and path.suffix in (".toml", ".json", ".md", ".yml", ".sh", ".sbatch", ".py", ".html"):
            assert not LONG_FLOAT.search(path.read_text(encoding="utf-8")), path
    checked = runner.invoke(app, ["check", "--dir", str(project), "--json"], env={"WORLD_SIZE": None})
    report = json.loads(checked.stdout)
    failed = {r["name"] for r in report["checks"] if r["status"] == "fail"}
    # ready exactly when the plan carried no warning, failing on the same invariants
    assert report["ok"] == (not warnings), (failed, warnings)
    assert failed == {w.split(":")[1].strip() for w in warnings}, (failed, warnings)
    if corner == "researcher llama-70b 8xH100":
        assert "does NOT fit" in result.stdout and failed == {"memory", "data"}


def test_answers_recorded_before_the_schedule_get_it_by_todays_rules():
    """A project from before llmgen recorded warm-up, min_lr, intervals and tokenizer (its train.toml
    computed them in Jinja): `llmgen update` fills them in as the planner would for its step count."""
    from generator.commands.update import current_answers

    plan = plan_run("old", given_for("practitioner", "8xH100", "$500", "gpt2-124m", "auto"), tracks=TRACKS)
    schedule = ("warmup_steps", "min_lr", "eval_interval", "checkpoint_interval", "tokenizer")
    old = {k: v for k, v in plan.answers.items() if k not in schedule}
    current = current_answers(old)
    assert {k: current[k] for k in schedule} == {k: plan.answers[k] for k in schedule}
    assert current["deepspeed"] == plan.answers["deepspeed"]
