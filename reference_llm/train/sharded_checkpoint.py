"""Sharded checkpoints: each rank writes its own shard through `torch.distributed.checkpoint` (DCP),
in safetensors files, and any number of ranks of any strategy reads them back.

Layout of a sharded step directory (the other files as in checkpoint.py):

    step_0000500/
        sharded.json      what was saved: every tensor's full shape, optimizer groups and step counts
        shards/shard-<rank+1>-model-<k>-of-<n>.safetensors   each rank's pieces, in n files per rank
        state.json        step, RNG, loader position, run config (as for every checkpoint)
        tokenizer.json

One layout for every strategy. Each tensor (weights `model/<name>`, AdamW moments
`optim/<name>/<key>`) is stored *flattened*: a rank writes the contiguous range of the flattened
tensor that it owns, and the safetensors header records the range's offset (DCP's
`saved_offsets`). FSDP2's row shards and DeepSpeed's flat partitions (ZeRO-3: a fixed share of each
parameter; ZeRO-1/2: a slice of a flat buffer) are all contiguous ranges of the flattened tensors,
so a checkpoint written by one strategy at one world size is read by another at another: DCP's
planner maps the ranges a reader needs onto the ranges that were written, and each rank reads only
the bytes it needs (safetensors slices). Its `saved_offsets` header is JSON; nothing is pickled.

Trust: DCP's default FileSystemReader keeps its metadata in a pickled `.metadata` file, and
unpickling a file can run code, so it is never used. The HuggingFace storage reader used here
takes its metadata from the safetensors headers (JSON), and before it runs, `ShardedCheckpoint`
checks every header itself (`_check_shard_files`): names, dtypes and ranges that tile each tensor
exactly. After reading, the values get the same checks as consolidated checkpoints
(checkpoint_checks.py: finite weights, finite moments, second moments not negative). Between the
ranks of a job DCP exchanges its plans with `all_gather_object` (pickle over our own process
group); those bytes never come from a file.

Atomicity: rank 0 makes a temporary directory and tells the other ranks its name; every rank writes
its shards there; after a barrier rank 0 writes sharded.json, state.json and the tokenizer and
renames the directory into place, as checkpoint.py does for a single writer.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError, safe_open
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, ReadItem, SavePlan, TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from reference_llm.distributed import runtime
from reference_llm.errors import CheckpointError
from reference_llm.train import files
from reference_llm.train.checkpoint_checks import (
    MAX_METADATA_BYTES,
    MAX_STEP,
    check_optimizer_state,
    check_param_groups,
    check_weights,
    parse_json,
    read_json,
)

MANIFEST_FILE = "sharded.json"
SHARDS_DIR = "shards"
FORMAT = "reference_llm-sharded"
FORMAT_VERSION = 1
MODEL, OPTIM = "model/", "optim/"
# Each rank's pieces go into files of about this size: DCP serialises one file in memory before
# writing it, so this bounds the extra memory a save needs.
FILE_BYTES = 256 << 20
_MAX_DIMS = 8
_SAVED_OFFSETS = "saved_offsets"  # DCP's key in the safetensors header's DCP_SHARDING_INFO


def model_key(name: str) -> str:
    return MODEL + name


def optim_key(name: str, state_key: str) -> str:
    return f"{OPTIM}{name}/{state_key}"


@dataclass
class Piece:
    """A contiguous range of a flattened tensor: elements offset .. offset + tensor.numel() - 1.
    `tensor` is 1-D; saving reads it, loading writes into it (it may be a view of a parameter, and
    of another dtype: the read is copied into it with a cast)."""

    offset: int
    tensor: torch.Tensor


@dataclass
class ShardedState:
    """What an engine saves, or wants filled when loading, on this rank."""

    pieces: dict[str, list[Piece]]  # key -> this rank's pieces (when saving: at most one, disjoint across ranks)
    shapes: dict[str, tuple[int, ...]]  # every key of the whole state -> its full shape
    param_groups: list[dict[str, Any]] = field(default_factory=list)  # optimizer groups, by parameter name
    steps: dict[str, float] = field(default_factory=dict)  # AdamW step count per parameter name


# ----------------------------------------------------------------------------------------------------
# Manifest: sharded.json
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    strategy: str
    world_size: int
    shapes: dict[str, tuple[int, ...]]
    param_groups: list[dict[str, Any]]
    steps: dict[str, float]

    @property
    def model_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k[len(MODEL) :]: v for k, v in self.shapes.items() if k.startswith(MODEL)}

    @property
    def state_keys(self) -> list[str]:
        """The per-element optimizer state keys (exp_avg, exp_avg_sq, ...)."""
        return sorted({k.rpartition("/")[2] for k in self.shapes if k.startswith(OPTIM)})

    def describe(self) -> str:
        return f"{self.strategy} on {self.world_size} rank(s)"

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "strategy": self.strategy,
                "world_size": self.world_size,
                "tensors": {k: list(v) for k, v in self.shapes.items()},
                "param_groups": self.param_groups,
                "steps": self.steps,
            },
            indent=1,
        )


def is_sharded(step_dir: Path) -> bool:
    return (step_dir / MANIFEST_FILE).is_file()


def read_manifest(step_dir: Path) -> Manifest:
    """sharded.json, every value typed and range-checked."""
    path = step_dir / MANIFEST_FILE
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {data.get('format_version')!r:.20} is not supported "
            f"(this version reads {FORMAT_VERSION})"
        )
    strategy, world = data.get("strategy"), data.get("world_size")
    if not isinstance(strategy, str) or len(strategy) > 32 or not isinstance(world, int) or not 1 <= world <= 1 << 20:
        raise CheckpointError(f"{path}: strategy must be a short name and world_size a positive integer")
    tensors = data.get("tensors")
    if not isinstance(tensors, dict) or not tensors:
        raise CheckpointError(f"{path}: tensors must be a non-empty object of shapes")
    shapes: dict[str, tuple[int, ...]] = {}
    for key, shape in tensors.items():
        if not (key.startswith(MODEL) or key.startswith(OPTIM)) or len(key) > 1024:
            raise CheckpointError(f"{path}: tensor {key!r:.80} is neither {MODEL}<name> nor {OPTIM}<name>/<key>")
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape)
        ):
            raise CheckpointError(f"{path}: tensor {key!r:.80} has an invalid shape")
        shapes[key] = tuple(shape)
    groups = data.get("param_groups", [])
    check_param_groups(groups, str(path))
    steps = data.get("steps", {})
    if not isinstance(steps, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= MAX_STEP for v in steps.values()
    ):
        raise CheckpointError(f"{path}: steps must map parameter names to step counts from 0 to {MAX_STEP:,}")
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return Manifest(strategy, world, shapes, groups, {k: float(v) for k, v in steps.items()})


# ----------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------


class _PieceSavePlanner(DefaultSavePlanner):
    """Writes each piece as a 1-D chunk of its flattened tensor, at its offset."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], offsets: Mapping[str, int]) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.shapes, self.offsets = shapes, offsets

    def create_local_plan(self) -> SavePlan:
        items = []
        for key, tensor in self.state_dict.items():
            offset = self.offsets[key]
            items.append(
                WriteItem(
                    index=MetadataIndex(key, torch.Size([offset])),
                    type=WriteItemType.SHARD,
                    tensor_data=TensorWriteData(
                        chunk=ChunkStorageMetadata(offsets=torch.Size([offset]), sizes=torch.Size([tensor.numel()])),
                        properties=TensorProperties.create_from_tensor(tensor),
                        size=torch.Size([math.prod(self.shapes[key])]),
                    ),
                )
            )
        self.plan = SavePlan(items)
        return self.plan

    def lookup_object(self, index: MetadataIndex) -> Any:
        return self.state_dict[index.fqn]


