"""Parsing sizes, hardware and budgets, and the one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from generator.errors import EstimateError, LLMGenError
from generator.estimate import KNOWN_GPUS, cpu_peak, parse_budget, parse_count, parse_hardware, parse_tokens
from reference_llm.config import Dtype


@pytest.fixture(autouse=True)
def _fixed_cpu_peak(monkeypatch):
    monkeypatch.setenv("LLMGEN_CPU_TFLOPS", "0.5")


@pytest.mark.parametrize(
    "text, value",
    [
        ("7B", 7e9),
        ("124M", 124e6),
        ("2T", 2e12),
        ("500k", 5e5),
        ("1.5e9", 1.5e9),
        ("7_000_000", 7e6),
        ("1,000", 1e3),
        ("0.5b", 5e8),
        (42, 42.0),
    ],
)
def test_parse_count(text, value):
    assert parse_count(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "", "7Q", "-5", "0", "0B", "1e999"])
def test_parse_count_rejects_bad_values_naming_the_flag(text):
    with pytest.raises(EstimateError, match="--params") as err:
        parse_count(text)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, LLMGenError) and err.value.exit_code == 2


def test_parse_tokens_accepts_chinchilla():
    assert parse_tokens("chinchilla") == "chinchilla"
    assert parse_tokens("2T") == 2e12
    with pytest.raises(EstimateError, match="--tokens"):
        parse_tokens("lots")


@pytest.mark.parametrize(
    "text, nodes, per_node, name",
    [
        ("8xH100", 1, 8, "H100-SXM"),
        ("4x8xA100-80GB", 4, 8, "A100-80GB"),
        ("H200", 1, 1, "H200"),
        ("1xRTX4090", 1, 1, "RTX4090"),
        ("2 x MI300X", 1, 2, "MI300X"),
        ("64xH100", 8, 8, "H100-SXM"),
        ("a100-40gb", 1, 1, "A100-40GB"),
        ("rtx-4090", 1, 1, "RTX4090"),
        ("2x4xL40S", 2, 4, "L40S"),
    ],
)
def test_parse_hardware(text, nodes, per_node, name):
    hw = parse_hardware(text)
    assert (hw.nodes, hw.gpus_per_node, hw.gpu.name) == (nodes, per_node, name)
    assert hw.n_gpus == nodes * per_node
    assert parse_hardware(str(hw)) == hw  # printed form parses back


def test_catalogue_has_the_required_gpus():
    for name in (
        "A100-40GB",
        "A100-80GB",
        "H100-SXM",
        "H100-PCIe",
        "H200",
        "B200",
        "MI300X",
        "L40S",
        "A10",
        "T4",
        "RTX4090",
    ):
        spec = KNOWN_GPUS[name]
        assert spec.bf16_tflops > spec.fp32_tflops > 0
        assert spec.memory_gib > 0 and spec.price_per_hour > 0 and 0 < spec.mfu < 1


def test_cpu_hardware_uses_given_peak():
    hw = parse_hardware("cpu")
    assert hw.is_cpu and hw.n_gpus == 1 and hw.gpu.bf16_tflops == 0.5
    assert parse_hardware("cpu", cpu_tflops=2.0).gpu.fp32_tflops == 2.0


def test_cpu_peak_is_measured_once_per_machine(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMGEN_CPU_TFLOPS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cpu_peak, "_in_process", {})
    first = cpu_peak.cpu_tflops(Dtype.FLOAT32, size=128, repeats=3)
    assert first > 0
    cache = tmp_path / "llmgen" / "cpu_peak.json"
    assert list(json.loads(cache.read_text()).values()) == [first]

    def no_measuring(*args):
        raise AssertionError("measured again although the peak is cached")

    monkeypatch.setattr(cpu_peak, "measure", no_measuring)
    assert cpu_peak.cpu_tflops(Dtype.FLOAT32, size=128, repeats=3) == first  # this process
    monkeypatch.setattr(cpu_peak, "_in_process", {})
    assert cpu_peak.cpu_tflops(Dtype.FLOAT32, size=128, repeats=3) == first  # a later process: from the file


def test_cpu_peak_cache_is_per_machine_and_survives_corruption(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMGEN_CPU_TFLOPS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cpu_peak, "_in_process", {})
    monkeypatch.setattr(cpu_peak, "measure", lambda precision, size, repeats: 0.25)
    cache = tmp_path / "llmgen" / "cpu_peak.json"
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    assert cpu_peak.cpu_tflops(Dtype.BFLOAT16) == 0.25  # a broken cache is ignored and rewritten
    assert json.loads(cache.read_text()) == {f"{cpu_peak.machine_key()}|bfloat16|1024": 0.25}
    monkeypatch.setattr(cpu_peak, "_in_process", {})
    monkeypatch.setenv("OMP_NUM_THREADS", "17")  # another thread count is another machine as far as the peak goes
    monkeypatch.setattr(cpu_peak, "measure", lambda precision, size, repeats: 0.5)
    assert cpu_peak.cpu_tflops(Dtype.BFLOAT16) == 0.5
    assert len(json.loads(cache.read_text())) == 2


def test_bad_cpu_peak_env_is_reported(monkeypatch):
    monkeypatch.setenv("LLMGEN_CPU_TFLOPS", "fast")
    with pytest.raises(EstimateError, match="LLMGEN_CPU_TFLOPS"):
        parse_hardware("cpu")


def test_unknown_gpu_lists_known_ones_and_suggests_closest():
    with pytest.raises(EstimateError) as err:
        parse_hardware("8xH10")
    message = str(err.value)
    assert "--hardware" in message and "'H10'" in message and "did you mean" in message
    assert all(name in message for name in KNOWN_GPUS)
    with pytest.raises(EstimateError, match="did you mean RTX4090"):
        parse_hardware("RTX4080")


@pytest.mark.parametrize("text", ["0xH100", "1x2x3xH100", "12xH100", "x", "8x"])
def test_malformed_hardware(text):
    with pytest.raises(EstimateError, match="--hardware"):
        parse_hardware(text)


@pytest.mark.parametrize(
    "text, kind, amount",
    [
        ("$500", "usd", 500),
        ("$50k", "usd", 50e3),
        ("$1.2M", "usd", 1.2e6),
        ("2000 USD", "usd", 2000),
        ("200 gpu-hours", "gpu_hours", 200),
        ("100k gpu-hours", "gpu_hours", 1e5),
        ("100k GPU hours", "gpu_hours", 1e5),
        ("8xH100 for 3 days", "time", 72),
        ("1xRTX4090 for 12 hours", "time", 12),
        ("H100 for 90 minutes", "time", 1.5),
    ],
)
def test_parse_budget(text, kind, amount):
    budget = parse_budget(text)
    assert (budget.kind, budget.amount) == (kind, pytest.approx(amount))


def test_budget_to_gpu_hours():
    h100x8 = parse_hardware("8xH100")
    assert parse_budget("8xH100 for 3 days").gpu_hours(h100x8) == 8 * 72
    assert parse_budget("$299").gpu_hours(h100x8) == pytest.approx(100)  # catalogue price $2.99
    assert parse_budget("$300").gpu_hours(h100x8, price=3.0) == pytest.approx(100)
    with pytest.raises(EstimateError, match="--price"):
        parse_budget("$300").gpu_hours(parse_hardware("cpu"))


def test_laptop_budget_is_ten_minutes_of_this_cpu_and_says_so():
    budget = parse_budget("laptop")
    assert budget.kind == "time" and budget.hardware.is_cpu
    assert budget.amount == pytest.approx(10 / 60)
    assert "10 minutes" in budget.note


@pytest.mark.parametrize(
    "text", ["lots of money", "", "$abc", "-5 gpu-hours", "8xH100 for ever", "8xH100 for 0 days", "8xQ100 for 3 days"]
)
def test_unparseable_budget(text):
    with pytest.raises(EstimateError, match="--budget") as err:
        parse_budget(text)
    assert "\n" not in str(err.value)
