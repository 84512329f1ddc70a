"""`llmgen update` across two template versions: a template change and a user change on different lines
both survive, a change of the same line on both sides shows Copier's conflict markers; and the refusals
(not a generated repository, uncommitted changes, a newer template, no git) with their one-line errors.
Also the versioned template cache that makes this work offline."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from generator.cli import app
from generator.commands.update import UpdateError, update_project
from generator.plan import plan_run
from generator.render import render_into
from generator.resources import templates_dir
from generator.template_repo import content_hash, ensure_template_repo, has_tag

pytestmark = pytest.mark.usefixtures("fixed_cpu")

README_TEMPLATE = Path("project") / "README.md.jinja"


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture
def versions(tmp_path: Path):
    """A private copy of the template (to change between versions) and a private template cache."""
    source = tmp_path / "template"
    shutil.copytree(templates_dir(), source)
    return source, tmp_path / "cache"


def generate(tmp_path: Path, source: Path, cache: Path, version: str = "1.0.0") -> Path:
    """A project rendered from template `version` and committed, as `llmgen new` leaves it."""
    ref = ensure_template_repo(version, source=source, cache_dir=cache)
    plan = plan_run(
        "proj",
        {
            "track": "beginner",
            "budget": "laptop",
            "hardware": "cpu",
            "parallelism": "auto",
            "model_preset": "demo",
            "exercises": True,
        },
    )
    project = tmp_path / "proj"
    project.mkdir()
    render_into(plan.answers, project, template=ref)
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "generated")
    return project


def edit_line(path: Path, index: int, text: str) -> str:
    lines = path.read_text().splitlines()
    old, lines[index] = lines[index], text
    path.write_text("\n".join(lines) + "\n")
    return old


def test_update_merges_template_and_user_changes(tmp_path, versions):
    source, cache = versions
    project = generate(tmp_path, source, cache)
    readme = project / "README.md"
    title = readme.read_text().splitlines()[0]
    edit_line(readme, 0, title + " (my fork)")  # a user change
    edit_line(readme, 4, "Trained by me, on my data.")  # the same line the template will change
    git(project, "commit", "-qam", "my edits")

    template = source / README_TEMPLATE
    edit_line(template, 4, "Shakespeare corpus, and tests that prove each step works (v1.1).")
    template.write_text(template.read_text() + "\nA section added in llmgen 1.1.\n")
    result = update_project(project, version="1.1.0", source=source)

    assert (result.from_tag, result.to_tag) == ("v1.0.0", "v1.1.0")
    text = readme.read_text()
    assert text.splitlines()[0] == title + " (my fork)", "the user's change on another line was lost"
    assert text.rstrip().endswith("A section added in llmgen 1.1."), "the template's change was not applied"
    conflict = text[text.index("<<<<<<< before updating") : text.index(">>>>>>> after updating")]
    assert "Trained by me, on my data." in conflict and "(v1.1)." in conflict
    assert result.conflicts == ["README.md"] and "README.md" in result.changed
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["_commit"] == "v1.1.0" and Path(answers["_src_path"]) == cache.resolve()
    assert answers["roadmap"]["track"] == "beginner"  # recomputed by the new llmgen, still recorded
    assert (project / "data" / "shakespeare.txt").is_file()  # files the template does not own stay


def as_llmgen_1_0(source: Path) -> None:
    """Turn the private template copy back into llmgen 1.0's way with precision: short names in the
    answers, translated in Jinja; no `deepspeed` answer."""
    copier_yml = source / "copier.yml"
    text = copier_yml.read_text()
    text = text.replace("choices: [auto, float32, bfloat16]", "choices: [auto, bf16, fp32]")
    text = text[: text.index("deepspeed:\n  type: yaml")] + text[text.index("roadmap:\n  type: yaml") :]
    copier_yml.write_text(text)
    train_toml = source / "project" / "configs" / "train.toml.jinja"
    train_toml.write_text(
        train_toml.read_text().replace(
            '"{{ precision }}"', "\"{{ {'auto': 'auto', 'bf16': 'bfloat16', 'fp32': 'float32'}[precision] }}\""
        )
    )


def test_update_from_1_0_rewrites_the_precision_answer_in_full(tmp_path, versions):
    """llmgen 1.0 recorded precision as bf16 or fp32; the update records reference_llm's name instead, adds
    the deepspeed answer, and leaves train.toml (already in reference_llm's spelling) as it was."""
    source, cache = versions
    current = source.parent / "current"
    shutil.copytree(source, current)
    as_llmgen_1_0(source)
    ref = ensure_template_repo("1.0.0", source=source, cache_dir=cache)
    answers = plan_run(
        "proj",
        {
            "track": "beginner",
            "budget": "laptop",
            "hardware": "cpu",
            "parallelism": "auto",
            "model_preset": "demo",
            "exercises": True,
            "precision": "float32",
        },
    ).answers
    old = {k: v for k, v in answers.items() if k != "deepspeed"} | {"precision": "fp32"}
    project = tmp_path / "proj"
    project.mkdir()
    render_into(old, project, template=ref)
    train_toml = (project / "configs" / "train.toml").read_text()
    assert 'dtype = "float32"' in train_toml
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "generated by 1.0")

    result = update_project(project, version="1.1.0", source=current)
    assert result.conflicts == []
    recorded = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert recorded["precision"] == recorded["roadmap"]["precision"] == "float32" and recorded["deepspeed"] == {}
    assert (project / "configs" / "train.toml").read_text() == train_toml


