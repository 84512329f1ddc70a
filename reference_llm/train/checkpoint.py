"""Checkpoints: safetensors + JSON only, written atomically, never unpickled.

Layout (docs/architecture.md):

    <checkpoint.dir>/
        latest                   text file: the name of the newest complete step directory
        step_0000500/
            model.safetensors    consolidated weights by parameter name (tied tensors once)
            optimizer.safetensors  optimizer state as "<param name>:<key>" tensors; groups in metadata
            state.json           step, schedule, RNG states, loader state, run config, tokenizer fingerprint
            tokenizer.json       the tokenizer, so that a checkpoint is usable on its own

Sharded strategies (FSDP2, ZeRO) write each rank's shard instead, and no rank gathers the model:
`sharded.json` + `shards/` in place of the two .safetensors files (sharded_checkpoint.py). Everything
here reads both layouts; `python -m reference_llm.train.consolidate` adds model.safetensors to a
sharded step directory for tools that read that file.

A step directory is written under a temporary name and renamed into place, and `latest` is replaced
by rename too, so a crash at any moment leaves the previous checkpoint and pointer intact; old step
directories are renamed away before they are deleted. Temporaries left by killed processes are removed
by the next run that writes to the directory (see `files.py`). A full disk or a directory that cannot
be written is a CheckpointError that says how much space a checkpoint needs.

Reading trusts nothing (checkpoint_checks.py): JSON has size and depth limits, every value is typed
and range-checked, every tensor's dtype, values and shape are checked, and the model config is checked
against its bounds and the free memory before a model is built. Pickle-based formats (.pt, .pkl, .bin)
are never read, not even with `torch.load(weights_only=True)`: loading a checkpoint from someone else
must not be able to run code.
"""

from __future__ import annotations

import base64
import errno
import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from reference_llm.config import RunConfig, stored_run_config
from reference_llm.distributed import runtime
from reference_llm.errors import CheckpointError, ReferenceLLMError, TokenizerError
from reference_llm.model import Transformer
from reference_llm.train import files
from reference_llm.train.checkpoint_checks import (
    MAX_METADATA_BYTES,
    STEP_DIR,
    check_optimizer_state,
    check_param_groups,
    check_state,
    check_weights,
    parse_json,
    read_json,
)
from reference_llm.train.sharded_checkpoint import (
    ShardedState,
    is_sharded,
    manifest_for,
    read_full,
    read_manifest,
    save_sharded,
)

if TYPE_CHECKING:
    from reference_llm.tokenizer import Tokenizer

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
TOKENIZER_FILE = "tokenizer.json"
LATEST = "latest"
FORMAT_VERSION = 1
MAX_TOKENIZER_BYTES = 256 << 20  # a 128k-token BPE tokenizer.json is about 10 MB
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


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    state: dict[str, Any],
    tokenizer: Tokenizer | None,
    keep: int = 2,
) -> Path:
    """Write `run_dir/step_XXXXXXX/` atomically, point `latest` at it, keep the newest `keep`.

    A directory that cannot be written (full, read-only, not ours) is a CheckpointError that names the
    space a checkpoint needs; the previous checkpoint and `latest` are left as they were."""
    run_dir = Path(run_dir)
    final = run_dir / step_dir_name(step)
    weights = _cpu_contiguous(weights)
    tensors, metadata = flatten_optimizer_state(optimizer_state) if optimizer_state is not None else ({}, {})
    needed = sum(t.numel() * t.element_size() for t in (*weights.values(), *tensors.values())) + (1 << 20)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_run_dir(run_dir)  # a killed run's leftovers would hold space this checkpoint needs
        free = shutil.disk_usage(run_dir).free
        if free < needed:
            raise OSError(errno.ENOSPC, f"only {_size(free)} free")
        _write_step_dir(run_dir, final, weights, tensors, metadata, state, tokenizer)
        files.write_text_atomic(run_dir / LATEST, final.name + "\n")
    except (OSError, SafetensorError, TokenizerError) as exc:
        try:
            previous = _read_latest(run_dir)
        except CheckpointError:
            previous = None
        kept = f"{previous.name} is intact" if previous is not None else "no earlier checkpoint exists"
        reason = getattr(exc, "strerror", None) or exc
        raise CheckpointError(
            f"cannot write checkpoint {final} ({reason}): a checkpoint of this run "
            f"needs about {_size(needed)} (and room for checkpoint.keep={keep} of them plus the "
            f"one being written); {kept}"
        ) from None
    _prune(run_dir, keep, protect=final)
    return final


