"""Checkpoints: safetensors + JSON only, written atomically, never unpickled.

Layout (docs/architecture.md):

    <checkpoint.dir>/
        latest                   text file: the name of the newest complete step directory
        step_0000500/
            model.safetensors    consolidated weights by parameter name (tied tensors once)
            optimizer.safetensors  optimizer state as "<param name>:<key>" tensors; groups in metadata
            state.json           step, schedule, RNG states, loader state, run config, tokenizer fingerprint
            tokenizer.json       the tokenizer, so that a checkpoint is usable on its own

A step directory is written under a temporary name and renamed into place, and `latest` is replaced
by rename too, so a crash at any moment leaves the previous checkpoint and pointer intact. Pickle-based
formats (.pt, .pkl, .bin) are never read, not even with `torch.load(weights_only=True)`: loading a
checkpoint from someone else must not be able to run code.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from reference_llm.config import SECTIONS, RunConfig
from reference_llm.errors import CheckpointError, ReferenceLLMError
from reference_llm.model import ModelConfig, Transformer

if TYPE_CHECKING:
    from reference_llm.tokenizer import Tokenizer

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
TOKENIZER_FILE = "tokenizer.json"
LATEST = "latest"
FORMAT_VERSION = 1
_TMP_PREFIX = ".tmp-"
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


@dataclass
class Checkpoint:
    path: Path  # the step directory
    weights: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None  # by parameter name (see distributed/base.py); None if not asked for
    state: dict[str, Any]  # the contents of state.json

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def run_config(self) -> RunConfig:
        return run_config_from_dict(self.state["config"], self.path / STATE_FILE)


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------


def save_checkpoint(run_dir: str | Path, step: int, weights: dict[str, torch.Tensor],
                    optimizer_state: dict[str, Any] | None, state: dict[str, Any],
                    tokenizer: Tokenizer | None, keep: int = 2) -> Path:
    """Write `run_dir/step_XXXXXXX/` atomically, point `latest` at it, keep the newest `keep`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / step_dir_name(step)
    tmp = run_dir / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(_cpu_contiguous(weights), str(tmp / MODEL_FILE), metadata={"format": "pt"})
        if optimizer_state is not None:
            tensors, metadata = _flatten_optimizer_state(optimizer_state)
            save_file(tensors, str(tmp / OPTIMIZER_FILE), metadata=metadata)
        _write_text(tmp / STATE_FILE, json.dumps({"format_version": FORMAT_VERSION, **state}, indent=1))
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
        for written in tmp.iterdir():
            _fsync(written)
        _fsync(tmp)
        if final.exists():  # the same step saved again (e.g. a resumed run that had nothing left to do)
            old = run_dir / f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}"
            final.rename(old)
            shutil.rmtree(old)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_text(run_dir / LATEST, final.name + "\n")
    _fsync(run_dir)
    _prune(run_dir, keep, protect=final)
    return final


