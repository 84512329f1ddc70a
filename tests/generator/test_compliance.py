"""`llmgen compliance`: manifest, sha256, unlisted files, personal-data scan, licence warnings, the CLI's
output and exit codes, and a generated repository passing its own check."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from generator.cli import app
from generator.compliance import ComplianceError, check_repository, licence_note, parse_spdx
from generator.plan import plan_run
from generator.render import render_into
from generator.tracks import load_tracks

CLEAN_TEXT = "But soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_repo(root: Path, files: dict[str, str], entries: list[dict[str, str]] | None = None) -> Path:
    """A minimal generated-repository layout: data files, their manifest, a config naming the cache."""
    (root / "data").mkdir(parents=True)
    (root / "configs").mkdir()
    (root / "configs" / "train.toml").write_text('[data]\ncache_dir = "data/cache"\n')
    for name, text in files.items():
        (root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "data" / name).write_text(text, encoding="utf-8")
    if entries is None:
        entries = [
            {"path": name, "source": "written for this test", "license": "CC0-1.0", "sha256": sha(text)}
            for name, text in files.items()
        ]
    lines = []
    for entry in entries:
        lines.append("[[file]]")
        lines += [f'{key} = "{value}"' for key, value in entry.items()]
    (root / "data" / "manifest.toml").write_text("\n".join(lines) + "\n")
    return root


def run(*args: str):
    return CliRunner().invoke(app, ["compliance", *args], env={"COLUMNS": "200"})


def test_listed_files_with_matching_hashes_pass(tmp_path):
    root = make_repo(tmp_path, {"verse.txt": CLEAN_TEXT})
    (root / "data" / "cache").mkdir()
    (root / "data" / "cache" / "shard_000.bin").write_bytes(b"\0" * 64)  # derived data: not checked
    (root / "data" / ".DS_Store").write_bytes(b"x")  # hidden: not data
    report = check_repository(root)
    assert report.ok, report.problems
    assert [f.path for f in report.files] == ["data/verse.txt"]
    assert report.files[0].sha256_actual == sha(CLEAN_TEXT) and report.pii_total == 0 and not report.warnings


def test_changed_missing_and_unlisted_files_are_problems(tmp_path):
    root = make_repo(tmp_path, {"a.txt": CLEAN_TEXT, "b.txt": CLEAN_TEXT})
    (root / "data" / "a.txt").write_text(CLEAN_TEXT + "one more line\n")
    (root / "data" / "b.txt").unlink()
    (root / "data" / "sub").mkdir()
    (root / "data" / "sub" / "new.txt").write_text(CLEAN_TEXT)
    problems = check_repository(root).problems
    assert len(problems) == 3, problems
    assert any(p.startswith("data/a.txt: sha256 is ") and sha(CLEAN_TEXT) in p for p in problems)
    assert any(p.startswith("data/b.txt: listed in data/manifest.toml but missing") for p in problems)
    assert any(p.startswith("data/sub/new.txt: not listed in data/manifest.toml") for p in problems)
    assert all("\n" not in p for p in problems)


def test_entries_need_source_licence_and_sha256(tmp_path):
    root = make_repo(tmp_path, {"a.txt": CLEAN_TEXT}, entries=[{"path": "a.txt", "license": ""}])
    [problem] = check_repository(root).problems
    assert "[[file]] 'a.txt'" in problem and "source, license, sha256" in problem


def test_paths_must_stay_inside_data(tmp_path):
    root = make_repo(
        tmp_path,
        {"a.txt": CLEAN_TEXT},
        entries=[
            {"path": "../configs/train.toml", "source": "s", "license": "MIT", "sha256": "0" * 64},
            {"path": "a.txt", "source": "s", "license": "MIT", "sha256": sha(CLEAN_TEXT)},
        ],
    )
    problems = check_repository(root).problems
    assert problems == [
        "data/manifest.toml [[file]] '../configs/train.toml': path must be relative to data/ and stay inside it"
    ]


def test_personal_data_is_counted_located_and_fails_above_the_threshold(tmp_path):
    text = (
        "line one is clean\n"
        "mail juliet@capulet.example now\n"
        "card 4111 1111 1111 1111 and server 8.8.8.8\n"
        "token ghp_" + "a1B2c3D4e5" * 4 + "\n"
    )
    root = make_repo(tmp_path, {"leaky.txt": text})
    report = check_repository(root)
    [data_file] = report.files
    assert data_file.pii_counts == {"credit_card": 1, "email": 1, "github_token": 1, "ipv4": 1}
    assert [(f.line, f.column, f.kind) for f in data_file.pii_locations] == [
        (2, 6, "email"),
        (3, 6, "credit_card"),
        (3, 37, "ipv4"),
        (4, 7, "github_token"),
    ]
    assert len(report.problems) == 1 and report.problems[0].startswith("personal data scan: 4 finding(s)")
    assert check_repository(root, max_pii=4).ok


def test_share_alike_and_copyleft_licences_warn(tmp_path):
    files = {"wiki.txt": CLEAN_TEXT, "code.txt": "x = 1\n", "map.txt": "lat lon\n", "plain.txt": "ok\n"}
    licences = {
        "wiki.txt": "CC-BY-SA-4.0",
        "code.txt": "GPL-3.0-only OR MIT",
        "map.txt": "ODbL-1.0",
        "plain.txt": "CC-BY-4.0",
    }
    entries = [{"path": n, "source": "s", "license": licences[n], "sha256": sha(t)} for n, t in files.items()]
    report = check_repository(make_repo(tmp_path, files, entries))
    assert report.ok, report.problems
    warned = [w.split(":")[0] for w in report.warnings[:-1]]
    assert warned == ["data/wiki.txt", "data/code.txt", "data/map.txt"]
    assert "CC-BY-SA-4.0, GPL-3.0-only, ODbL-1.0" in report.warnings[-1] and "compatib" in report.warnings[-1]


@pytest.mark.parametrize(
    "licence, problem", [("NOASSERTION", "unknown"), ("Public Domain!", "not an SPDX licence id"), ("", None)]
)
def test_unknown_or_malformed_licences_are_problems(tmp_path, licence, problem):
    entries = [{"path": "a.txt", "source": "s", "license": licence, "sha256": sha(CLEAN_TEXT)}]
    problems = check_repository(make_repo(tmp_path, {"a.txt": CLEAN_TEXT}, entries)).problems
    assert len(problems) == 1
    assert (problem or "missing or empty key(s) license") in problems[0]


def test_spdx_helpers():
    assert parse_spdx("(MIT OR Apache-2.0) AND LicenseRef-Shakespeare") == (
        ["MIT", "Apache-2.0", "LicenseRef-Shakespeare"],
        None,
    )
    assert licence_note("CC-BY-NC-SA-4.0") == "non-commercial and share-alike"
    assert licence_note("Apache-2.0") is None and licence_note("CC0-1.0") is None


def test_outside_a_generated_repository(tmp_path):
    with pytest.raises(ComplianceError, match="data/manifest.toml not found"):
        check_repository(tmp_path)
    result = run("--dir", str(tmp_path))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")


def test_cli_json_and_exit_codes(tmp_path):
    root = make_repo(
        tmp_path,
        {"verse.txt": CLEAN_TEXT, "notes.txt": "call +44 20 7946 0958\n"},
        entries=[{"path": "verse.txt", "source": "s", "license": "CC0-1.0", "sha256": sha(CLEAN_TEXT)}],
    )
    result = run("--dir", str(root), "--json")
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["pii_total"] == 1
    assert [(f["path"], f["listed"]) for f in report["files"]] == [("data/verse.txt", True), ("data/notes.txt", False)]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(report["problems"]) == 2

    (root / "data" / "notes.txt").unlink()
    result = run("--dir", str(root))
    assert result.exit_code == 0, result.output
    assert "data/verse.txt" in result.stdout and "compliance: 1 data file(s)" in result.stderr


@pytest.mark.usefixtures("fixed_cpu", "template_cache")
@pytest.mark.parametrize("track", list(load_tracks()))
def test_a_generated_repository_passes_its_own_check(tmp_path, track):
    defaults = load_tracks()[track].defaults
    plan = plan_run(
        "fresh",
        {
            "track": track,
            "budget": defaults.budget,
            "hardware": defaults.hardware,
            "parallelism": defaults.parallelism,
            "model_preset": defaults.model_preset,
            "exercises": defaults.exercises,
        },
    )
    render_into(plan.answers, tmp_path)
    report = check_repository(tmp_path)
    assert report.ok, report.problems
    assert [f.path for f in report.files] == ["data/shakespeare.txt"]
    workflow = (tmp_path / ".github" / "workflows" / "ci.yml").read_text()
    assert "llmgen compliance" in workflow, "the generated CI must run the compliance check"