def test_update_cli_reports_up_to_date_and_conflicts(tmp_path, versions, monkeypatch):
    source, cache = versions
    project = generate(tmp_path, source, cache)
    monkeypatch.setattr("generator.commands.update.llmgen_version", lambda: "1.0.0")
    monkeypatch.setattr("generator.template_repo.templates_dir", lambda: source)
    result = CliRunner().invoke(app, ["update", "--dir", str(project)])
    assert result.exit_code == 0, result.output
    assert "up to date with llmgen's template v1.0.0" in result.stderr


def test_refuses_outside_a_generated_repository(tmp_path):
    with pytest.raises(UpdateError, match=r"not a repository generated by llmgen \(\.copier-answers\.yml not found\)"):
        update_project(tmp_path)
    result = CliRunner().invoke(app, ["update", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and result.output.startswith("error: ")


def test_refuses_uncommitted_changes(tmp_path, versions):
    source, cache = versions
    project = generate(tmp_path, source, cache)
    (project / "notes.txt").write_text("draft\n")
    with pytest.raises(UpdateError, match=r"uncommitted changes \(1 file\(s\), e\.g\. notes\.txt\); commit or stash"):
        update_project(project, version="1.0.0", source=source)


def test_refuses_a_template_newer_than_llmgen(tmp_path, versions):
    source, cache = versions
    project = generate(tmp_path, source, cache, version="2.0.0")
    with pytest.raises(
        UpdateError,
        match=r"generated by llmgen 2\.0\.0, newer than the installed llmgen 1\.0\.0; "
        r"upgrade llmgen",
    ):
        update_project(project, version="1.0.0", source=source)


def test_refuses_a_project_without_git(tmp_path, versions):
    source, cache = versions
    project = generate(tmp_path, source, cache)
    shutil.rmtree(project / ".git")
    with pytest.raises(UpdateError, match="is not a git repository; llmgen update merges through git"):
        update_project(project, version="1.0.0", source=source)


def test_refuses_when_the_old_template_version_is_gone(tmp_path, versions):
    source, cache = versions
    project = generate(tmp_path, source, cache)
    shutil.rmtree(cache)
    with pytest.raises(UpdateError, match="the template v1.0.0 this project was generated from is not in"):
        update_project(project, version="1.1.0", source=source)


def test_template_cache_tags_one_commit_per_content(tmp_path, versions):
    source, cache = versions
    first = ensure_template_repo("1.0.0", source=source, cache_dir=cache)
    assert ensure_template_repo("1.0.0", source=source, cache_dir=cache) == first  # idempotent
    (source / "copier.yml").write_text((source / "copier.yml").read_text() + "\n# edited\n")
    edited = ensure_template_repo("1.0.0", source=source, cache_dir=cache)
    assert (first.tag, edited.tag) == ("v1.0.0", "v1.0.0+1")  # a released tag never moves
    assert edited.version > first.version
    newer = ensure_template_repo("1.1.0", source=source, cache_dir=cache)
    assert newer.tag == "v1.1.0" and all(has_tag(cache, t) for t in ("v1.0.0", "v1.0.0+1", "v1.1.0"))
    assert content_hash(source) != content_hash(templates_dir())