def _file_index(shapes: Mapping[str, tuple[int, ...]], world_size: int) -> dict[str, int]:
    """Which of a rank's files each key goes into (1-based), filling files of about FILE_BYTES with
    each rank's share. The same on every rank: it depends only on the full shapes."""
    index, used, mapping = 1, 0, {}
    for key, shape in shapes.items():
        size = 4 * math.prod(shape) // world_size
        if used and used + size > FILE_BYTES:
            index, used = index + 1, 0
        mapping[key] = index
        used += size
    return mapping


def save_sharded(
    run_dir: Path,
    final: Path,
    sharded: ShardedState,
    manifest: Manifest,
    write_rest: Callable[[Path], None],
    publish: Callable[[Path], None],
) -> None:
    """Write `final` (a step directory of `run_dir`) from every rank's `sharded` pieces. Collective.

    Rank 0 makes the temporary directory, and after every rank has written its shards,
    `write_rest(tmp)` (state.json, the tokenizer) runs on rank 0, which then renames it to `final`
    and calls `publish(final)` (the `latest` pointer). Errors on any rank become a CheckpointError
    on every rank; the temporary is removed."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    tmp_name = files.temp_name(final.name) if rank == 0 else ""
    error = ""
    if rank == 0:
        try:
            (run_dir / tmp_name / SHARDS_DIR).mkdir(parents=True)
        except OSError as exc:
            error = f"cannot create {run_dir / tmp_name} ({exc.strerror or exc})"
    tmp_name, error = runtime.broadcast_text(tmp_name), runtime.agree_on_error(error)
    tmp = run_dir / tmp_name
    try:
        if error:
            raise CheckpointError(error)
        state = {
            k: p[0].tensor.detach().to("cpu").contiguous()
            for k, p in sharded.pieces.items()
            if p and p[0].tensor.numel()
        }
        offsets = {k: p[0].offset for k, p in sharded.pieces.items() if p}
        writer = HuggingFaceStorageWriter(
            str(tmp / SHARDS_DIR),
            save_distributed=True,
            fqn_to_index_mapping=_file_index(manifest.shapes, manifest.world_size),
        )
        try:
            with _quiet_in_one_process():
                dcp.save(state, storage_writer=writer, planner=_PieceSavePlanner(manifest.shapes, offsets))
        except Exception as exc:  # DCP gathers every rank's failure into one exception on every rank
            raise CheckpointError(f"cannot write shards in {tmp} ({_first_line(exc)})") from None
        error = ""
        if rank == 0:
            try:
                files.write_text_atomic(tmp / MANIFEST_FILE, manifest.to_json())
                write_rest(tmp)
                for path in [*tmp.iterdir(), *(tmp / SHARDS_DIR).iterdir()]:
                    files.fsync_path(path)
                files.fsync_path(tmp / SHARDS_DIR)
                files.fsync_path(tmp)
                if final.exists():  # the same step saved again
                    files.remove(final)
                tmp.rename(final)
                files.fsync_path(run_dir)
                publish(final)
            except Exception as exc:  # any failure here must reach the other ranks, not leave them waiting
                error = f"cannot write checkpoint {final} ({getattr(exc, 'strerror', None) or _first_line(exc)})"
        error = runtime.agree_on_error(error)
        if error:
            raise CheckpointError(error)
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


class _PieceLoadPlanner(DefaultLoadPlanner):
    """Reads, for every target piece, the parts of the saved pieces that overlap it."""

    def __init__(self, targets: Mapping[str, list[Piece]]) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.targets = targets

    def create_local_plan(self) -> LoadPlan:
        requests: list[ReadItem] = []
        for key, pieces in self.targets.items():
            chunks = [
                ChunkStorageMetadata(offsets=torch.Size([p.offset]), sizes=torch.Size([p.tensor.numel()]))
                for p in pieces
                if p.tensor.numel()
            ]
            assert self.metadata is not None  # set_up_planner ran
            saved = self.metadata.state_dict_metadata[key]
            if not isinstance(saved, TensorStorageMetadata):  # the reader builds tensor entries only
                raise CheckpointError(f"{key!r:.80} is not a tensor in the checkpoint")
            requests += create_read_items_for_chunk_list(key, saved, chunks)
        return LoadPlan(requests)

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        pieces = [p for p in self.targets[read_item.dest_index.fqn] if p.tensor.numel()]
        piece = pieces[read_item.dest_index.index or 0]
        return piece.tensor.narrow(0, read_item.dest_offsets[0], read_item.lengths[0])

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        pass  # resolve_tensor handed out views of the targets: the data is already in place


@dataclass
class ShardedCheckpoint:
    """A sharded step directory, its manifest and shard headers checked; `load` fills pieces."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, step_dir: Path) -> ShardedCheckpoint:
        manifest = read_manifest(step_dir)
        _check_shard_files(step_dir / SHARDS_DIR, manifest)
        return cls(step_dir, manifest)

    def check_layout(self, shapes: Mapping[str, tuple[int, ...]], here: str) -> None:
        """The model this run builds against the one saved, by name and full shape: one line naming
        both sides and what would work."""
        saved = self.manifest.model_shapes
        problem = None
        for name, shape in shapes.items():
            if name not in saved:
                problem = f"has no tensor {name!r} that this model needs"
            elif saved[name] != tuple(shape):
                problem = f"holds {name!r} with shape {saved[name]} where this model has {tuple(shape)}"
            if problem:
                break
        extra = sorted(set(saved) - set(shapes))
        if problem is None and extra:
            problem = f"holds {extra[0]!r}, which this model does not have"
        if problem:
            raise CheckpointError(
                f"checkpoint {self.path} ({self.manifest.describe()}) {problem} ({here}): it is "
                f"for a different model config; resume with the [model] settings stored in its "
                f"state.json, or start a new run in another checkpoint.dir"
            )

    def load(self, targets: Mapping[str, list[Piece]]) -> None:
        """Fill every target piece from the shards (collective where a process group exists; every
        rank must pass the same keys), then check the values."""
        missing = sorted(set(targets) - set(self.manifest.shapes))
        if missing:
            raise CheckpointError(
                f"checkpoint {self.path} ({self.manifest.describe()}) has no {missing[0]!r}, which "
                f"this run needs to resume (optimizer state of another kind?); load its weights "
                f"only, after `python -m reference_llm.train.consolidate {self.path}`"
            )
        state = {k: (p[0].tensor if p else torch.empty(0)) for k, p in targets.items()}
        error = ""
        try:
            dcp.load(
                state,
                storage_reader=HuggingFaceStorageReader(str(self.path / SHARDS_DIR)),
                planner=_PieceLoadPlanner(targets),
                no_dist=not dist.is_initialized(),
            )
        except Exception as exc:  # a file changed or broke after it was checked
            error = f"{self.path}: reading the shards failed ({_first_line(exc)})"
        if not error:
            error = self._check_values(targets)
        error = runtime.agree_on_error(error)
        if error:
            raise CheckpointError(error)

    def _check_values(self, targets: Mapping[str, list[Piece]]) -> str:
        """checkpoint_checks on what this rank read: finite weights; finite optimizer moments, second
        moments not negative, step counts in range. Returns the first problem, or ""."""
        where = self.path / SHARDS_DIR
        weights = {
            f"{k[len(MODEL) :]}[{p.offset}:]": p.tensor for k, ps in targets.items() if k.startswith(MODEL) for p in ps
        }
        state: dict[str, dict[str, torch.Tensor]] = {}
        for key, pieces in targets.items():
            if key.startswith(OPTIM):
                name, _, state_key = key[len(OPTIM) :].rpartition("/")
                for piece in pieces:
                    entry = state.setdefault(
                        f"{name}[{piece.offset}:]", {"step": torch.tensor(self.manifest.steps.get(name, 0.0))}
                    )
                    entry[state_key] = piece.tensor
        groups = [{"params": sorted(state)}]
        try:
            check_weights(weights, where)
            if state:
                check_optimizer_state(
                    {"state": state, "param_groups": groups},
                    {name: next(t for k, t in s.items() if k != "step").shape for name, s in state.items()},
                    str(where),
                )
        except CheckpointError as exc:
            return str(exc)
        return ""


