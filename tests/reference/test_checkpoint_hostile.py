"""Hostile checkpoints, crafted here from a real one, through the real command lines: each is one line
on stderr and exit code 2, never a traceback, a segfault, a huge allocation or a silent NaN.

Every defence has a negative control next to it: the same input without the check does the harm
(NaN training, a negative learning rate, a RecursionError, a path outside the run, ...)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from reference_llm.assets import corpus_path
from reference_llm.cli import run_main
from reference_llm.deploy.generate import main as generate_main
from reference_llm.model import ModelConfig, Transformer
from reference_llm.model.config import available_memory_bytes
from reference_llm.model.transformer import rope_tables
from reference_llm.train import main as train_main
from reference_llm.train.optim import CosineSchedule, build_optimizer

REPO = Path(__file__).resolve().parents[2]
STEP = "step_0000002"


def _overrides(root: Path, run: Path) -> list[str]:
    values = {
        "data.corpus": str(corpus_path()),
        "data.tokenizer": "char",
        "data.cache_dir": str(root / "cache"),
        "model.preset": "tiny",
        "train.micro_batch": 2,
        "train.seq_len": 16,
        "train.max_steps": 2,
        "train.warmup_steps": 1,
        "train.log_interval": 1,
        "train.dtype": "float32",
        "eval.interval": 0,
        "eval.iters": 1,
        "checkpoint.dir": str(run),
        "checkpoint.interval": 0,
    }
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A real 2-step run (tiny model, char tokenizer); tests tamper with copies of it."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "empty.toml").write_text("")
    assert run_main(train_main, ["--config", str(root / "empty.toml"), *_overrides(root, root / "run")]) == 0
    assert (root / "run" / "latest").read_text().strip() == STEP
    return root


@pytest.fixture
def run(base, tmp_path) -> Path:
    """A fresh copy of the base run, to tamper with."""
    copy = tmp_path / "run"
    shutil.copytree(base / "run", copy)
    return copy


def _resume_argv(base: Path, run: Path) -> list[str]:
    return ["--config", str(base / "empty.toml"), *_overrides(base, run), "train.max_steps=3", "--resume"]


def _one_line_exit_2(code: int, capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert code == 2 and lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


def resume(base: Path, run: Path, capsys) -> str:
    """`python -m reference_llm.train --config ... --resume` in this process; its one error line."""
    return _one_line_exit_2(run_main(train_main, _resume_argv(base, run)), capsys)


def generate(path: Path, capsys) -> str:
    """`python -m reference_llm.deploy.generate --checkpoint PATH` in this process; its one error line."""
    argv = ["--checkpoint", str(path), "--prompt", "To be", "--max-new-tokens", "2"]
    return _one_line_exit_2(run_main(generate_main, argv), capsys)


# ----------------------------------------------------------------------------------------------------
# Tampering helpers
# ----------------------------------------------------------------------------------------------------


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def edit_tensors(path: Path, edit) -> None:
    tensors, metadata = _tensors(path)
    metadata = edit(tensors, metadata) or metadata
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def edit_state(run: Path, edit) -> None:
    path = run / STEP / "state.json"
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))


def _matrix_key(tensors: dict[str, torch.Tensor], suffix: str) -> str:
    return next(k for k in sorted(tensors) if k.endswith(suffix) and tensors[k].dim() == 2)


# ----------------------------------------------------------------------------------------------------
# Optimizer state
# ----------------------------------------------------------------------------------------------------


def _wrong_shape(t, m):
    key = _matrix_key(t, ":exp_avg")
    t[key] = t[key][:1]


def _negative_second_moment(t, m):
    key = _matrix_key(t, ":exp_avg_sq")
    t[key] = -t[key] - 1.0


def _nan_step(t, m):
    key = next(k for k in t if k.endswith(":step"))
    t[key] = torch.tensor(float("nan"))


def _vector_step(t, m):
    key = next(k for k in t if k.endswith(":step"))
    t[key] = t[key].reshape(1).repeat(3)


def _integer_moment(t, m):
    key = _matrix_key(t, ":exp_avg")
    t[key] = t[key].to(torch.int64)


def _foreign_parameter(t, m):
    key = _matrix_key(t, ":exp_avg")
    name = key.rpartition(":")[0]
    for suffix in ("step", "exp_avg", "exp_avg_sq"):
        t[f"ghost.weight:{suffix}"] = t[f"{name}:{suffix}"].clone()
    groups = json.loads(m["param_groups"])
    groups[0]["params"].append("ghost.weight")
    return {**m, "param_groups": json.dumps(groups)}


def _nan_learning_rate(t, m):
    return {**m, "param_groups": m["param_groups"].replace('"lr": ', '"lr": NaN, "x": ', 1)}


def _nested_groups(t, m):
    return {**m, "param_groups": "[" * 50_000 + "]" * 50_000}


@pytest.mark.parametrize(
    "edit, message",
    [
        (_wrong_shape, r"exp_avg has shape \(1, 64\) but the parameter has \(64, 64\)"),
        (_negative_second_moment, "exp_avg_sq holds negative values"),
        (_nan_step, "step holds NaN or infinite values"),
        (_vector_step, "step must be a scalar"),
        (_integer_moment, "exp_avg has dtype int64"),
        (_foreign_parameter, "'ghost.weight' has optimizer state but is not a parameter of the model"),
        (_nan_learning_rate, "param group lr must be a finite number"),
        (_nested_groups, "param_groups is nested deeper than 16 levels"),
    ],
)
def test_resume_refuses_bad_optimizer_state(base, run, capsys, edit, message):
    edit_tensors(run / STEP / "optimizer.safetensors", edit)
    line = resume(base, run, capsys)
    assert "optimizer" in line and re.search(message, line), line


@pytest.mark.slow  # two training processes
def test_resume_with_a_wrong_moment_shape_is_exit_2_in_a_real_process(base, run):
    """The negative control first: with the checks switched off, the same file reaches the fused AdamW
    kernel, which does not check shapes: it reads and writes 64 times past the moment's buffer (heap
    corruption: NaN training or a segfault, depending on what lies there) or, if it survives, trains on
    and saves the wrong shape again."""
    edit_tensors(run / STEP / "optimizer.safetensors", _wrong_shape)
    control = run.with_name("control")
    shutil.copytree(run, control)
    unchecked = (
        "import sys; import reference_llm.train.checkpoint as c, reference_llm.distributed.base as b; "
        "c.check_optimizer_state = b.check_optimizer_state = lambda *a, **k: None; "
        "from reference_llm.cli import run_main; from reference_llm.train import main; "
        "sys.exit(run_main(main, sys.argv[1:]))"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    bad = subprocess.run(
        [sys.executable, "-c", unchecked, *_resume_argv(base, control)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert bad.returncode != 2, bad.stderr[-2000:]  # not refused
    if bad.returncode == 0:
        tensors, _ = _tensors(control / "step_0000003" / "optimizer.safetensors")
        assert tensors[_matrix_key(tensors, ":exp_avg_sq")].shape[0] == 64  # the moment beside it is whole,
        assert any(t.shape == (1, 64) for k, t in tensors.items() if k.endswith(":exp_avg"))  # this one not

    checked = subprocess.run(
        [sys.executable, "-m", "reference_llm.train", *_resume_argv(base, run)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert checked.returncode == 2 and "Traceback" not in checked.stderr, checked.stderr
    assert checked.stderr.strip().splitlines()[-1].startswith("error: ") and "exp_avg has shape" in checked.stderr


def test_negative_second_moment_trains_in_nan_without_the_check():
    """Control for the second-moment check: AdamW divides by sqrt(exp_avg_sq)."""
    model = Transformer(ModelConfig.preset("tiny"))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    idx = torch.randint(0, 512, (2, 16))
    model(idx, idx)[1].backward()
    opt.step()
    for state in opt.state.values():
        state["exp_avg_sq"].fill_(-1.0)
    model(idx, idx)[1].backward()
    opt.step()
    assert not all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ----------------------------------------------------------------------------------------------------
# state.json
# ----------------------------------------------------------------------------------------------------


def _set(key, value):
    def edit(state):
        state[key] = value

    return edit


def _set_in(section, key, value):
    def edit(state):
        state[section][key] = value

    return edit


def _python_rng_word(state):
    state["rng"]["python"][1][3] = 2**40


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set("step", -100), "step must be an integer from 0"),
        (_set("step", "2"), "step must be an integer from 0"),
        (_set("step", 10**15), "step must be an integer from 0"),
        (_set("elapsed_s", float("nan")), "elapsed_s must be a finite number"),
        (_set("elapsed_s", -5.0), "elapsed_s must be a finite number"),
        (_set_in("loader", "step", -1), "loader.step must be an integer"),
        (_set_in("loader", "step", "x"), "loader.step must be an integer"),
        (_python_rng_word, "rng.python holds a value that is not a 32-bit unsigned integer"),
        (_set_in("rng", "torch", "AAAA"), "rng.torch must be base64 of a 5056-byte generator state"),
        (_set("metrics", json.loads("[" * 200 + "]" * 200)), "nested deeper than 16 levels"),
        (_set("format_version", None), "checkpoint format None is not supported"),
    ],
)
def test_resume_refuses_bad_state_values(base, run, capsys, edit, message):
    edit_state(run, edit)
    assert message in resume(base, run, capsys)


def test_step_in_another_directory_is_refused(base, run, capsys):
    edit_state(run, _set("step", 7))
    assert "step 7 does not match its directory step_0000002" in resume(base, run, capsys)


def test_negative_step_would_train_with_a_negative_learning_rate():
    """Control for the step check: the schedule is a function of the step."""
    assert CosineSchedule(lr=1e-3, min_lr=1e-4, warmup_steps=1, max_steps=3)(-100) < 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "is nested deeper than 16 levels"),
        ('{"step": 2, "config": {}, "x": 1' + "0" * 5000 + "}", "is not readable JSON"),
    ],
)
def test_unparseable_state_json_is_one_line_in_every_command(base, run, capsys, text, message):
    (run / STEP / "state.json").write_text(text)
    assert message in resume(base, run, capsys)
    assert message in generate(run, capsys)


def test_deep_json_is_a_recursion_error_without_the_limit():
    """Control: Python's own parser gives up on deep nesting with an exception no command catches."""
    with pytest.raises(RecursionError):
        json.loads("[" * 100_000 + "]" * 100_000)