def save_sharded_checkpoint(
    run_dir: str | Path,
    step: int,
    sharded: ShardedState,
    strategy: str,
    state: dict[str, Any],
    tokenizer: Tokenizer | None,
    keep: int = 2,
) -> Path:
    """Write `run_dir/step_XXXXXXX/` with every rank writing its own pieces of the weights and
    optimizer state (collective: call on every rank, with that rank's `sharded`; rank 0's `state`
    is stored). Atomic, pointed at by `latest` and pruned to `keep`, as `save_checkpoint`."""
    run_dir = Path(run_dir)
    final = run_dir / step_dir_name(step)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    manifest = manifest_for(sharded, strategy, world)
    needed = sum(4 * math.prod(shape) for shape in manifest.shapes.values()) + (1 << 20)
    error = ""
    if rank == 0:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            clean_run_dir(run_dir)  # a killed run's leftovers would hold space this checkpoint needs
            free = shutil.disk_usage(run_dir).free
            error = f"only {_size(free)} free" if free < needed else ""
        except OSError as exc:
            error = exc.strerror or str(exc)
    error = runtime.agree_on_error(error)

    def write_rest(tmp: Path) -> None:
        files.write_text_atomic(tmp / STATE_FILE, json.dumps({"format_version": FORMAT_VERSION, **state}, indent=1))
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)

    try:
        if error:
            raise CheckpointError(error)
        save_sharded(
            run_dir,
            final,
            sharded,
            manifest,
            write_rest,
            publish=lambda step_dir: files.write_text_atomic(run_dir / LATEST, step_dir.name + "\n"),
        )
    except CheckpointError as exc:
        # Every rank gets here together: the ranks agree on each error before raising it.
        try:
            previous = _read_latest(run_dir)
        except CheckpointError:
            previous = None
        kept = f"{previous.name} is intact" if previous is not None else "no earlier checkpoint exists"
        raise CheckpointError(
            f"cannot write checkpoint {final} ({getattr(exc, 'strerror', None) or exc}): a "
            f"checkpoint of this run needs about {_size(needed)} over all ranks (and room for "
            f"checkpoint.keep={keep} of them plus the one being written); {kept}"
        ) from None
    if rank == 0:
        _prune(run_dir, keep, protect=final)
    return final


