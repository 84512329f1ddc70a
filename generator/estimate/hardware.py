"""The accelerators the estimator knows, and this CPU as one (its peak from cpu_peak.py).

Peak figures are the vendors' dense (no structured sparsity) tensor-core numbers for the precision a
training step runs its matmuls in. Memory is what the device reports as usable (nvidia-smi / rocm-smi),
in GiB. Prices are round, representative on-demand cloud prices per GPU-hour, dated in `PRICES_AS_OF`;
they move every quarter, so every printout says which price it used and `--price` replaces it.

The MFU base (model FLOPs utilisation, PaLM's definition: model FLOPs / time / peak) per family is fitted
to published runs where there are any; `mfu.default_mfu` scales it by model shape and node count.

Sources for the peaks: NVIDIA A100 datasheet (2021), H100 datasheet (2023), H200 product brief (2024),
HGX B200 datasheet (2024), L40S datasheet (2023), A10 datasheet (2021), T4 datasheet (2019),
Ada Lovelace architecture whitepaper v1.1 (RTX 4090, FP32-accumulate column), AMD Instinct MI300X
datasheet (2023).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from generator.estimate.cpu_peak import CPU_TFLOPS_ENV, cpu_tflops
from generator.estimate.precision import FLOAT8
from reference_llm.config import Dtype, auto_dtype, host_cpu_flags

PRICES_AS_OF = "2025-06"


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator model. `*_tflops` are dense peaks; None where the precision has no tensor-core path."""

    name: str
    bf16_tflops: float  # for T4 (no bf16) this is its fp16 peak; the estimator says so
    fp32_tflops: float  # plain IEEE fp32 (PyTorch's default matmul precision, TF32 off)
    fp8_tflops: float | None
    memory_gib: float
    price_per_hour: float  # USD per GPU-hour, as of PRICES_AS_OF
    mfu: float  # MFU base of this family for bf16 training (see mfu.default_mfu)
    note: str = ""
    is_cpu: bool = False
    # bf16 tensor cores (NVIDIA compute capability 8.0 and later, AMD CDNA); a CPU's come from its flags
    # (`Hardware.auto_dtype`)
    native_bf16: bool = True

    def peak_tflops(self, precision: str) -> float | None:
        """The dense peak for a `precision.PRECISIONS` name."""
        peaks = {Dtype.BFLOAT16: self.bf16_tflops, Dtype.FLOAT32: self.fp32_tflops, FLOAT8: self.fp8_tflops}
        return peaks[precision]


# MFU bases by family: fitted to published runs where there are any (generator/estimate/mfu.py,
# docs/estimator.md): A100-80GB 0.78, A100-40GB 0.70, H100 0.54. Assumed where there are none: H200 and
# H100-PCIe as H100 (same chip); B200 and MI300X as H100 (newer, faster chips have so far reached a
# lower share of their peak, not a higher one); the 16-48 GB Ampere/Ada cards as the A100-40GB (small
# memory limits the micro-batch; nanoGPT issue #182 reports 0.55 of an RTX 4090's peak for GPT-2 124M,
# the model gives 0.49).
_MFU_A100_80, _MFU_A100_40, _MFU_HOPPER, _MFU_NEWER, _MFU_SMALL = 0.78, 0.70, 0.54, 0.54, 0.70

KNOWN_GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        GPUSpec("A100-40GB", 312.0, 19.5, None, 40.0, 1.29, _MFU_A100_40),
        GPUSpec("A100-80GB", 312.0, 19.5, None, 80.0, 1.79, _MFU_A100_80),
        GPUSpec("H100-SXM", 989.0, 67.0, 1979.0, 79.6, 2.99, _MFU_HOPPER),
        GPUSpec("H100-PCIe", 756.0, 51.0, 1513.0, 79.6, 2.49, _MFU_HOPPER),
        GPUSpec("H200", 989.0, 67.0, 1979.0, 140.4, 3.79, _MFU_HOPPER),
        GPUSpec("B200", 2250.0, 75.0, 4500.0, 179.0, 4.99, _MFU_NEWER),
        GPUSpec("MI300X", 1307.4, 163.4, 2614.9, 192.0, 2.99, _MFU_NEWER),
        GPUSpec("L40S", 362.1, 91.6, 733.0, 44.5, 0.99, _MFU_SMALL),
        GPUSpec("A10", 125.0, 31.2, None, 22.5, 0.75, _MFU_SMALL),
        GPUSpec(
            "T4",
            65.0,
            8.1,
            None,
            15.0,
            0.35,
            _MFU_SMALL,
            note="no bf16: runs fp16 with loss scaling",
            native_bf16=False,
        ),
        GPUSpec("RTX4090", 165.2, 82.6, 330.3, 24.0, 0.59, _MFU_SMALL),
    )
}

