"""The generated README's own-data section, run as written in a generated project: a JSON Lines corpus is
added to the manifest, prepared with the project's settings, trained on (tiny model, two steps) and passes
`llmgen compliance`; then a folder of Parquet files, then weighted sources from configs/train.toml.

Practitioners and researchers find the section next to the commands; beginners after the demo."""

from __future__ import annotations

import json
import random
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from generator.plan import plan_run
from generator.render import render_project

pytestmark = pytest.mark.usefixtures("fixed_cpu", "template_cache")

FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
TINY = ["model.preset=tiny", "train.max_steps=2", "train.micro_batch=2", "eval.iters=1"]
WORDS = (
    "time love king night heart death honour crown blood sword hand eye fair lord sweet word day "
    "life grace heaven soul father queen mother brother friend noble speak give make hold"
).split()


def generate(tmp_path: Path, track: str) -> Path:
    plan = plan_run(
        f"{track}-own",
        {
            "track": track,
            "exercises": False,
            "hardware": "cpu",
            "budget": "laptop",
            "parallelism": "auto",
            "model_preset": "demo",
        },
    )
    project = tmp_path / f"{track}-own"
    render_project(plan.answers, project, git=False)
    return project


def prose(rng: random.Random, lines: int) -> str:
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(9)).capitalize() + "." for _ in range(lines))


def own_data_section(readme: str, heading: str) -> str:
    start = readme.index(f"## {heading}\n")
    return readme[start : readme.index("\n## ", start + 1)]


def command(line: str) -> list[str]:
    """A README command line as this test runs it: this interpreter for `python`, llmgen's CLI module for
    `llmgen`, and the tiny-scale overrides appended to training."""
    argv = shlex.split(line)
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "llmgen":
        argv = [sys.executable, "-m", "generator.cli", *argv[1:]]
    if argv[1:3] == ["-m", "reference_llm.train"]:
        argv += TINY
    return argv


def run_block(project: Path, block: str, env: dict[str, str]) -> list[str]:
    outputs = []
    for line in block.strip().splitlines():
        result = subprocess.run(command(line), cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        outputs.append(result.stdout + result.stderr)
    return outputs


@pytest.mark.slow
def test_readme_own_data_commands_run_as_written(tmp_path, subprocess_env):
    project = generate(tmp_path, "practitioner")
    readme = (project / "README.md").read_text()
    section = own_data_section(readme, "Your own data")
    assert readme.index("## Your own data") < readme.index("## From this machine to a cluster")
    blocks = [(kind, text) for kind, text in FENCE.findall(section)]
    assert [kind for kind, _ in blocks] == ["bash", "bash", "toml", "bash"]

    rng = random.Random(0)
    with (project / "data" / "mycorpus.jsonl").open("w") as f:
        for i in range(120):
            f.write(json.dumps({"id": i, "text": prose(rng, 12)}) + "\n")

    # JSON Lines: manifest, prepare, train (reusing the prepared data), compliance.
    out = run_block(project, blocks[0][1], subprocess_env)
    assert "added mycorpus.jsonl (CC-BY-4.0" in out[0]
    assert "1 file(s) (jsonl 1)" in out[1] and "(built)" in out[1]
    assert (project / "runs" / "practitioner-own" / "latest").is_file()
    assert len([p for p in (project / "data" / "cache").iterdir() if not p.name.startswith(".")]) == 1
    assert "compliance: 2 data file(s)" in out[3]

    # Parquet: a folder of files, the text in column `content`.
    (project / "data" / "parquet").mkdir()
    for part in range(2):
        table = pa.table({"ticket": list(range(40)), "content": [prose(rng, 6) for _ in range(40)]})
        pq.write_table(table, project / "data" / "parquet" / f"part-{part}.parquet", row_group_size=10)
    out = run_block(project, blocks[1][1], subprocess_env)
    entries = tomllib.loads((project / "data" / "manifest.toml").read_text())["file"]
    assert {e["path"]: e.get("text_field") for e in entries}["parquet/part-1.parquet"] == "content"
    assert "2 file(s) (parquet 2)" in out[1] and "80 in, 80 kept" in out[1]

    # Weighted sources and epochs, from configs/train.toml.
    config = project / "configs" / "train.toml"
    text = config.read_text().replace("[data]\n", '[data]\nsampling = "epoch"\n', 1) + "\n" + blocks[2][1]
    config.write_text(text)
    out = run_block(project, blocks[3][1], subprocess_env)
    assert re.search(r"source data/mycorpus\.jsonl +│ weight 3: 7[3-7]\.\d% of the train text", out[0]), out[0]
    assert re.search(r"source data/parquet +│ weight 1: 2[3-7]\.\d% of the train text", out[0]), out[0]


def test_beginners_find_the_section_after_the_demo(tmp_path):
    readme = (generate(tmp_path, "beginner") / "README.md").read_text()
    assert "## Your own data" not in readme
    section = own_data_section(readme, "After the demo: your own data")
    assert readme.index("## After the demo") > readme.index("## Commands")
    assert "python -m reference_llm.data.manifest add data/mycorpus.jsonl" in section


def test_compliance_doc_command_runs_as_written(tmp_path, subprocess_env):
    project = generate(tmp_path, "beginner")
    text = (project / "COMPLIANCE.md").read_text()
    [(kind, block)] = [(k, b) for k, b in FENCE.findall(text) if k == "bash"]
    (project / "data" / "my_corpus.txt").write_text("A corpus of my own, written for this test.\n")
    run_block(project, block, subprocess_env)
    entries = tomllib.loads((project / "data" / "manifest.toml").read_text())["file"]
    assert entries[-1]["path"] == "my_corpus.txt" and entries[-1]["license"] == "CC-BY-4.0"
    run_block(project, "llmgen compliance", subprocess_env)
