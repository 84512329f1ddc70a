"""Deferred initialisation: build a model without memory, then produce its initial values one tensor
at a time, equal bit for bit to what building it on the CPU would have produced.

A sharded rank should never hold the whole model. PyTorch's answer is the meta device: a module
built under `torch.device("meta")` has tensors with shapes and no storage, FSDP2 shards them, and
`module.to_empty()` allocates only each rank's shard. The shard then needs its initial values. Models
usually re-run their own init on the shard (torchtitan's `init_weights`), but a CPU random generator
cannot start in the middle of a tensor, so every rank would draw different numbers from what one
process draws, and a sharded run would not start from the weights a single process starts from.

`record_init` instead builds the model on the meta device while a dispatch mode records every
operation that creates or writes a meta tensor, and, for operations that draw random numbers, the
CPU generator's state just before the draw, advancing the generator exactly as the CPU construction
would (it runs the draw on a throw-away CPU tensor). `InitRecord.value(name)` later replays the
operations that determine one tensor, on the CPU and with the recorded generator states, and returns
its full value: a rank keeps its shard of it and drops the rest, so memory holds one full tensor at
a time, never the model. Replay starts from the last operation that overwrote the whole tensor
(`normal_`, `uniform_`, `fill_`, ...), so a weight that was initialised twice is generated once.

After `record_init` the global generator is where `factory()` on the CPU would have left it, so
dropout and data shuffles later in the run draw the same numbers as in a single-process run.
This is the idea of torchdistx's `deferred_init` (record on fake tensors, replay per tensor),
written for one purpose: construction-time init of a model's parameters and buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from reference_llm.errors import DistributedError

_aten = torch.ops.aten
# In-place operations whose result does not depend on the tensor's previous values: replay of a
# tensor can start at the last one of these that covered all of it.
_OVERWRITES = frozenset(
    {
        _aten.normal_.default,
        _aten.uniform_.default,
        _aten.fill_.Scalar,
        _aten.fill_.Tensor,
        _aten.zero_.default,
        _aten.copy_.default,
        _aten.bernoulli_.float,
        _aten.random_.default,
        getattr(_aten.random_, "from"),
        _aten.exponential_.default,
        _aten.log_normal_.default,
        _aten.cauchy_.default,
        _aten.geometric_.default,
    }
)


@dataclass(frozen=True)
class _Ref:
    """A meta tensor as an operation saw it: which storage, its view geometry, and how many writes
    that storage had received by then."""

    storage: int
    version: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


@dataclass
class _Event:
    func: Any  # an aten OpOverload
    args: Any  # with meta tensors replaced by _Ref
    kwargs: Any
    rng_state: torch.Tensor | None  # the CPU generator before this operation drew, for random ones
    output: int = 0  # for the event that created a storage: which flattened output it is
    writes: _Ref | None = None  # for an in-place event: the tensor it wrote


@dataclass
class _History:
    """Everything that happened to one storage: the event that created it, then the in-place writes."""

    dtype: torch.dtype
    numel: int  # elements of the storage
    events: list[_Event] = field(default_factory=list)

    @property
    def version(self) -> int:
        return len(self.events)


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _is_meta(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == "meta"


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.histories: dict[int, _History] = {}
        # Every meta tensor seen stays referenced, so that no storage address is reused for another.
        self._alive: list[torch.Tensor] = []

    def ref(self, t: torch.Tensor) -> _Ref:
        key = _storage_key(t)
        if key not in self.histories:
            raise DistributedError(
                "deferred init: the model's constructor used a meta tensor made outside it; "
                "build the whole model inside the factory"
            )
        return _Ref(key, self.histories[key].version, tuple(t.shape), tuple(t.stride()), int(t.storage_offset()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("generator") is not None:
            raise DistributedError(
                "deferred init replays draws from the global CPU generator; the model's "
                "constructor draws from its own torch.Generator, which cannot be replayed"
            )
        refs = tree_map(lambda x: self.ref(x) if _is_meta(x) else x, (args, kwargs))
        rng_state = None
        if torch.Tag.nondeterministic_seeded in func.tags:
            rng_state = torch.get_rng_state()
            # Draw on a throw-away CPU copy, so that the generator moves exactly as in a CPU construction.
            cpu_args, cpu_kwargs = tree_map(lambda x: self.value_of(x) if isinstance(x, _Ref) else _on_cpu(x), refs)
            func(*cpu_args, **cpu_kwargs)
        out = func(*args, **kwargs)
        for argument, value in zip(func._schema.arguments, args):
            if argument.alias_info is not None and argument.alias_info.is_write and _is_meta(value):
                written = self.ref(value)
                self.histories[written.storage].events.append(_Event(func, refs[0], refs[1], rng_state, writes=written))
        for index, value in enumerate(tree_flatten(out)[0]):
            if _is_meta(value) and _storage_key(value) not in self.histories:
                if value.storage_offset() != 0 or not value.is_contiguous():
                    raise DistributedError(f"deferred init: {func} created a strided tensor, which cannot be replayed")
                self.histories[_storage_key(value)] = _History(
                    value.dtype,
                    value.untyped_storage().nbytes() // value.element_size(),
                    [_Event(func, refs[0], refs[1], rng_state, output=index)],
                )
                self._alive.append(value)
        return out

    # -- replay ------------------------------------------------------------------------------------

    def value_of(self, ref: _Ref, cache: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """The CPU value `ref` refers to. Its storage must not have been written after the operation
        that read it (a constructor that does so is refused rather than replayed wrongly)."""
        history = self.histories[ref.storage]
        if ref.version != history.version:
            raise DistributedError(
                "deferred init: the model's constructor reads a tensor and later changes it, "
                "which this replay does not support; build the model without deferred init"
            )
        cache = {} if cache is None else cache
        if ref.storage not in cache:
            cache[ref.storage] = self._replay(ref.storage, cache)
        return cache[ref.storage].as_strided(ref.size, ref.stride, ref.offset)

    def _replay(self, key: int, cache: dict[int, torch.Tensor]) -> torch.Tensor:
        history = self.histories[key]
        events = history.events
        start = 0
        for i in range(len(events) - 1, 0, -1):  # the last whole-tensor overwrite, if any
            ref = events[i].writes
            if events[i].func in _OVERWRITES and ref is not None and _covers(ref, history.numel):
                start = i
                break
        flat = torch.empty(history.numel, dtype=history.dtype)

        def resolve(x: Any) -> Any:
            if isinstance(x, _Ref):
                if x.storage == key:  # this storage, as replayed so far
                    return flat.as_strided(x.size, x.stride, x.offset)
                return self.value_of(x, cache)
            return _on_cpu(x)

        for i, event in enumerate(events[start:], start):
            args, kwargs = tree_map(resolve, (event.args, event.kwargs))
            saved = torch.get_rng_state() if event.rng_state is not None else None
            if event.rng_state is not None:
                torch.set_rng_state(event.rng_state)
            try:
                out = event.func(*args, **kwargs)
            finally:
                if saved is not None:
                    torch.set_rng_state(saved)
            if i == 0:  # the creating operation: its output becomes the storage's contents
                created = tree_flatten(out)[0][event.output]
                flat.copy_(created.reshape(-1))
        return flat


def _covers(ref: _Ref, numel: int) -> bool:
    """Whether a view is the whole storage, contiguous from its start."""
    expected, contiguous = 1, True
    for size, stride in zip(reversed(ref.size), reversed(ref.stride)):
        contiguous = contiguous and (size == 1 or stride == expected)
        expected *= size
    return ref.offset == 0 and expected == numel and contiguous


def _on_cpu(x: Any) -> Any:
    return torch.device("cpu") if isinstance(x, torch.device) and x.type == "meta" else x


@dataclass
class InitRecord:
    """How each of a meta-built model's parameters and buffers got its initial value."""

    recorder: _Recorder
    tensors: dict[str, torch.Tensor]  # name -> the meta tensor it had right after construction

    def value(self, name: str) -> torch.Tensor:
        """The full initial value of parameter or buffer `name`, on the CPU (replayed now)."""
        return self.recorder.value_of(self.recorder.ref(self.tensors[name])).clone()


def record_init(factory: Callable[[], nn.Module]) -> tuple[nn.Module, InitRecord]:
    """Build `factory()` on the meta device, recording how to compute each tensor's initial value.
    The global CPU generator ends where `factory()` on the CPU would have left it."""
    recorder = _Recorder()
    with torch.device("meta"), recorder:
        model = factory()
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters())  # tied parameters once, first name
    tensors.update(model.named_buffers())
    return model, InitRecord(recorder, tensors)
