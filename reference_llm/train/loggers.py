"""Where a run's metrics go: `train.loggers`, any of "jsonl", "tensorboard" and "wandb".

Every sink has the same three methods (`Logger`): `log(step, metrics)` for one log line or one
evaluation, `log_config(config)` once at the start, `close()` at the end. `open_loggers` is the one
place that builds them from a run config; `loop.fit` calls it on rank 0 only, so pretraining, SFT, DPO
and RL all log the same numbers to the same sinks.

- "jsonl": `metrics.MetricsFile`, the record the project's own tools and resume read.
- "tensorboard": event files in `<checkpoint.dir>/tensorboard/` through `torch.utils.tensorboard`
  (the `tensorboard` extra); one scalar per metric, tagged with its JSONL key, and the run config as
  text. A resumed run hides the events after its checkpoint's step (TensorBoard's `purge_step`), as
  the JSONL file drops those records; a new run removes an earlier run's event files.
- "wandb": a Weights & Biases run (the `wandb` extra) with its local files in `<checkpoint.dir>/wandb/`,
  named after the run directory, in project $WANDB_PROJECT (default "llmgen"). W&B's own settings
  apply: `WANDB_MODE=offline` keeps everything on this machine (`wandb sync` uploads it later). Each
  start of a run, resumes included, is a W&B run of its own, whose steps continue where it started.

The optional packages are imported only when a run asks for them, and a missing one is one
ConfigError line naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from reference_llm.config import LOGGERS, RunConfig
from reference_llm.errors import ConfigError
from reference_llm.train import files
from reference_llm.train.metrics import MetricsFile

TENSORBOARD_DIR = "tensorboard"  # inside checkpoint.dir

# logger -> (module it needs, the pip distribution that provides it); the llmgen extra has the logger's name
_NEEDS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class Logger(Protocol):
    """A sink for metrics; `loop.fit` drives every configured one through these methods."""

    def log(self, step: int, metrics: Mapping[str, Any]) -> None: ...

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers among `metrics` (bools and strings are not plotted as curves)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _missing(name: str) -> ConfigError:
    return ConfigError(
        f"train.loggers: {name!r} needs the {_NEEDS[name][1]} package; install it with: pip install 'llmgen[{name}]'"
    )


def _require(name: str) -> ModuleType:
    try:
        return importlib.import_module(_NEEDS[name][0])
    except ImportError:
        raise _missing(name) from None


def _checked_names(config: RunConfig) -> list[str]:
    names = list(dict.fromkeys(config.train.loggers))  # a name given twice is one sink
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:  # load_config refuses these first; a RunConfig built in code reaches this check
        raise ConfigError(f"train.loggers: unknown logger {unknown[0]!r}; known: {', '.join(LOGGERS)}")
    return names


def check_loggers(config: RunConfig) -> None:
    """What `open_loggers` refuses (an unknown name, a package not installed), found without importing
    or opening anything: ranks other than 0, which log nothing, call it so that a run stops with the
    same error on every rank instead of leaving them waiting for rank 0 in a collective."""
    for name in _checked_names(config):
        if name in _NEEDS and importlib.util.find_spec(_NEEDS[name][1]) is None:
            raise _missing(name)


class TensorBoardLogger:
    """Scalars and the run config in TensorBoard event files (`tensorboard --logdir <checkpoint.dir>`)."""

    def __init__(self, log_dir: Path, start_step: int, tensorboard: ModuleType) -> None:
        if start_step == 0 and log_dir.exists():
            files.remove(log_dir)  # an earlier run's curves, like its metrics.jsonl, are replaced
        # On resume, TensorBoard's readers drop the events at and after purge_step that an earlier
        # file holds: what the interrupted run logged after its checkpoint, which this run logs again.
        purge_step = start_step + 1 if start_step else None
        self.start_step = start_step
        self.writer = tensorboard.SummaryWriter(log_dir=str(log_dir), purge_step=purge_step, flush_secs=10)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(key, value, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        # Indented by four spaces: a Markdown code block, which the text dashboard shows as it is.
        text = "\n".join("    " + line for line in json.dumps(config, indent=2, default=str).splitlines())
        self.writer.add_text("config", text, self.start_step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run; metrics are logged at the training step (W&B's x axis)."""

    def __init__(self, run_dir: Path, wandb: ModuleType) -> None:
        self.wandb = wandb
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "llmgen", name=run_dir.name, dir=str(run_dir)
            )
        except Exception as exc:  # wandb raises its own types (no API key, no network, bad settings)
            reason = " ".join(str(exc).split())  # one line, whatever W&B's message holds
            raise ConfigError(
                f"train.loggers: W&B could not start a run ({type(exc).__name__}: {reason}); "
                f"WANDB_MODE=offline keeps the run on this machine without an account"
            ) from None

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.run.log(scalars(metrics), step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def close(self) -> None:
        self.run.finish()
        # finish() returns before W&B's service process has written the run's last records (an offline
        # run's .wandb file was seen still empty); teardown waits for it, so that the run is complete on
        # disk when `fit` returns. It also ends any other W&B run this process has open.
        self.wandb.teardown()


class Loggers:
    """Every configured sink behind the `Logger` interface; closing closes them all."""

    def __init__(self, sinks: list[Logger]) -> None:
        self.sinks = sinks

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(step, metrics)

    def log_config(self, config: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.log_config(config)

    def close(self) -> None:
        errors = []
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # one sink failing to close must not keep the others' data unflushed
                errors.append(exc)
        if errors:
            raise errors[0]


def open_loggers(config: RunConfig, start_step: int = 0) -> Loggers:
    """The sinks `config.train.loggers` names, for a run that starts at `start_step` (0: a new run,
    which replaces an earlier run's records; otherwise a resumed or staged one, which keeps those up to
    `start_step`). Every optional package is imported before any sink touches a file, so that a
    missing one changes nothing in the run directory."""
    names = _checked_names(config)
    modules = {name: _require(name) for name in names if name in _NEEDS}
    run_dir = Path(config.checkpoint.dir)
    sinks: list[Logger] = []
    try:
        # W&B first: it is the one that may fail to start (no account), and then nothing else has yet
        # replaced an earlier run's records.
        for name in sorted(names, key=("wandb", "tensorboard", "jsonl").index):
            if name == "jsonl":
                sinks.append(MetricsFile(run_dir / config.train.metrics_file, keep_through_step=start_step or None))
            elif name == "tensorboard":
                sinks.append(TensorBoardLogger(run_dir / TENSORBOARD_DIR, start_step, modules[name]))
            else:
                sinks.append(WandbLogger(run_dir, modules[name]))
    except BaseException:
        Loggers(sinks).close()
        raise
    return Loggers(sinks)