# Names people type for the same card. Bare "A100" and "H100" mean the common training variants.
ALIASES: dict[str, str] = {
    "A100": "A100-80GB",
    "A100-40G": "A100-40GB",
    "A100-80G": "A100-80GB",
    "A100-40": "A100-40GB",
    "A100-80": "A100-80GB",
    "H100": "H100-SXM",
    "H100SXM": "H100-SXM",
    "H100-80GB": "H100-SXM",
    "H100PCIE": "H100-PCIe",
    "H200-141GB": "H200",
    "RTX-4090": "RTX4090",
    "MI300": "MI300X",
    "L40": "L40S",
}

# CPU: peak is measured (or given), memory is the machine's RAM, and a laptop costs nothing per hour.
_MFU_CPU = 0.35


def lookup_gpu(name: str) -> GPUSpec | None:
    """Case-insensitive lookup by catalogue name or alias; None when unknown."""
    key = name.strip().upper().replace("_", "-").replace(" ", "-")
    by_upper = {n.upper(): spec for n, spec in KNOWN_GPUS.items()}
    if key in by_upper:
        return by_upper[key]
    for alias, target in ALIASES.items():
        if key == alias.upper():
            return KNOWN_GPUS[target]
    return None


def cpu_memory_gib() -> float:
    """Physical memory of this machine in GiB (what a single CPU process could at most use)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a 16 GiB laptop
        return 16.0


def cpu_spec(tflops: float | None = None) -> GPUSpec:
    """The CPU as a device: peak from `tflops`, else LLMGEN_CPU_TFLOPS, else measured (see cpu_peak.py)."""
    if tflops is not None:
        bf16 = fp32 = tflops
    else:
        bf16, fp32 = cpu_tflops(Dtype.BFLOAT16), cpu_tflops(Dtype.FLOAT32)
    source = "given" if tflops is not None or os.environ.get(CPU_TFLOPS_ENV) else "measured"
    return GPUSpec(
        "cpu",
        bf16_tflops=bf16,
        fp32_tflops=fp32,
        fp8_tflops=None,
        memory_gib=cpu_memory_gib(),
        price_per_hour=0.0,
        mfu=_MFU_CPU,
        note=f"{source} matmul peak: bf16 {bf16:.3f}, fp32 {fp32:.3f} TFLOP/s",
        is_cpu=True,
    )


@dataclass(frozen=True)
class Hardware:
    """`nodes` machines with `gpus_per_node` devices each. CPU is one node with one device."""

    nodes: int
    gpus_per_node: int
    gpu: GPUSpec

    @property
    def is_cpu(self) -> bool:
        return self.gpu.is_cpu

    @property
    def n_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def auto_dtype(self) -> Dtype:
        """What `train.dtype = "auto"` trains in here, by reference_llm's own rule (`config.auto_dtype`).
        A CPU is this machine's, judged by its flags; where they cannot be read (not Linux) it counts as
        having no native bf16."""
        if self.is_cpu:
            return auto_dtype("cpu", cpu_flags=host_cpu_flags() or ())
        return auto_dtype("cuda", gpu_bf16=self.gpu.native_bf16)

    def compute_precision(self, precision: str) -> str:
        """`precision` (a `precision.PRECISIONS` name or "auto") with "auto" resolved by `auto_dtype`."""
        return self.auto_dtype().value if precision == Dtype.AUTO else precision

    def __str__(self) -> str:
        if self.is_cpu:
            return "cpu"
        if self.nodes == 1:
            return f"{self.gpus_per_node}x{self.gpu.name}"
        return f"{self.nodes}x{self.gpus_per_node}x{self.gpu.name}"