def _check_shard_files(shards: Path, manifest: Manifest) -> None:
    """Every shard file's header before DCP reads any: names the manifest lists, float32 1-D pieces,
    and pieces that tile each tensor exactly (no gap, no overlap, nothing outside it)."""
    try:
        paths = sorted(shards.iterdir())
    except OSError as exc:
        raise CheckpointError(f"{shards} is not readable ({exc.strerror or exc})") from None
    ranges: dict[str, list[tuple[int, int]]] = {key: [] for key in manifest.shapes}
    for path in paths:
        if path.suffix != ".safetensors" or not path.name.startswith("shard-") or not path.is_file():
            raise CheckpointError(f"{path} does not belong in a sharded checkpoint (only shard-*.safetensors files do)")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                keys = list(f.keys())
                shapes = {k: f.get_slice(k).get_shape() for k in keys}
                dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is corrupt or truncated ({exc})") from None
        text = header.get("DCP_SHARDING_INFO", "")
        if len(text) > MAX_METADATA_BYTES:
            raise CheckpointError(f"{path}: sharding metadata larger than {MAX_METADATA_BYTES >> 20} MiB")
        info = parse_json(text, f"{path} DCP_SHARDING_INFO") if text else None
        if not isinstance(info, dict):
            raise CheckpointError(f"{path} has no DCP_SHARDING_INFO header: not a shard this library wrote")
        for key in keys:
            if key not in ranges:
                raise CheckpointError(f"{path}: tensor {key!r:.80} is not listed in {MANIFEST_FILE}")
            offsets = info.get(key, {}).get(_SAVED_OFFSETS) if isinstance(info.get(key), dict) else None
            if (
                dtypes[key] != "F32"
                or len(shapes[key]) != 1
                or not isinstance(offsets, list)
                or len(offsets) != 1
                or not isinstance(offsets[0], int)
                or isinstance(offsets[0], bool)
                or offsets[0] < 0
            ):
                raise CheckpointError(
                    f"{path}: {key!r:.80} is not a float32 piece of a flattened tensor with its offset"
                )
            ranges[key].append((offsets[0], offsets[0] + shapes[key][0]))
    for key, spans in ranges.items():
        total, end = math.prod(manifest.shapes[key]), 0
        for start, stop in sorted(spans):
            if start != end:
                what = "overlap" if start < end else "a gap"
                raise CheckpointError(f"{shards}: the pieces of {key!r:.80} have {what} at element {min(start, end):,}")
            end = stop
        if end != total:
            raise CheckpointError(
                f"{shards}: the pieces of {key!r:.80} cover {end:,} of its {total:,} elements "
                f"(a rank's shard file is missing?)"
            )


