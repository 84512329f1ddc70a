"""Metrics sinks (`train.loggers`): TensorBoard event files read back with TensorBoard's own reader equal
the JSONL metrics, for pretraining (also across a crash and resume) and post-training alike; a W&B
offline run holds the same numbers and the run config; docs/training.md's logger commands run as
written; an unknown logger or a missing package is one line and exit code 2."""

from __future__ import annotations

import json
import os
import re
import shlex
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import reference_llm.train.loop as loop_mod
from reference_llm.assets import corpus_path
from reference_llm.cli import run_main
from reference_llm.config import load_config
from reference_llm.errors import ConfigError
from reference_llm.posttrain import sft
from reference_llm.train import Trainer
from reference_llm.train import main as train_main
from reference_llm.train.loggers import check_loggers, open_loggers
from reference_llm.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "training.md"
TRAIN_TOML = """[model]
preset = "tiny"
[data]
corpus = "{corpus}"
tokenizer = "char"
cache_dir = "{cache}"
[train]
max_steps = 4
micro_batch = 4
seq_len = 32
warmup_steps = 1
log_interval = 1
dtype = "float32"
[eval]
interval = 2
iters = 1
[checkpoint]
dir = "runs/tiny"
interval = 0
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared copy of the bundled corpus (char tokenizer) for every test here."""
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture()
def project(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with configs/train.toml at tiny scale, as the current directory."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.toml").write_text(TRAIN_TOML.format(corpus=corpus_path(), cache=cache_dir))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def jsonl_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Each number of each metrics.jsonl record as (step, value), per key, rounded to float32 as
    TensorBoard's scalar summaries store it."""
    series = defaultdict(list)
    for record in read_metrics(path):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                series[key].append((record["step"], float(np.float32(value))))
    return dict(series)


def needs(extra: str) -> Any:
    """The extra's package, or a skip that says how to install it."""
    return pytest.importorskip(extra, reason=f"the {extra} extra: pip install 'llmgen[{extra}]'")


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tensorboard_config(log_dir: Path) -> dict[str, Any]:
    """The run config logged last as TensorBoard text (a Markdown code block of JSON); each start of a
    run, resumes included, logs it at the step it starts from."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    events.Reload()
    text = events.Tensors("config/text_summary")[-1].tensor_proto.string_val[0].decode()
    return json.loads("\n".join(line.removeprefix("    ") for line in text.splitlines()))


def assert_tensorboard_equals_jsonl(run_dir: Path, keys: set[str]) -> None:
    logged = jsonl_scalars(run_dir / "metrics.jsonl")
    assert keys <= set(logged)  # the metrics the sinks promise are there to compare
    assert tensorboard_scalars(run_dir / "tensorboard") == logged


def test_pretraining_tensorboard_scalars_equal_the_jsonl_metrics_across_a_resume(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs("tensorboard")
    overrides = ['train.loggers=["jsonl", "tensorboard"]', "checkpoint.interval=2"]
    run = project / "runs" / "tiny"
    real_step, calls = loop_mod.train_step, []

    def crash_in_step_4(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop_mod, "train_step", crash_in_step_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(load_config("configs/train.toml", overrides)).fit()
    monkeypatch.setattr(loop_mod, "train_step", real_step)
    assert [step for step, _ in tensorboard_scalars(run / "tensorboard")["loss"]] == [1, 2, 3]

    # Resumed from step 2: step 3 is logged again, and TensorBoard's reader, like metrics.jsonl,
    # keeps only the resumed run's record of it (purge_step), so both hold steps 1-4 once each.
    Trainer(load_config("configs/train.toml", overrides), resume=True).fit()
    train_keys = {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "memory_mib", "elapsed_s"}
    assert_tensorboard_equals_jsonl(run, train_keys | {"val_loss", "val_ppl", "val_bpb"})
    assert [step for step, _ in tensorboard_scalars(run / "tensorboard")["loss"]] == [1, 2, 3, 4]
    assert [step for step, _ in tensorboard_scalars(run / "tensorboard")["val_loss"]] == [2, 4]
    assert all(value > 0 for _, value in tensorboard_scalars(run / "tensorboard")["memory_mib"])
    assert tensorboard_config(run / "tensorboard")["train"]["loggers"] == ["jsonl", "tensorboard"]


SFT_TOML = """[sft]
data = "demo"
max_examples = 40
[model]
preset = "tiny"
[data]
tokenizer = "char"
[train]
max_steps = 2
micro_batch = 4
seq_len = 32
log_interval = 1
dtype = "float32"
loggers = ["jsonl", "tensorboard"]
[eval]
interval = 0
iters = 1
[checkpoint]
dir = "{run}"
interval = 0
"""


def test_sft_logs_through_the_same_sinks(tmp_path: Path) -> None:
    needs("tensorboard")
    config = tmp_path / "sft.toml"
    config.write_text(SFT_TOML.format(run=tmp_path / "run"))
    assert run_main(sft.main, ["--config", str(config)]) == 0
    assert_tensorboard_equals_jsonl(tmp_path / "run", {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "memory_mib"})


def doc_commands() -> list[str]:
    """The bash block of docs/training.md's loggers section, one command per line."""
    section = DOC.read_text().split("## Loggers", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line for line in block.splitlines() if line.strip()]


