"""The training step, optimizer groups, schedule and engine dispatch, on tensors made here (no corpus)."""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reference_llm.config import RunConfig
from reference_llm.distributed import SingleDeviceEngine, build_engine
from reference_llm.distributed import base as engine_base
from reference_llm.errors import ConfigError, DistributedError
from reference_llm.model import ModelConfig, Transformer
from reference_llm.train import padded_vocab_size, perf, train_step
from reference_llm.train.metrics import MetricsFile, ProgressDisplay, read_metrics
from reference_llm.train.optim import CosineSchedule, optimizer_factory, param_groups
from reference_llm.train.perf import resolve_device

REPO = Path(__file__).resolve().parents[2]


def _engine(preset: str = "tiny", seed: int = 0, **train) -> SingleDeviceEngine:
    torch.manual_seed(seed)
    config = RunConfig(model=ModelConfig.preset(preset))
    for key, value in train.items():
        setattr(config.train, key, value)
    return SingleDeviceEngine(config, Transformer(config.model), optimizer_factory(config.train))


def _batch(batch: int, seq: int, vocab: int = 512, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


def test_overfits_a_single_batch():
    engine = _engine(lr=3e-3, weight_decay=0.0)
    batch = _batch(4, 32)
    first, _ = train_step(engine, [batch], 1, 3e-3, 1.0, torch.float32)
    for _ in range(60):
        loss, grad_norm = train_step(engine, [batch], 1, 3e-3, 1.0, torch.float32)
    assert first.item() > 5.0  # about ln(512) at initialisation
    assert loss.item() < 0.1 and grad_norm > 0


def test_grad_accumulation_matches_one_big_batch():
    x, y = _batch(8, 32)
    accumulated, whole = _engine(seed=3), _engine(seed=3)
    loss_a, norm_a = train_step(accumulated, [(x[:4], y[:4]), (x[4:], y[4:])], 2, 1e-3, 1.0, torch.float32)
    loss_w, norm_w = train_step(whole, [(x, y)], 1, 1e-3, 1.0, torch.float32)
    assert loss_a.item() == pytest.approx(loss_w.item(), abs=1e-6)
    assert norm_a == pytest.approx(norm_w, rel=1e-5)
    for (name, a), b in zip(accumulated.model.named_parameters(), whole.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_engine_step_clips_the_global_gradient_norm():
    # Plain SGD makes the update proportional to the gradient, so the clipped norm can be read back.
    torch.manual_seed(0)
    config = RunConfig(model=ModelConfig.preset("tiny"))
    engine = SingleDeviceEngine(config, Transformer(config.model), lambda m: torch.optim.SGD(m.parameters(), lr=0.0))
    before = [p.detach().clone() for p in engine.model.parameters()]
    lr, clip = 0.5, 0.01
    _, norm = train_step(engine, [_batch(2, 16)], 1, lr, clip, torch.float32)
    update = torch.cat([(b - a.detach()).flatten() for a, b in zip(engine.model.parameters(), before)])
    assert norm > clip  # the returned norm is the one before clipping
    assert update.norm().item() == pytest.approx(lr * clip, rel=1e-4)
    assert all(p.grad is None for p in engine.model.parameters())  # gradients were zeroed


def test_param_groups_decay_matrices_and_embeddings_only():
    model = Transformer(ModelConfig.preset("tiny-gpt2"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"tok_emb.weight", "pos_emb.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.proj.weight"} <= decayed
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"blocks.0.attn.qkv.bias", "norm_f.weight", "norm_f.bias"}
    # Every parameter in exactly one group; the tied head is the token embedding, listed once.
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedule_warms_up_then_follows_a_cosine_to_min_lr():
    s = CosineSchedule(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    warmup = [s(i) for i in range(10)]
    assert warmup == sorted(warmup) and warmup[0] == pytest.approx(1e-3 / 11)
    assert s(10) == pytest.approx(1e-3)
    assert s(60) == pytest.approx((1e-3 + 1e-4) / 2)  # half way through the cosine
    decay = [s(i) for i in range(10, 111)]
    assert decay == sorted(decay, reverse=True)
    assert s(110) == pytest.approx(1e-4) and s(500) == 1e-4


def test_padded_vocab_size_rounds_up_to_64():
    assert [padded_vocab_size(n) for n in (65, 128, 1000, 50257)] == [128, 128, 1024, 50304]


def test_build_engine_single_and_clear_errors(monkeypatch):
    config = RunConfig(model=ModelConfig.preset("tiny"))
    engine = build_engine(config, Transformer(config.model), optimizer_factory(config.train))
    assert isinstance(engine, SingleDeviceEngine) and engine.is_main and engine.world_size == 1

    config.distributed.strategy = "zero2"
    # As if DeepSpeed were not installed; earlier tests may have imported its submodules already.
    for name in [n for n in sys.modules if n == "deepspeed" or n.startswith("deepspeed.")] + ["deepspeed"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(engine_base.ENGINES, "zero2", ("deepspeed.runtime", "Engine"))
    with pytest.raises(DistributedError, match=r"zero2 needs DeepSpeed: pip install 'llmgen\[deepspeed\]'"):
        build_engine(config, Transformer(config.model), optimizer_factory(config.train))

    config.distributed.strategy = "ddp"
    monkeypatch.setitem(engine_base.ENGINES, "ddp", ("reference_llm.distributed.not_here", "DDPEngine"))
    with pytest.raises(DistributedError, match="ddp is not available: module reference_llm.distributed.not_here"):
        build_engine(config, Transformer(config.model), optimizer_factory(config.train))

    config.distributed.strategy = "pipeline"
    with pytest.raises(DistributedError, match="distributed.strategy must be one of single, ddp"):
        build_engine(config, Transformer(config.model), optimizer_factory(config.train))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is absent")
def test_cuda_device_without_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="train.device='cuda' but no CUDA device is available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="train.device must be auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_metrics_file_keeps_records_through_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsFile(path)
    for step in (1, 2, 3, 4):
        log.write({"step": step, "loss": 1.0 / step})
    log.close()
    with path.open("a") as f:
        f.write('{"step": 5, "lo')  # a line cut short by a crash
    MetricsFile(path, keep_through_step=2).close()
    assert read_metrics(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    MetricsFile(path).close()  # a fresh run starts an empty file
    assert read_metrics(path) == []


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal():
    stream = io.StringIO()
    display = ProgressDisplay(total_steps=100, stream=stream)
    display.update(10, {"loss": 2.5, "lr": 1e-3, "tokens_per_s": 12345.6, "mfu": 0.412}, seconds_left=83)
    display.note("step 10: val loss 2.6")
    display.close()
    assert stream.getvalue().splitlines() == [
        "step 10/100 | loss 2.5000 | lr 1.00e-03 | 12,346 tok/s | MFU 41.2% | 1m23s left",
        "step 10: val loss 2.6",
    ]
    silent = io.StringIO()
    ProgressDisplay(total_steps=100, stream=silent, enabled=False).note("rank 1 says nothing")
    assert silent.getvalue() == ""


_FAULTS_PER_STEP = """
import resource, sys, torch
from reference_llm.config import RunConfig
from reference_llm.distributed import SingleDeviceEngine, build_engine
from reference_llm.model import ModelConfig, Transformer
from reference_llm.train.optim import optimizer_factory
from reference_llm.train import train_step
if sys.argv[1] == "mmap_always":  # glibc's behaviour for large blocks, fixed: each is mmap'ed and unmapped
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    assert libc.mallopt(-3, 128 * 1024) and libc.mallopt(-1, 128 * 1024)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
make_engine = build_engine if sys.argv[1] == "build_engine" else SingleDeviceEngine
torch.manual_seed(0)
config = RunConfig(model=ModelConfig.preset("tiny"))
engine = make_engine(config, Transformer(config.model), optimizer_factory(config.train))
tokens = torch.randint(0, config.model.vocab_size, (12, 65))
for _ in range(10):
    train_step(engine, [(tokens[:, :-1], tokens[:, 1:])], 1, 1e-3, 1.0, torch.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    train_step(engine, [(tokens[:, :-1], tokens[:, 1:])], 1, 1e-3, 1.0, torch.float32)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_keep_freed_memory_stops_training_steps_from_page_faulting():
    """glibc serves large blocks with mmap and unmaps them on free, so a CPU training step can fault
    its activations back in every time: ~9,600 faults per step for the tiny model when that happens
    to every large block (its behaviour before its dynamic threshold adapts; once adapted it still
    varies between ~90 and ~700 from run to run). `build_engine` calls keep_freed_memory() for CPU
    engines, after which steps reuse freed memory. Each case runs in a process of its own because
    malloc settings are process-wide."""

    def faults_per_step(mode: str) -> float:
        result = subprocess.run(
            [sys.executable, "-c", _FAULTS_PER_STEP, mode],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert result.returncode == 0, result.stderr
        return float(result.stdout.split()[-1])

    always, kept = faults_per_step("mmap_always"), faults_per_step("build_engine")
    assert always > 1000, f"the mmap-every-block baseline no longer faults ({always}/step): the test measures nothing"
    assert kept < always / 50


# ----------------------------------------------------------------------------------------------------
# train.compile = "auto"
# ----------------------------------------------------------------------------------------------------


class _Clock:
    """Call start times: `gaps[i]` seconds pass between call i and call i+1."""

    def __init__(self, gaps: list[float]) -> None:
        self.times = [0.0]
        for gap in gaps:
            self.times.append(self.times[-1] + gap)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.times[self.calls - 1]


def _auto(
    tmp_path: Path,
    gaps: list[float],
    planned_calls: int,
    budget_s: float = float("inf"),
    key: str = "k",
    busy: float = 1.0,
    cpu_gaps: list[float] | None = None,
    new_process: bool = True,
) -> tuple[perf.AutoCompile, list[str], list[str]]:
    """An AutoCompile over a stand-in model whose "compile" is recorded, driven through len(gaps)+1 calls;
    CPU time advances by `cpu_gaps` (default: as wall time does). Each call stands for a run in a process
    of its own unless `new_process` is False."""
    if new_process:
        perf._COMPILED_IN_THIS_PROCESS.clear()
    compiled, notes = [], []

    def fake_compile(model: torch.nn.Module):
        compiled.append("compiled")
        return lambda x: ("compiled", x)

    auto = perf.AutoCompile(
        torch.nn.Identity(),
        planned_calls,
        budget_s,
        key,
        tmp_path / perf.COMPILE_RECORD,
        notes.append,
        clock=_Clock(gaps),
        cpu_clock=_Clock(cpu_gaps) if cpu_gaps else None,
        compile_fn=fake_compile,
        busy=lambda: busy,
    )
    outputs = [auto(i) for i in range(len(gaps) + 1)]
    return auto, [o[0] if isinstance(o, tuple) else "eager" for o in outputs], notes


def test_auto_compile_compiles_a_long_run_and_records_what_it_cost(tmp_path):
    # 6 eager calls 1 s apart, then (compiling) 20.5 s until the next call, then compiled calls 0.5 s apart.
    gaps = [1.0] * perf.EAGER_CALLS + [20.5] + [0.5] * perf.COMPILED_CALLS
    auto, ran, notes = _auto(tmp_path, gaps, planned_calls=1000)
    # Saved: (1000 - 6) calls x 1 s x (1 - 1/1.2) ≈ 166 s > the 30 s cold prior.
    assert ran == ["eager"] * perf.EAGER_CALLS + ["compiled"] * (perf.COMPILED_CALLS + 2)
    assert auto.compiled and "compiling" in notes[0] and "prior" in notes[0]
    record = json.loads((tmp_path / perf.COMPILE_RECORD).read_text())["k"]
    assert record["cold_s"] == pytest.approx(20.0) and record["speedup"] == pytest.approx(2.0)
    assert "warm_s" not in record


@pytest.mark.parametrize(
    "planned_calls, budget_s, compiles",
    [
        (100, float("inf"), False),  # (100 - 6) x 1 s x (1 - 1/1.2) ≈ 16 s saved < 30 s to compile cold
        (1000, 40.0, False),  # a time limit caps the saving: (40 - 6) s x 0.17 ≈ 6 s
        (1000, float("inf"), True),
    ],
)
def test_auto_compile_weighs_the_cold_prior_against_the_remaining_run(tmp_path, planned_calls, budget_s, compiles):
    auto, ran, notes = _auto(tmp_path, [1.0] * (perf.EAGER_CALLS + 2), planned_calls, budget_s)
    assert auto.compiled is compiles and (ran[-1] == "compiled") is compiles
    assert ("compiling" if compiles else "staying eager") in notes[0]
    assert not (tmp_path / perf.COMPILE_RECORD).exists()  # nothing was measured, nothing recorded


def test_auto_compile_uses_the_measured_speedup_and_a_warm_cache_next_time(tmp_path):
    first = [1.0] * perf.EAGER_CALLS + [20.5] + [0.5] * perf.COMPILED_CALLS  # measures: speedup 2x, 20 s cold
    _auto(tmp_path, first, planned_calls=1000)
    # Next run, same key: the cache holds the kernels, so the cost is the warm prior (5 s) and the speedup
    # the measured 2x. 16 planned calls: (16 - 6) x 1 s x 0.5 = 5 s saved, not more than 5 s: stay eager.
    auto, _, notes = _auto(tmp_path, [1.0] * perf.EAGER_CALLS, planned_calls=16)
    assert auto.compiled is False and "2.00x, measured here before" in notes[0]
    auto, _, _ = _auto(tmp_path, [1.0] * perf.EAGER_CALLS + [3.5] + [0.5] * perf.COMPILED_CALLS, planned_calls=20)
    assert auto.compiled is True  # 7 s saved > 5 s
    record = json.loads((tmp_path / perf.COMPILE_RECORD).read_text())["k"]
    assert record["warm_s"] == pytest.approx(3.0) and record["cold_s"] == pytest.approx(20.0)
    # Another model or batch is another key: back to the cold prior.
    auto, _, notes = _auto(tmp_path, [1.0] * perf.EAGER_CALLS, planned_calls=16, key="other")
    assert "prior" in notes[0]


def test_auto_compile_expects_a_busy_machine_to_compile_slower(tmp_path):
    """At 5x busy the 30 s cold prior counts as 150 s: a run whose compile would save ~82 s compiles on
    a quiet machine but not on a busy one; a compile measured while busy is recorded as its
    quiet-machine equivalent (100 s at 5x: 20 s)."""
    auto, _, notes = _auto(tmp_path, [1.0] * perf.EAGER_CALLS, planned_calls=500, busy=1.0)
    assert auto.compiled is True
    auto, _, notes = _auto(tmp_path, [1.0] * perf.EAGER_CALLS, planned_calls=500, busy=5.0)
    assert auto.compiled is False and "5.0x busy" in notes[0]
    _auto(tmp_path, [1.0] * perf.EAGER_CALLS + [100.5] + [0.5] * perf.COMPILED_CALLS, planned_calls=1000, busy=5.0)
    assert json.loads((tmp_path / perf.COMPILE_RECORD).read_text())["k"]["cold_s"] == pytest.approx(20.0)


def test_a_second_compile_in_the_same_process_is_not_taken_for_a_warm_one(tmp_path):
    """torch's in-memory caches make compiling the same model again in one process near free: that
    0.1 s must not become the warm cost a new run expects."""
    measured = [1.0] * perf.EAGER_CALLS + [20.5] + [0.5] * perf.COMPILED_CALLS
    _auto(tmp_path, measured, planned_calls=1000)
    _auto(tmp_path, [1.0] * perf.EAGER_CALLS + [0.6] + [0.5] * perf.COMPILED_CALLS, 1000, new_process=False)
    assert "warm_s" not in json.loads((tmp_path / perf.COMPILE_RECORD).read_text())["k"]


def test_auto_compile_measures_the_speedup_in_cpu_time(tmp_path):
    """On a busy machine the compiled calls happened to wait for the CPU twice as long (wall: 2 s each
    against 1 s eager) while doing half the work (CPU: 0.5 s against 1 s): the record says 2x, not 0.5x."""
    wall = [1.0] * perf.EAGER_CALLS + [22.0] + [2.0] * perf.COMPILED_CALLS
    cpu = [1.0] * perf.EAGER_CALLS + [5.0] + [0.5] * perf.COMPILED_CALLS
    auto, _, _ = _auto(tmp_path, wall, planned_calls=1000, cpu_gaps=cpu)
    record = json.loads((tmp_path / perf.COMPILE_RECORD).read_text())["k"]
    assert record["speedup"] == pytest.approx(2.0) and record["compiled_s"] == pytest.approx(2.0)
    assert record["cold_s"] == pytest.approx(20.0)  # the compile's cost is wall time (g++ runs in other processes)


def test_a_malformed_compile_record_counts_as_none(tmp_path):
    (tmp_path / perf.COMPILE_RECORD).write_text('{"k": {"speedup": "fast"}, "j": [1]')
    auto, _, notes = _auto(tmp_path, [1.0] * perf.EAGER_CALLS, planned_calls=1000)
    assert auto.compiled and "prior" in notes[0]


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_compile_setting_accepts_true_false_and_auto(value):
    assert perf.check_compile_setting(value) == value


@pytest.mark.parametrize("value", ["yes", "Auto", 1, None])
def test_compile_setting_refuses_anything_else(value):
    with pytest.raises(ConfigError, match='train.compile must be true, false or "auto"'):
        perf.check_compile_setting(value)


def test_trainer_with_compile_auto_keeps_the_compile_cache_in_the_project(tmp_path, monkeypatch, capsys):
    """A short run stays eager (compiling would not pay off) and says so; the inductor cache defaults to
    the project's .cache/inductor; a bad value is a ConfigError naming the key."""
    from reference_llm.assets import corpus_path
    from reference_llm.config import load_config
    from reference_llm.train import Trainer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset below")  # restored (to absent, if so) after the test
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")

    def config(compile_value):
        values = {
            "data.corpus": str(corpus_path()),
            "data.tokenizer": "char",
            "data.cache_dir": "data-cache",
            "model.preset": "tiny",
            "train.micro_batch": 4,
            "train.max_steps": 10,
            "train.dtype": "float32",
            "train.compile": compile_value,
            "eval.iters": 0,
            "checkpoint.dir": "run",
        }
        return load_config(None, [f"{k}={json.dumps(v)}" for k, v in values.items()])

    trainer = Trainer(config("auto"))
    assert isinstance(trainer.forward, perf.AutoCompile)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / ".cache" / "inductor")
    trainer.fit()
    assert trainer.forward.compiled is False and "compile auto: staying eager" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="train.compile"):
        Trainer(config("yes"))


@pytest.mark.slow  # compiles a model: ~20-60 s cold on 2 cores
def test_compile_model_trains_like_eager():
    """compile_model (torch.compile with inductor's C++ wrapper on the CPU) runs training steps forward
    and backward, and the losses follow the eager model's to float32 rounding."""
    losses = {}
    for mode in ("eager", "compiled"):
        engine = _engine(seed=0)
        forward = perf.compile_model(engine.model) if mode == "compiled" else engine.model
        batch = _batch(4, 32)
        losses[mode] = [
            train_step(engine, [batch], 1, 1e-3, 1.0, torch.float32, forward=forward)[0].item() for _ in range(3)
        ]
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    assert losses["eager"][2] < losses["eager"][0]  # the same batch three times: it is learnt