def test_state_json_over_the_size_limit_is_refused_unread(run, capsys):
    with (run / STEP / "state.json").open("a") as f:
        f.write(" " * (17 << 20))
    assert "larger than 16 MiB" in generate(run, capsys)


# ----------------------------------------------------------------------------------------------------
# Model config: bounds and memory before any allocation
# ----------------------------------------------------------------------------------------------------


def _unchecked_config(**fields) -> ModelConfig:
    """A ModelConfig that skips validation, for the negative controls."""
    config = object.__new__(ModelConfig)
    config.__dict__.update({**ModelConfig.preset("tiny").to_dict(), **fields})
    return config


@pytest.mark.parametrize("field, value", [("n_layer", 10**6), ("block_size", 10**9), ("vocab_size", 10**10)])
def test_huge_model_in_state_json_is_refused_before_allocating(run, capsys, field, value):
    # Control: built as declared, this model needs more memory than the machine has.
    assert _unchecked_config(**{field: value}).memory_bytes() > (available_memory_bytes() or 0)
    edit_state(run, lambda state: state["config"]["model"].update({field: value}))
    assert f"model.{field} must be a positive integer of at most" in generate(run, capsys)


def test_model_within_bounds_but_too_big_for_this_machine_is_refused(run, capsys):
    big = {"n_layer": 1024, "d_model": 65536, "n_head": 64, "n_kv_head": 64, "ffn_hidden": 262144}
    edit_state(run, lambda state: state["config"]["model"].update(big))
    line = generate(run, capsys)
    assert "needs about" in line and "GiB of memory" in line and "is available" in line


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("norm_eps", float("nan"), "model.norm_eps must be a finite number"),
        ("rope_theta", -10000.0, "model.rope_theta must be a finite number"),
        ("bias", "yes", "model.bias must be true or false"),
    ],
)
def test_bad_real_valued_fields_are_refused(run, capsys, field, value, message):
    edit_state(run, lambda state: state["config"]["model"].update({field: value}))
    assert message in generate(run, capsys)