def read_full(step_dir: Path, with_optimizer: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The whole checkpoint in this process: weights by name (full shapes) and, when asked, the
    optimizer state by name (`distributed.base.OptimizerState`). For one process resuming a sharded
    run, for generation, and for `consolidate`. Reads without any process group."""
    ckpt = ShardedCheckpoint.open(step_dir)
    m = ckpt.manifest
    keys = [k for k in m.shapes if k.startswith(MODEL) or with_optimizer]
    full = {k: torch.empty(m.shapes[k], dtype=torch.float32) for k in keys}
    targets = {k: [Piece(0, t.view(-1))] for k, t in full.items()}
    state = {k: (p[0].tensor) for k, p in targets.items()}
    try:
        with _quiet_in_one_process():
            dcp.load(
                state,
                storage_reader=HuggingFaceStorageReader(str(step_dir / SHARDS_DIR)),
                planner=_PieceLoadPlanner(targets),
                no_dist=True,
            )
    except Exception as exc:
        raise CheckpointError(f"{step_dir}: reading the shards failed ({_first_line(exc)})") from None
    error = ckpt._check_values(targets)
    if error:
        raise CheckpointError(error)
    weights = {k[len(MODEL) :]: t for k, t in full.items() if k.startswith(MODEL)}
    if not with_optimizer:
        return weights, None
    per_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in full.items():
        if key.startswith(OPTIM):
            name, _, state_key = key[len(OPTIM) :].rpartition("/")
            per_param.setdefault(name, {"step": torch.tensor(m.steps.get(name, 0.0))})[state_key] = tensor
    return weights, {"state": per_param, "param_groups": [dict(g) for g in m.param_groups]}


@contextlib.contextmanager
def _quiet_in_one_process() -> Iterator[None]:
    """DCP warns when it runs without a process group; one process reading or writing is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def manifest_for(sharded: ShardedState, strategy: str, world_size: int) -> Manifest:
    """The manifest of a checkpoint that `world_size` ranks of `strategy` write from `sharded`."""
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sharded.param_groups]
    return Manifest(strategy, world_size, dict(sharded.shapes), groups, dict(sharded.steps))
