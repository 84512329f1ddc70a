"""What every step's notebook shares: the cell type, the project it is written for, the introduction,
the setup cell, the tiny-scale run settings and the runs that later steps start from.

Cell sources are written as plain text in which `<package>`, `<project>` and `<track>` stand for the
project's values (angle brackets never occur in the Python of a cell, so the substitution cannot hit code).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cell:
    kind: str  # "markdown" | "code"
    source: str


def notebook_stem(step: Mapping[str, Any]) -> str:
    """'03_tokenizer' for step 3, id "tokenizer": the notebook's file name without its suffix."""
    return f"{int(step['number']):02d}_{step['id']}"


@dataclass(frozen=True)
class Project:
    """The generated project and the roadmap step a notebook is written for."""

    name: str
    package: str
    track: str
    exercises: bool  # exercise mode: the learner modules are stubs
    nodes: int  # machines the project's training spans (its launch scripts differ when > 1)
    step: Mapping[str, Any]  # one entry of the roadmap's "steps" (generator.roadmap.build_roadmap)
    next_step: Mapping[str, Any] | None
    commands: Mapping[str, str]  # step id -> its command, for every step of the roadmap

    @classmethod
    def from_answers(
        cls, answers: Mapping[str, Any], step: Mapping[str, Any], next_step: Mapping[str, Any] | None
    ) -> Project:
        return cls(
            name=answers["project_name"],
            package=answers["package_name"],
            track=answers["track"],
            exercises=bool(answers["exercises"]),
            nodes=int(answers["nodes"]),
            step=step,
            next_step=next_step,
            commands={s["id"]: s["command"] for s in answers["roadmap"]["steps"]},
        )

    @property
    def step_id(self) -> str:
        return str(self.step["id"])

    @property
    def number(self) -> int:
        return int(self.step["number"])

    @property
    def title(self) -> str:
        return str(self.step["title"])

    @property
    def stem(self) -> str:
        return notebook_stem(self.step)

    def module(self, step_id: str, default: str) -> str:
        """The project's own module that step `step_id` runs (`python -m <package>.train` runs the learner's
        parts once written), else `default`: the notebooks run the same code as the step's command."""
        match = re.match(r"python -m (\S+)", self.commands.get(step_id, ""))
        return match.group(1) if match and match.group(1).startswith(f"{self.package}.") else default

    def fill(self, text: str) -> str:
        return (
            textwrap.dedent(text)
            .strip("\n")
            .replace("<package>", self.package)
            .replace("<project>", self.name)
            .replace("<track>", self.track)
        )

    def md(self, *paragraphs: str) -> Cell:
        """A markdown cell of `paragraphs`, each dedented on its own."""
        return Cell("markdown", "\n\n".join(self.fill(part) for part in paragraphs))

    def code(self, *parts: str) -> Cell:
        """A code cell of `parts`, each dedented on its own (so a snippet from `attempt` can sit between two
        indented blocks of source), one after the other."""
        return Cell("code", "\n".join(self.fill(part) for part in parts if part))

    # -- exercise mode ------------------------------------------------------------------------------

    def attempt(self, target: str, call: str, then: str = "") -> str:
        """`target = call`, then `then`. In exercise mode the call may reach a stub: its message is printed,
        `target` becomes None and `then` is skipped, so that the notebook runs on."""
        call, then = textwrap.dedent(call).strip("\n"), textwrap.dedent(then).strip("\n")
        if not self.exercises:
            return f"{target} = {call}\n{then}".rstrip("\n")
        lines = [
            "try:",
            textwrap.indent(f"{target} = {call}", "    "),
            "except NotImplementedError as exc:  # a stub you have not written yet",
            f"    {target} = None",
            '    print(f"not written yet: {exc}")',
        ]
        if then:
            lines += ["else:", textwrap.indent(then, "    ")]
        return "\n".join(lines)

    def if_written(self, target: str, body: str, what: str) -> str:
        """`body`, run only once `target` (set by `attempt`) exists in exercise mode."""
        body = textwrap.dedent(body).strip("\n")
        if not self.exercises:
            return body
        return (
            f"if {target} is not None:\n{textwrap.indent(body, '    ')}\n"
            f'else:\n    print("skipped until you write {what}")'
        )

    # -- shared cells -------------------------------------------------------------------------------

    def introduction(self) -> list[Cell]:
        step = self.step
        text = [
            f"# {self.number}. {self.title}",
            "",
            f"*Roadmap step {self.number} of **{self.name}** ({self.track} track); "
            f"[ROADMAP.md](../ROADMAP.md#step-{self.step_id}) has its code pointers, cost estimate and "
            "checkpoint test.*",
            "",
            str(step["summary"]),
            "",
            "This notebook runs the step at tiny scale on this project's own corpus, config and code, in "
            "seconds on a CPU. After each result a note says what you should see; the last cell checks it. "
            f"At full scale the step runs as `{step['command']}`.",
        ]
        cells = [Cell("markdown", "\n".join(text))]
        exercises = list(step.get("exercises", []))
        if exercises:
            parts = ", ".join(f"`{e['symbol']}` in `{e['file']}` ({e['task']})" for e in exercises)
            if self.exercises:
                files = sorted({test.split("::")[0] for e in exercises for test in e["tests"]})
                note = (
                    f"**Exercise.** In this step you write {parts}. Until you do, the cells that call it print "
                    "`not written yet: ...` and the notebook goes on. After writing a part, restart the kernel "
                    "(Python imports your module once) and run the notebook again; the checkpoint tests in "
                    f"{', '.join(f'`{f}`' for f in files)} check it too."
                )
            else:
                note = (
                    f"**Your code.** This step's learner code is {parts}: here a reference solution "
                    "(the project was generated without exercises). The cells below call it, next to "
                    "reference_llm's version of the same thing."
                )
            cells.append(Cell("markdown", note))
        cells.append(self.setup())
        return cells

    def setup(self) -> Cell:
        return self.code('''
            # Setup: work from the project root with src/ importable, and `run` to use the project's commands.
            import os
            import re
            import shlex
            import subprocess
            import sys
            from pathlib import Path

            ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "configs/train.toml").is_file()), None)
            if ROOT is None:
                raise FileNotFoundError("run this notebook inside the project <project> (no configs/train.toml found)")
            os.chdir(ROOT)  # configs/train.toml names its files relative to the project root
            sys.path.insert(0, str(ROOT / "src"))  # the project's own package, also before `pip install -e .`
            WORK = Path("runs/notebooks")  # everything these notebooks write goes here (runs/ is not committed)
            WORK.mkdir(parents=True, exist_ok=True)


            def run(command: str) -> str:
                """Run `command` in the project root as a terminal would, print its output as it comes and return
                it; `python` is this notebook's interpreter, so the command sees the same packages."""
                print("$", command)
                env = dict(os.environ)
                for name in ("FORCE_COLOR", "CLICOLOR_FORCE"):  # Jupyter sets them; progress bars redrawn as text
                    env.pop(name, None)                      # would fill the output
                env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
                args = shlex.split(command)
                while args and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", args[0]):  # NAME=value before a command
                    name, _, value = args.pop(0).partition("=")
                    env[name] = value
                if args[0] == "python":
                    args[0] = sys.executable
                lines = []
                with subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True) as process:
                    for line in process.stdout:
                        print(line, end="")
                        lines.append(line)
                if process.returncode != 0:
                    raise RuntimeError(f"exit code {process.returncode}: {command}")
                return "".join(lines)


            import torch

            from <package>.config import load_run_config, small_model_config
            from <package>.paths import CORPUS

            torch.manual_seed(0)
            config = load_run_config()  # configs/train.toml
            corpus = CORPUS.read_text(encoding="utf-8")
            print(f"<project>: model {config.model.name}, tokenizer {config.data.tokenizer}, "
                  f"corpus {CORPUS.relative_to(ROOT)} ({len(corpus):,} characters)")
        ''')

    def closing(self) -> list[Cell]:
        if self.next_step is None:
            return [self.md("That was the last step of the roadmap. [ROADMAP.md](../ROADMAP.md) lists them all.")]
        nxt = notebook_stem(self.next_step)
        return [
            self.md(f"Next: [{nxt}.ipynb]({nxt}.ipynb), step {self.next_step['number']}: {self.next_step['title']}.")
        ]