def run_doc_command(line: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A documented command, as written: `python -m reference_llm.train` in this process (its CLI
    wrapper included), `tensorboard` as the installed program. Returns what the latter printed."""
    words = shlex.split(line, comments=True)
    while "=" in words[0]:  # leading environment assignments
        name, _, value = words.pop(0).partition("=")
        monkeypatch.setenv(name, value)
    if words[:3] == ["python", "-m", "reference_llm.train"]:
        assert run_main(train_main, words[3:]) == 0
        return ""
    assert words[0] == "tensorboard", line
    program = Path(sys.executable).with_name("tensorboard")
    done = subprocess.run([str(program), *words[1:]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def read_wandb_records(path: Path) -> list[Any]:
    """The records of a W&B `.wandb` file: a LevelDB-style log (a 7-byte header, then 32 KiB blocks of
    chunks, each a CRC, a length and a type: full, first, middle or last) of `Record` protobufs."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, chunks, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full or last: a record is complete
            record = Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def wandb_items(items: Any) -> dict[str, Any]:
    """A record's key/value items: each key is `key`, or else `nested_key`'s parts."""
    return {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in items}


def test_doc_commands_tensorboard_and_wandb_offline(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs("tensorboard")
    needs("wandb")
    # Nothing may leave the machine: W&B's files stay under the test's directory, and its server
    # address points at a closed local port, so a run that tried to go online would fail, not upload.
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(project / ".wandb-home"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = project / "runs" / "tiny"
    tensorboard_run, inspect, wandb_run = doc_commands()

    run_doc_command(tensorboard_run, monkeypatch)
    assert_tensorboard_equals_jsonl(run, {"loss", "val_loss", "memory_mib"})
    shown = run_doc_command(inspect, monkeypatch)
    tags = shown.split("These tags are in runs/tiny/tensorboard:", 1)[1].split("=====", 1)[0].split()
    assert {"loss", "lr", "grad_norm", "mfu", "memory_mib", "val_loss", "config/text_summary"} <= set(tags)
    assert re.search(r"scalars\s+first_step\s+1\s+last_step\s+4\s", shown)

    assert "WANDB_MODE=offline" in wandb_run
    run_doc_command(wandb_run, monkeypatch)
    (offline,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_wandb_records(offline)
    history: dict[int, dict[str, float]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = wandb_items(record.history.item)
            history[record.history.step.num] = {k: v for k, v in row.items() if not k.startswith("_")}
    expected: dict[int, dict[str, float]] = defaultdict(dict)
    for record in read_metrics(run / "metrics.jsonl"):  # W&B merges what is logged at one step into one row
        expected[record["step"]].update({k: v for k, v in record.items() if k != "step"})
    assert history == expected and {"loss", "lr", "grad_norm", "val_loss"} <= set(history[4])
    configs = [wandb_items(record.config.update) for record in records if record.WhichOneof("record_type") == "config"]
    assert any(c.get("train", {}).get("loggers") == ["jsonl", "wandb"] for c in configs)


def test_unknown_logger_is_one_line_and_exit_2(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_main(train_main, ["--config", "configs/train.toml", 'train.loggers=["jsonl", "mlflow"]'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: train.loggers: unknown logger 'mlflow'; known: jsonl, tensorboard, wandb"]
    assert not (project / "runs").exists()


def test_missing_package_names_the_extra_and_touches_nothing(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = project / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an install without it raises
    code = run_main(train_main, ["--config", "configs/train.toml", 'train.loggers=["jsonl", "tensorboard"]'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (
        "error: train.loggers: 'tensorboard' needs the tensorboard package; install it with: "
        "pip install 'llmgen[tensorboard]'"
    )
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'  # the earlier run's, untouched
    assert os.listdir(run) == ["metrics.jsonl"]
    # Ranks other than 0 open no sink but stop at the same line, found without importing anything.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError) as raised:
        check_loggers(load_config("configs/train.toml", ['train.loggers=["tensorboard"]']))
    assert f"error: {raised.value}" == err[-1]


def test_a_wandb_run_that_cannot_start_is_one_line(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = needs("wandb")

    def refuse(**settings: Any) -> None:
        raise wandb.errors.UsageError("No API key configured.\nUse `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", refuse)
    config = load_config("configs/train.toml", ['train.loggers=["jsonl", "tensorboard", "wandb"]'])
    earlier = project / "runs" / "tiny" / "metrics.jsonl"
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"step": 1, "loss": 2.0}\n')
    with pytest.raises(ConfigError) as raised:
        open_loggers(config)
    assert earlier.read_text() == '{"step": 1, "loss": 2.0}\n'  # W&B is tried before anything is replaced
    assert str(raised.value) == (
        "train.loggers: W&B could not start a run (UsageError: No API key configured. Use `wandb login` to log "
        "in.); WANDB_MODE=offline keeps the run on this machine without an account"
    )
