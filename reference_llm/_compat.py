"""Old module names, kept importable for one minor version after the move to stage packages (1.1).

Generated repositories pin `llmgen>=1.0` and name modules such as `reference_llm.sft` in their tests,
Makefiles and roadmaps. A meta-path finder maps each old name to its new home: `import` returns the new
module itself (with a DeprecationWarning), and `python -m reference_llm.sft ...` prints one deprecation
line on stderr and runs the new module. Remove in 1.2.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import runpy
import sys
import warnings
from types import CodeType, ModuleType

REMOVED_IN = "1.2"
MOVED: dict[str, str] = {
    "reference_llm.model_config": "reference_llm.model.config",
    "reference_llm.checkpoint": "reference_llm.train.checkpoint",
    "reference_llm.optim": "reference_llm.train.optim",
    "reference_llm.perf": "reference_llm.train.perf",
    "reference_llm.metrics": "reference_llm.train.metrics",
    "reference_llm.chat": "reference_llm.tokenizer.chat",
    "reference_llm.sft": "reference_llm.posttrain.sft",
    "reference_llm.dpo": "reference_llm.posttrain.dpo",
    "reference_llm.lora": "reference_llm.posttrain.lora",
    "reference_llm.reward": "reference_llm.posttrain.reward",
    "reference_llm.posttrain_data": "reference_llm.posttrain.data",
    "reference_llm.generate": "reference_llm.deploy.generate",
    "reference_llm.quantize": "reference_llm.deploy.quantize",
    "reference_llm.export": "reference_llm.deploy.export",
    "reference_llm.serve": "reference_llm.deploy.serve",
}


def deprecation_line(old: str) -> str:
    return f"{old} moved to {MOVED[old]}; the old name works until llmgen {REMOVED_IN}"


class _MovedLoader(importlib.abc.Loader):
    """Loads an old name as the new module; run as `__main__`, runs the new module instead."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(deprecation_line(spec.name), DeprecationWarning, stacklevel=2)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: `create_module` returned the new module, already executed."""

    def get_code(self, fullname: str) -> CodeType:
        # runpy (`python -m old.name`) executes this code as __main__.
        source = f"from reference_llm._compat import run_moved\nrun_moved({fullname!r})\n"
        return compile(source, f"<moved {fullname}>", "exec")


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader())


def run_moved(old: str) -> None:
    """`python -m <old>`: one line on stderr, then the new module as `__main__` (argv unchanged)."""
    print(f"note: {deprecation_line(old)}", file=sys.stderr)
    runpy.run_module(MOVED[old], run_name="__main__", alter_sys=True)


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