# ----------------------------------------------------------------------------------------------------
# The tiny run that later steps start from
# ----------------------------------------------------------------------------------------------------

TINY_NOTE = """
    **The tiny run.** The commands below are this project's own (`configs/train.toml`), with overrides
    that shrink them: the first 64 kB of the corpus, a 512-id tokenizer of the configured kind, and a model
    of the configured family (its norm, positions, MLP and attention layout) cut to 2 layers of width 64,
    on the CPU in float32. The runs go to `runs/notebooks/`.
"""


def tiny_settings(project: Project) -> Cell:
    """`TINY`: the overrides that shrink the project's run config to seconds on a CPU; `PRETRAIN`: the
    tiny pretraining command."""
    return project.code(
        """
        # The project's run config, shrunk: the same model family at 2 layers x 64 wide, 64 kB of the corpus.
        SLICE = WORK / "corpus.txt"
        SLICE.write_text(corpus[:64_000], encoding="utf-8")
        small = small_model_config(config.model, vocab_size=512)
        TINY = " ".join([
            f"data.corpus={SLICE}", "data.vocab_size=512", f"data.cache_dir={WORK / 'cache'}", "data.workers=1",
            *(f"model.{key}={getattr(small, key)}"
              for key in ("n_layer", "n_head", "n_kv_head", "d_model", "ffn_hidden", "block_size")),
            "train.micro_batch=8", "train.grad_accum=1", "train.lr=3e-3", "train.min_lr=3e-4", "train.warmup_steps=5",
            "train.device=cpu", "train.dtype=float32", "train.compile=false", "distributed.strategy=single",
            "eval.interval=0", "eval.iters=4", "checkpoint.interval=0",
        ])
        PRETRAIN = f"python -m <trainer> --config configs/train.toml {TINY} train.max_steps=200"
        PRETRAINED = WORK / "pretrain"
        print(TINY)
    """.replace("<trainer>", project.module("pretrain", "reference_llm.train"))
    )


