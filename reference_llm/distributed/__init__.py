"""Parallel training engines behind one interface (see `base.py`); `build_engine` picks one by
`distributed.strategy` and imports the heavy ones (DDP, FSDP2, DeepSpeed) only when chosen."""

from reference_llm.distributed.base import Engine, OptimizerState, SingleDeviceEngine, build_engine

__all__ = ["Engine", "OptimizerState", "SingleDeviceEngine", "build_engine"]
