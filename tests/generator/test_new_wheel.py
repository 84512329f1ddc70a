"""A wheel built from this repository, installed (not editable) into a fresh virtual environment, runs
`llmgen new x --yes` from an unrelated directory: the templates and tracks travel inside the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

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
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    located = run([str(python), "-c", "import generator, reference_llm; print(generator.__file__); "
                   "print(reference_llm.__file__)"], cwd=elsewhere, env=env).stdout.split()
    for path in located:  # from the wheel's install, not this checkout (whatever the host venv holds)
        assert Path(path).is_relative_to(site), path
    assert not Path(located[0]).is_relative_to(REPO)

    result = run([str(env_dir / "bin" / "llmgen"), "new", "x", "--yes", "--no-git"], cwd=elsewhere, env=env)
    assert "Next steps" in result.stdout
    project = elsewhere / "x"
    for path in ("configs/train.toml", "data/shakespeare.txt", ".copier-answers.yml", "src/x/paths.py"):
        assert (project / path).is_file(), path
    answers = (project / ".copier-answers.yml").read_text()
    assert str(site) in answers and str(templates_dir()) not in answers  # rendered from the wheel's copy
