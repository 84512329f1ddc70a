"""docs/data.md and the prepare command's help examples, run as written: every bash and python block of
the page in order, in a folder that holds small stand-ins for the files they name (data/shakespeare.txt,
data/mycorpus.jsonl, data/parquet/, data/texts/); the toml block becomes configs/train.toml."""

from __future__ import annotations

import json
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from reference_llm.data import prepare

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "data.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
WORDS = (
    "time love king night heart death honour crown blood sword hand eye fair lord sweet word day "
    "life grace heaven soul father queen mother brother friend noble speak give make hold"
).split()

pytestmark = pytest.mark.slow


def prose(rng: random.Random, lines: int) -> str:
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(9)).capitalize() + "." for _ in range(lines))


@pytest.fixture
def folder(tmp_path) -> Path:
    rng = random.Random(0)
    data = tmp_path / "data"
    (data / "parquet").mkdir(parents=True)
    (data / "texts").mkdir()
    (data / "web").mkdir()
    (data / "shakespeare.txt").write_text("\n".join(prose(rng, 40) for _ in range(5)))
    with (data / "mycorpus.jsonl").open("w") as f:
        for i in range(150):
            f.write(json.dumps({"id": i, "text": prose(rng, 8)}) + "\n")
    for part in range(2):
        pq.write_table(pa.table({"content": [prose(rng, 8) for _ in range(40)]}), data / "parquet" / f"p{part}.parquet")
    for i in range(12):
        (data / "texts" / f"t{i}.txt").write_text(prose(rng, 10))
    lines = "".join(json.dumps({"content": prose(rng, 8)}) + "\n" for _ in range(30))
    (data / "web" / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    (tmp_path / "configs").mkdir()
    return tmp_path


def run_line(line: str, cwd: Path) -> str:
    argv = shlex.split(line)
    argv[0] = sys.executable if argv[0] == "python" else argv[0]
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


def test_doc_blocks_run_as_written(folder):
    blocks = FENCE.findall(DOC.read_text(encoding="utf-8"))
    assert [kind for kind, _ in blocks].count("bash") == 3 and [kind for kind, _ in blocks].count("python") == 2
    outputs = []
    for kind, text in blocks:
        if kind == "bash":
            outputs += [run_line(line, folder) for line in text.strip().splitlines()]
        elif kind == "toml":
            (folder / "configs" / "train.toml").write_text(text)
        elif kind == "python":
            outputs.append(run_line(f"python -c {shlex.quote(text)}", folder))
    joined = "\n".join(outputs)
    assert "1 file(s) (parquet 2)" not in joined and "2 file(s) (parquet 2)" in joined
    assert re.search(r"source web +│ weight 3: 7\d\.\d% of the train text", joined)
    assert "[Finding(kind='email', start=5, end=20)]\nmail <EMAIL>" in joined
    assert "torch.Size([16, 256])" in joined
    manifest = (folder / "data" / "manifest.toml").read_text()
    assert 'path = "parquet/p1.parquet"' in manifest and 'text_field = "content"' in manifest


def test_prepare_help_examples_run_as_written(folder):
    """The examples in reference_llm.data.prepare's docstring (the module's --help points to it)."""
    doc = prepare.__doc__ or ""
    commands = [line.strip() for line in doc.replace("\\\n", " ").splitlines() if line.strip().startswith("python")]
    assert len(commands) == 3
    (folder / "configs" / "train.toml").write_text('[data]\ncorpus = "data/mycorpus.jsonl"\ntokenizer = "char"\n')
    for command in commands:
        run_line(command.split("  #")[0], folder)