def pretrained(project: Project) -> list[Cell]:
    """Cells that make sure the tiny pretraining run exists (the pretraining notebook makes it)."""
    return [
        project.md(TINY_NOTE),
        tiny_settings(project),
        project.code("""
        # The tiny pretrained model this step starts from; the pretraining notebook makes it, this cell only
        # when you start here.
        if not (PRETRAINED / "latest").exists():
            run(f"{PRETRAIN} checkpoint.dir={PRETRAINED}")
        from reference_llm.train.checkpoint import load_model

        model, tokenizer, run_config = load_model(PRETRAINED)
        print(f"{PRETRAINED}: {sum(p.numel() for p in model.parameters()):,} parameters, vocab {tokenizer.vocab_size}")
    """),
    ]


CHAT_DATA = """
    # Conversations in the JSON Lines format SFT reads: {"messages": [{"role": ..., "content": ...}, ...]}.
    import json

    QUESTIONS = [
        ("Who loves Juliet?", "Romeo, of the house of Montague."),
        ("Where is Hamlet the prince of?", "Denmark; he lives at Elsinore."),
        ("Who murders King Duncan?", "Macbeth, urged on by his wife."),
        ("Which play has a storm and a magician?", "The Tempest, with Prospero."),
        ("Who is Othello's ensign?", "Iago, who deceives him."),
        ("What does Shylock demand?", "A pound of Antonio's flesh."),
        ("Who are the three daughters of Lear?", "Goneril, Regan and Cordelia."),
        ("Where does A Midsummer Night's Dream take place?", "In Athens and the wood nearby."),
    ]
    CHAT = WORK / "chat.jsonl"
    with CHAT.open("w", encoding="utf-8") as f:
        for question, answer in QUESTIONS * 4:  # repeated: a few steps should learn them
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}) + "\\n")
    SFT = (f"python -m reference_llm.posttrain.sft --checkpoint {PRETRAINED} sft.data={CHAT} "
           "train.max_steps=100 train.micro_batch=4 train.lr=5e-3 train.warmup_steps=3 train.device=cpu "
           "train.dtype=float32 eval.iters=2 checkpoint.interval=0")
    SFTED = WORK / "sft"
    print(f"{CHAT}: {len(QUESTIONS) * 4} conversations")
"""


def chat_data(project: Project) -> Cell:
    return project.code(CHAT_DATA)


def fine_tuned(project: Project) -> list[Cell]:
    """Cells that make sure the tiny SFT run exists (the SFT notebook makes it)."""
    return [
        *pretrained(project),
        chat_data(project),
        project.code("""
        # The tiny fine-tuned model; the SFT notebook makes it, this cell only when you start here.
        if not (SFTED / "latest").exists():
            run(f"{SFT} checkpoint.dir={SFTED}")
    """),
    ]
