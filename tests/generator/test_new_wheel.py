"""A wheel built from this repository, installed (not editable) into a fresh virtual environment, runs
`llmgen new x --yes` from an unrelated directory: the templates and tracks travel inside the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest
import yaml

from generator.resources import templates_dir

REPO = Path(__file__).resolve().parents[2]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_generates_a_project(tmp_path, fixed_cpu):
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)])
    (wheel,) = wheels.glob("llmgen-*.whl")

    # A fresh venv sees this environment's heavy dependencies (torch, copier, ...) through a .pth file
    # instead of downloading them; llmgen itself comes only from the wheel.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache = tmp_path / "template-cache"  # the wheel's llmgen materialises its own versioned template copy
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"LLMGEN_TEMPLATE_CACHE": str(cache)}
    located = run(
        [
            str(python),
            "-c",
            "import generator, reference_llm; print(generator.__file__); print(reference_llm.__file__)",
        ],
        cwd=elsewhere,
        env=env,
    ).stdout.split()
    for path in located:  # from the wheel's install, not this checkout (whatever the host venv holds)
        assert Path(path).is_relative_to(site), path
    assert not Path(located[0]).is_relative_to(REPO)

    result = run([str(env_dir / "bin" / "llmgen"), "new", "x", "--yes", "--no-git"], cwd=elsewhere, env=env)
    assert "Next steps" in result.stdout
    project = elsewhere / "x"
    for path in ("configs/train.toml", "data/shakespeare.txt", ".copier-answers.yml", "src/x/paths.py"):
        assert (project / path).is_file(), path
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert (answers["_src_path"], answers["_commit"]) == (str(cache), f"v{version}")
    bundled = site / "generator" / "_bundled" / "templates" / "copier.yml"
    assert (cache / "copier.yml").read_text() == bundled.read_text() == (templates_dir() / "copier.yml").read_text()