def _write_text(path: Path, text: str) -> None:
    """Write to a sibling temp file, flush it to disk, then rename over `path` (atomic on POSIX)."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries (new files, renames), to disk where the platform
    allows it: a rename is only as durable as what it points at."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prune(run_dir: Path, keep: int, protect: Path) -> None:
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if old != protect:
            shutil.rmtree(old, ignore_errors=True)


def _cpu_contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}


def _flatten_optimizer_state(opt: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """{"state": {name: {key: tensor}}, "param_groups": [...]} -> "name:key" tensors + JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for name, per_param in opt["state"].items():
        for key, value in per_param.items():
            tensors[f"{name}:{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in opt["param_groups"]]
    return _cpu_contiguous(tensors), {"param_groups": json.dumps(groups)}


# ----------------------------------------------------------------------------------------------------
# Finding and reading
# ----------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------
# State dicts: each tensor once, checked by name and shape before anything is copied
# ----------------------------------------------------------------------------------------------------


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with each shared tensor once, under its first name. safetensors refuses
    aliased tensors, and a tied head is restored by the model's own construction."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor
    return out


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy `weights` into `model`; CheckpointError names the first missing, unexpected or
    wrongly shaped tensor."""
    expected = unique_state_dict(model)
    check_weight_shapes({name: tensor.shape for name, tensor in expected.items()}, weights)
    with torch.no_grad():
        for name, tensor in expected.items():
            tensor.copy_(weights[name])


def check_weight_shapes(expected: dict[str, torch.Size], weights: dict[str, torch.Tensor]) -> None:
    """Checkpoint `weights` against the model's tensor names and full shapes: CheckpointError names the
    first missing, unexpected or wrongly shaped tensor. Engines that shard pass the unsharded shapes."""
    for name, shape in expected.items():
        if name not in weights:
            raise CheckpointError(f"checkpoint has no tensor {name!r} that the model needs "
                                  f"(is it for a different model config?)")
        if weights[name].shape != shape:
            raise CheckpointError(f"tensor {name!r} has shape {tuple(weights[name].shape)} in the checkpoint "
                                  f"but {tuple(shape)} in the model (different model config?)")
    for name in weights:
        if name not in expected:
            raise CheckpointError(f"checkpoint tensor {name!r} does not exist in the model "
                                  f"(is it for a different model config?)")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete step directories of a run, oldest first (temporary ones are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    steps = [p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()]
    return sorted(steps, key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The step directory that `run_dir/latest` names, or None when the run has none yet."""
    pointer = Path(run_dir) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    target = Path(run_dir) / name
    if not name.startswith("step_") or not (target / STATE_FILE).is_file():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a complete checkpoint directory")
    return target


def resolve_checkpoint(path: str | Path) -> Path:
    """A step directory from: a step directory, a run directory (via its `latest`), or a `latest` file."""
    path = Path(path)
    if path.is_file() and path.name == LATEST:
        path = path.parent
    if (path / STATE_FILE).is_file():
        return path
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is not None:
            return found
        planted = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        hint = f"; {', '.join(planted)} ignored: pickle files are never loaded" if planted else ""
        raise CheckpointError(f"{path} is neither a checkpoint (no {STATE_FILE}) nor a run directory "
                              f"(no {LATEST} file){hint}")
    raise CheckpointError(f"checkpoint not found: {path}")


def load_checkpoint(path: str | Path, with_optimizer: bool = True) -> Checkpoint:
    """Read a checkpoint (step directory, run directory or `latest` file) into CPU tensors."""
    step_dir = resolve_checkpoint(path)
    state = _read_state(step_dir / STATE_FILE)
    weights, _ = _read_safetensors(step_dir / MODEL_FILE)
    optimizer_state = None
    if with_optimizer:
        opt_path = step_dir / OPTIMIZER_FILE
        if not opt_path.is_file():
            raise CheckpointError(f"{opt_path} is missing: this checkpoint has no optimizer state to resume from")
        optimizer_state = _unflatten_optimizer_state(opt_path)
    return Checkpoint(path=step_dir, weights=weights, optimizer_state=optimizer_state, state=state)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer, RunConfig]:
    """The trained model (in eval mode, on `device`), its tokenizer and run config, for generation,
    evaluation and export."""
    from reference_llm.tokenizer import load_tokenizer

    ckpt = load_checkpoint(path, with_optimizer=False)
    config = ckpt.run_config
    model = Transformer(config.model)
    load_weights(model, ckpt.weights)
    tok_path = ckpt.path / TOKENIZER_FILE
    if not tok_path.is_file():
        raise CheckpointError(f"{tok_path} is missing: a checkpoint must carry its tokenizer")
    try:
        tokenizer = load_tokenizer(tok_path)
    except ReferenceLLMError as exc:
        raise CheckpointError(f"{tok_path}: {exc}") from None
    expected = ckpt.state.get("tokenizer_fingerprint")
    if expected and tokenizer.fingerprint() != expected:
        raise CheckpointError(f"{tok_path} is not the tokenizer this model was trained with (fingerprint differs)")
    return model.to(device).eval(), tokenizer, config


def save_model(model: Transformer, tokenizer: Tokenizer, run_dir: str | Path, note: str = "") -> Path:
    """Write `model` and `tokenizer` as step 0 of a run directory (no optimizer state): the inverse of
    `load_model`, for models that come from elsewhere (an import, a test) rather than a training run."""

    state = {"step": 0, "config": RunConfig(model=model.config).to_dict(),
             "tokenizer_fingerprint": tokenizer.fingerprint(), "note": note}
    return save_checkpoint(run_dir, 0, unique_state_dict(model), None, state, tokenizer)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(state, dict) or not {"step", "config"} <= set(state):
        raise CheckpointError(f"{path} lacks the keys 'step' and 'config'")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format_version')!r} is not supported "
                              f"(this version reads {FORMAT_VERSION})")
    return state


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (on the CPU) and header metadata of a safetensors file."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({exc})") from None


def _unflatten_optimizer_state(path: Path) -> dict[str, Any]:
    tensors, metadata = _read_safetensors(path)
    try:
        groups = json.loads(metadata["param_groups"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has no valid 'param_groups' metadata ({exc})") from None
    state: dict[str, dict[str, torch.Tensor]] = {}
    for flat, tensor in tensors.items():
        name, _, key = flat.rpartition(":")
        state.setdefault(name, {})[key] = tensor
    for group in groups:
        if "betas" in group:  # JSON has no tuples; AdamW unpacks betas either way, but keep its own type
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def run_config_from_dict(data: dict[str, Any], source: Path | str = "state.json") -> RunConfig:
    """Rebuild the RunConfig stored by `RunConfig.to_dict()` (every model field, not a preset)."""
    try:
        sections = {name: cls(**data[name]) for name, cls in SECTIONS.items()}
        return RunConfig(model=ModelConfig.from_dict(data["model"]), **sections)
    except (KeyError, TypeError, ReferenceLLMError) as exc:
        raise CheckpointError(f"{source}: stored run config is invalid ({exc})") from None


# ----------------------------------------------------------------------------------------------------
# Random number generator states, as JSON (never pickle)
# ----------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states as JSON-serialisable values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(_unb64(state["torch"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"stored RNG state is invalid ({exc})") from None


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


__all__ = [
    "Checkpoint", "capture_rng_state", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "load_model",
    "resolve_checkpoint", "restore_rng_state", "run_config_from_dict", "save_checkpoint", "step_dir_name",
]