def test_nan_norm_eps_and_negative_rope_theta_give_nan_without_the_check():
    """Controls: either value turns the model's output into NaN."""
    config = ModelConfig.preset("tiny")
    cos, _ = rope_tables(config.head_dim, 8, -10000.0)
    assert not bool(torch.isfinite(cos).all())
    norm = torch.nn.functional.rms_norm(torch.zeros(1, 4), (4,), eps=float("nan"))
    assert bool(torch.isnan(norm).all())


# ----------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------


def _poison(value: float):
    def edit(t, m):
        key = _matrix_key(t, ".weight")
        t[key] = t[key].clone()
        t[key][0, 0] = value

    return edit


def _retype(dtype: torch.dtype):
    def edit(t, m):
        key = _matrix_key(t, ".weight")
        t[key] = t[key].to(dtype)

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_poison(float("nan")), "holds NaN or infinite values"),
        (_poison(float("inf")), "holds NaN or infinite values"),
        (_retype(torch.int64), "has dtype int64; weights are"),
        (_retype(torch.complex64), "has dtype complex64; weights are"),
    ],
)
def test_bad_weights_are_refused_by_every_command(base, run, capsys, edit, message):
    edit_tensors(run / STEP / "model.safetensors", edit)
    assert message in resume(base, run, capsys)
    assert message in generate(run, capsys)