def _write_step_dir(
    run_dir: Path,
    final: Path,
    weights: dict[str, torch.Tensor],
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    state: dict[str, Any],
    tokenizer: Tokenizer | None,
) -> None:
    tmp = run_dir / files.temp_name(final.name)
    tmp.mkdir()
    try:
        save_file(weights, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        if metadata:
            save_file(tensors, str(tmp / OPTIMIZER_FILE), metadata=metadata)
        files.write_text_atomic(tmp / STATE_FILE, json.dumps({"format_version": FORMAT_VERSION, **state}, indent=1))
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
        for written in tmp.iterdir():
            files.fsync_path(written)
        files.fsync_path(tmp)
        if final.exists():  # the same step saved again (e.g. a resumed run that had nothing left to do)
            files.remove(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files.fsync_path(run_dir)


def clean_run_dir(run_dir: str | Path) -> None:
    """Remove what killed runs left in `run_dir`: temporaries whose writer is dead, and step directories
    that lack their state or weights (a deletion cut short). Called by the run that writes to the
    directory, at its start (`latest_checkpoint`) and before each save; never by readers."""
    run_dir = Path(run_dir)
    files.remove_stale_temps(run_dir)
    try:
        pointed = _read_latest(run_dir)
    except CheckpointError:
        pointed = None
    for path in _step_dirs(run_dir):
        if path != pointed and not _complete(path):
            files.remove(path)


def _prune(run_dir: Path, keep: int, protect: Path) -> None:
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if old != protect:
            files.remove(old)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _cpu_contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}


def flatten_optimizer_state(opt: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """{"state": {name: {key: tensor}}, "param_groups": [...]} -> "name:key" tensors + JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for name, per_param in opt["state"].items():
        for key, value in per_param.items():
            tensors[f"{name}:{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in opt["param_groups"]]
    return _cpu_contiguous(tensors), {"param_groups": json.dumps(groups)}


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
            raise CheckpointError(
                f"checkpoint has no tensor {name!r} that the model needs (is it for a different model config?)"
            )
        if weights[name].shape != shape:
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(weights[name].shape)} in the checkpoint "
                f"but {tuple(shape)} in the model (different model config?)"
            )
    for name in weights:
        if name not in expected:
            raise CheckpointError(
                f"checkpoint tensor {name!r} does not exist in the model (is it for a different model config?)"
            )


# ----------------------------------------------------------------------------------------------------
# Finding and reading
# ----------------------------------------------------------------------------------------------------


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete step directories of a run, oldest first (temporary and half-deleted ones are ignored)."""
    return sorted((p for p in _step_dirs(Path(run_dir)) if _complete(p)), key=lambda p: int(p.name[5:]))


def _step_dirs(run_dir: Path) -> list[Path]:
    try:
        return [p for p in run_dir.iterdir() if STEP_DIR.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def _complete(step_dir: Path) -> bool:
    return (step_dir / STATE_FILE).is_file() and ((step_dir / MODEL_FILE).is_file() or is_sharded(step_dir))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The step directory that `run_dir/latest` names, or None when the run has none yet. For the run
    that writes to `run_dir` (it resumes from what this returns): first removes what killed runs left
    there (`clean_run_dir`)."""
    if Path(run_dir).is_dir():
        clean_run_dir(run_dir)
    return _read_latest(Path(run_dir))


def _read_latest(run_dir: Path) -> Path | None:
    """`latest` may name nothing but a complete step directory of this run: a plain `step_NNNNNNN`,
    not a path, and not a link that leads elsewhere."""
    pointer = run_dir / LATEST
    if not pointer.is_file():
        return None
    try:
        with pointer.open("rb") as f:
            name = f.read(64).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{pointer} is not readable ({exc})") from None
    target = run_dir / name
    if not STEP_DIR.fullmatch(name) or target.is_symlink() or not _complete(target):
        raise CheckpointError(
            f"{pointer} names {name!r:.40}, which is not a complete checkpoint directory of this run (step_NNNNNNN)"
        )
    return target


def resolve_checkpoint(path: str | Path) -> Path:
    """A step directory from: a step directory, a run directory (via its `latest`), or a `latest` file."""
    path = Path(path)
    if path.is_file() and path.name == LATEST:
        path = path.parent
    if (path / STATE_FILE).is_file():
        return path
    if path.is_dir():
        found = _read_latest(path)
        if found is not None:
            return found
        planted = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        hint = f"; {', '.join(planted)} ignored: pickle files are never loaded" if planted else ""
        raise CheckpointError(
            f"{path} is neither a checkpoint (no {STATE_FILE}) nor a run directory (no {LATEST} file){hint}"
        )
    raise CheckpointError(f"checkpoint not found: {path}")


def load_checkpoint(path: str | Path, with_optimizer: bool = True) -> Checkpoint:
    """Read a checkpoint (step directory, run directory or `latest` file) into CPU tensors, each checked
    (checkpoint_checks.py): CheckpointError names the first thing that is wrong."""
    step_dir = resolve_checkpoint(path)
    state = _read_state(step_dir / STATE_FILE)
    if not (step_dir / MODEL_FILE).is_file():  # sharded: gathered here, in this one process
        weights, optimizer_state = read_full(step_dir, with_optimizer)
        return Checkpoint(path=step_dir, weights=weights, optimizer_state=optimizer_state, state=state)
    weights, _ = _read_safetensors(step_dir / MODEL_FILE)
    check_weights(weights, step_dir / MODEL_FILE)
    optimizer_state = None
    if with_optimizer and is_sharded(step_dir) and not (step_dir / OPTIMIZER_FILE).is_file():
        _, optimizer_state = read_full(step_dir, with_optimizer=True)  # consolidated weights only
    elif with_optimizer:
        opt_path = step_dir / OPTIMIZER_FILE
        if not opt_path.is_file():
            raise CheckpointError(f"{opt_path} is missing: this checkpoint has no optimizer state to resume from")
        optimizer_state = _unflatten_optimizer_state(opt_path)
        # Against the weights stored beside it; engines check again against the model's parameters,
        # which also covers parameters that are not in model.safetensors (LoRA adapters).
        check_optimizer_state(
            optimizer_state, {name: t.shape for name, t in weights.items()}, str(opt_path), complete=False
        )
    return Checkpoint(path=step_dir, weights=weights, optimizer_state=optimizer_state, state=state)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer, RunConfig]:
    """The trained model (in eval mode, on `device`), its tokenizer and run config, for generation,
    evaluation and export."""
    from reference_llm.tokenizer import load_tokenizer

    step_dir = resolve_checkpoint(path)
    config = run_config_from_dict(_read_state(step_dir / STATE_FILE)["config"], step_dir / STATE_FILE)
    tok_path = step_dir / TOKENIZER_FILE
    if not tok_path.is_file():
        raise CheckpointError(f"{tok_path} is missing: a checkpoint must carry its tokenizer")
    if tok_path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise CheckpointError(f"{tok_path} is larger than {MAX_TOKENIZER_BYTES >> 20} MiB, which no tokenizer is")
    # Before anything large is read or built: the model, and the weights read to fill it.
    try:
        config.model.check_memory(extra_bytes=_weights_bytes(step_dir), what=f"loading {step_dir}")
    except (ReferenceLLMError, OSError) as exc:
        raise CheckpointError(str(exc)) from None
    ckpt = load_checkpoint(step_dir, with_optimizer=False)
    model = Transformer(config.model)
    load_weights(model, ckpt.weights)
    try:
        tokenizer = load_tokenizer(tok_path)
    except ReferenceLLMError as exc:
        raise CheckpointError(f"{tok_path}: {exc}") from None
    except RecursionError:
        raise CheckpointError(f"{tok_path} is nested too deeply to be a tokenizer") from None
    expected = ckpt.state.get("tokenizer_fingerprint")
    if expected and tokenizer.fingerprint() != expected:
        raise CheckpointError(f"{tok_path} is not the tokenizer this model was trained with (fingerprint differs)")
    return model.to(device).eval(), tokenizer, config


def save_model(model: Transformer, tokenizer: Tokenizer, run_dir: str | Path, note: str = "") -> Path:
    """Write `model` and `tokenizer` as step 0 of a run directory (no optimizer state): the inverse of
    `load_model`, for models that come from elsewhere (an import, a test) rather than a training run."""

    state = {
        "step": 0,
        "config": RunConfig(model=model.config).to_dict(),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "note": note,
    }
    return save_checkpoint(run_dir, 0, unique_state_dict(model), None, state, tokenizer)


def _weights_bytes(step_dir: Path) -> int:
    """Bytes of the weights a checkpoint stores (read before anything is loaded)."""
    if (step_dir / MODEL_FILE).is_file():
        return (step_dir / MODEL_FILE).stat().st_size
    return sum(4 * math.prod(shape) for shape in read_manifest(step_dir).model_shapes.values())


def checkpoint_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's state.json, checked: for engines that load the tensors themselves (sharded)."""
    return _read_state(resolve_checkpoint(path) / STATE_FILE)


def _read_state(path: Path) -> dict[str, Any]:
    """state.json, its values checked and its run config buildable."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    state = read_json(path)
    check_state(state, path, FORMAT_VERSION)
    run_config_from_dict(state["config"], path)
    return state  # check_state made sure it is a dict


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
    text = metadata.get("param_groups")
    if text is None or len(text) > MAX_METADATA_BYTES:
        raise CheckpointError(f"{path} has no valid 'param_groups' metadata")
    groups = parse_json(text, f"{path} param_groups")
    check_param_groups(groups, str(path))
    state: dict[str, dict[str, torch.Tensor]] = {}
    for flat, tensor in tensors.items():
        name, _, key = flat.rpartition(":")
        if not name:
            raise CheckpointError(f"{path}: tensor {flat!r:.80} is not named '<parameter>:<state key>'")
        state.setdefault(name, {})[key] = tensor
    for group in groups:
        if "betas" in group:  # JSON has no tuples; AdamW unpacks betas either way, but keep its own type
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def run_config_from_dict(data: dict[str, Any], source: Path | str = "state.json") -> RunConfig:
    """Rebuild the RunConfig stored by `RunConfig.to_dict()` (every model field, not a preset)."""
    try:
        return stored_run_config(data)
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
        "numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
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
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(f"stored RNG state is invalid ({exc})") from None


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


__all__ = [
    "Checkpoint",
    "capture_rng_state",
    "checkpoint_state",
    "clean_run_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_model",
    "resolve_checkpoint",
    "restore_rng_state",
    "run_config_from_dict",
    "save_checkpoint",
    "save_sharded_checkpoint",
    "step_dir_name",
]