def test_nan_and_integer_weights_are_accepted_without_the_check(run):
    """Controls: the shape check alone copies integer weights in silently, and one NaN weight makes
    the loss NaN."""
    from reference_llm.train.checkpoint import load_weights

    tensors, _ = _tensors(run / STEP / "model.safetensors")
    config = json.loads((run / STEP / "state.json").read_text())["config"]["model"]
    model = Transformer(ModelConfig.from_dict(config))
    key = _matrix_key(tensors, ".weight")
    load_weights(model, {**tensors, key: tensors[key].to(torch.int64)})  # accepted
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = float("nan")
    load_weights(model, tensors)
    idx = torch.randint(0, model.config.vocab_size, (1, 8))
    assert math.isnan(model(idx, idx)[1].item())


# ----------------------------------------------------------------------------------------------------
# `latest`
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pointer", ["step_x/../..", "../outside/step_0000002", "/etc", "step_0000002/.."])
def test_latest_may_only_name_a_step_directory_of_the_run(base, run, capsys, pointer):
    # Control: the pointer leads to a complete checkpoint outside the run, which a check for a
    # state.json alone would accept.
    outside = run.parent / "outside"
    shutil.copytree(run, outside)
    (run / "latest").write_text(pointer + "\n")
    if pointer.startswith("../"):
        target = (run / pointer).resolve()
        assert (target / "state.json").is_file() and not target.is_relative_to(run.resolve())
    assert "which is not a complete checkpoint directory of this run" in resume(base, run, capsys)
    assert "which is not a complete checkpoint directory of this run" in generate(run, capsys)


def test_latest_naming_a_link_out_of_the_run_is_refused(base, run, capsys):
    outside = run.parent / "outside"
    shutil.copytree(run / STEP, outside)
    (run / "step_0000009").symlink_to(outside, target_is_directory=True)
    (run / "latest").write_text("step_0000009\n")
    assert "which is not a complete checkpoint directory of this run" in generate(run, capsys)


# ----------------------------------------------------------------------------------------------------
# tokenizer.json, and the real generate process
# ----------------------------------------------------------------------------------------------------


def test_deeply_nested_tokenizer_is_one_line(run, capsys):
    (run / STEP / "tokenizer.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    line = generate(run, capsys)
    assert "tokenizer.json" in line


def test_generate_process_refuses_a_huge_model_with_exit_2(run):
    edit_state(run, lambda state: state["config"]["model"].update({"n_layer": 10**6}))
    result = subprocess.run(
        [sys.executable, "-m", "reference_llm.deploy.generate", "--checkpoint", str(run), "--prompt", "To be"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert "model.n_layer must be a positive integer of at most 1,024" in result.stderr
