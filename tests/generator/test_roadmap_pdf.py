"""ROADMAP.pdf, read back with pypdf: the graph page's nodes link to their step pages, every step page
links back to the graph, each step page carries its command, estimate, code excerpt, checkpoint test
with expected output, tools and notes; the outline lists every step; `llmgen roadmap --pdf` makes it
again after a change of plan."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml
from pypdf import PdfReader
from typer.testing import CliRunner

from generator.cli import app
from generator.plan import plan_run
from generator.render import render_into
from generator.roadmap_pdf import EXCERPTS, SECURITY, TOOLS, _pdf_text, code_excerpt, roadmap_pdf_bytes
from generator.tracks import load_tracks

pytestmark = pytest.mark.usefixtures("fixed_cpu", "template_cache")

TRACKS = list(load_tracks())


def plan_for(track: str, exercises: bool):
    defaults = load_tracks()[track].defaults
    return plan_run(
        f"{track}-llm",
        {
            "track": track,
            "budget": defaults.budget,
            "hardware": defaults.hardware,
            "parallelism": defaults.parallelism,
            "model_preset": defaults.model_preset,
            "exercises": exercises,
        },
    )


@pytest.fixture(scope="module", params=TRACKS)
def project(request, tmp_path_factory):
    """(roadmap data, project directory rendered by `llmgen new`'s render step, its PDF read by pypdf)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMGEN_CPU_TFLOPS", "0.5")
        mp.setenv("LLMGEN_TEMPLATE_CACHE", str(tmp_path_factory.getbasetemp() / "llmgen-template-cache"))
        plan = plan_for(request.param, exercises=request.param == "beginner")
        directory = tmp_path_factory.mktemp(request.param)
        render_into(plan.answers, directory)
    return plan.answers["roadmap"], directory, PdfReader(directory / "ROADMAP.pdf")


def flat(text: str) -> str:
    return " ".join(text.split())


def step_pages(reader: PdfReader, roadmap: dict) -> dict[str, list[int]]:
    """step id -> the pages (0-based) it fills, from the outline (one entry per step, in order)."""
    starts = {entry.title: reader.get_destination_page_number(entry) for entry in reader.outline}
    ends = sorted(starts.values()) + [len(reader.pages)]
    pages = {}
    for step in roadmap["steps"]:
        first = starts[f"{step['number']}. {step['title']}" + (" (optional)" if step["optional"] else "")]
        pages[step["id"]] = list(range(first, next(e for e in ends if e > first)))
    return pages


def links(reader: PdfReader, page: int) -> list[tuple[list[float], int | str]]:
    """(rectangle, destination page or URI) of each link annotation on a page."""
    found = []
    for ref in reader.pages[page].get("/Annots", []):
        annot = ref.get_object()
        if annot.get("/Subtype") != "/Link":
            continue
        if "/Dest" in annot:
            found.append(([float(v) for v in annot["/Rect"]], reader.get_page_number(annot["/Dest"][0].get_object())))
        elif annot.get("/A", {}).get("/URI"):
            found.append(([float(v) for v in annot["/Rect"]], str(annot["/A"]["/URI"])))
    return found


def text_at(reader: PdfReader, page: int) -> list[tuple[float, float, str]]:
    """(x, y, text) of each piece of text drawn on a page, in page coordinates."""
    pieces = []

    def visit(text, cm, tm, font, size):
        if text.strip():
            x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
            y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
            pieces.append((x, y, text))

    reader.pages[page].extract_text(visitor_text=visit)
    return pieces


def test_every_graph_node_links_to_its_step_page(project) -> None:
    roadmap, _, reader = project
    pages = step_pages(reader, roadmap)
    texts = text_at(reader, 0)
    node_links = [(rect, dest) for rect, dest in links(reader, 0) if isinstance(dest, int) and dest >= 2]
    assert len(node_links) == len(roadmap["steps"]), "one link per node"
    by_page = {pages[s["id"]][0]: s for s in roadmap["steps"]}
    for (x0, y0, x1, y1), dest in node_links:
        step = by_page[dest]
        inside = " ".join(t for x, y, t in texts if x0 <= x <= x1 and y0 <= y <= y1)
        assert inside.startswith(f"{step['number']}. "), (step["id"], inside)  # the node drawn under the link


def test_every_step_page_links_back_to_the_graph(project) -> None:
    roadmap, _, reader = project
    for step_id, numbers in step_pages(reader, roadmap).items():
        for number in numbers:
            assert 0 in [dest for _, dest in links(reader, number)], (step_id, number)
            assert "Back to the graph" in reader.pages[number].extract_text()


def test_each_step_page_carries_its_command_estimate_code_test_tools_and_notes(project) -> None:
    roadmap, directory, reader = project
    for step_id, numbers in step_pages(reader, roadmap).items():
        step = next(s for s in roadmap["steps"] if s["id"] == step_id)
        text = flat(" ".join(reader.pages[n].extract_text() for n in numbers))
        assert flat(_pdf_text(step["command"])) in text, step_id
        assert flat(_pdf_text(step["estimate"]["text"])) in text, step_id
        assert flat(f'python -m pytest "{step["checkpoint_test"]}"') in text
        assert "Expected:" in text and "(no test" not in text and "missing or unreadable" not in text
        where, excerpt = code_excerpt(step_id, step["code"])
        assert where and flat(_pdf_text(excerpt.splitlines()[0])) in text, step_id  # its def or class line
        assert "/site-packages/" not in text and str(directory) not in text
        uris = [dest for n in numbers for _, dest in links(reader, n) if isinstance(dest, str)]
        assert uris == [url for _, url in TOOLS[step_id]] and all(u.startswith("https://") for u in uris)
        for note in [*SECURITY.get(step_id, ()), *step["compliance"]]:
            assert flat(_pdf_text(note)) in text, (step_id, note)
        heading = reader.pages[numbers[0]].extract_text()
        assert ("(optional)" in heading and "OPTIONAL" in heading) == step["optional"], step_id
        if roadmap["exercises"]:
            for exercise in step["exercises"]:
                assert f"Exercise: {exercise['task']}" in text


def test_outline_and_the_plan_page(project) -> None:
    roadmap, _, reader = project
    titles = [entry.title for entry in reader.outline]
    assert titles[:2] == ["Graph of the steps", "Plan and estimates"]
    assert titles[2:] == [
        f"{s['number']}. {s['title']}" + (" (optional)" if s["optional"] else "") for s in roadmap["steps"]
    ]
    plan = flat(reader.pages[1].extract_text())
    assert flat(roadmap["total"]) in plan and flat(roadmap["total"]) in flat(reader.pages[0].extract_text())
    assert sorted(dest for _, dest in links(reader, 1) if isinstance(dest, int) and dest > 1) == sorted(
        pages[0] for pages in step_pages(reader, roadmap).values()
    )  # the plan's rows link to the steps


def test_same_answers_give_the_same_bytes(project) -> None:
    roadmap, directory, _ = project
    answers = yaml.safe_load((directory / ".copier-answers.yml").read_text())
    assert roadmap_pdf_bytes(directory, answers)[0] == (directory / "ROADMAP.pdf").read_bytes()


def test_every_track_step_has_an_excerpt_and_tools() -> None:
    for track in load_tracks().values():
        for step in track.steps:
            assert step.id in EXCERPTS and step.id in TOOLS, f"{track.name}/{step.id}: add it to roadmap_pdf.py"


def test_llmgen_roadmap_pdf_after_a_change_of_plan(project, tmp_path, monkeypatch) -> None:
    roadmap, directory, _ = project
    copy = tmp_path / "project"
    copy.mkdir()
    for name in (".copier-answers.yml", "ROADMAP.pdf"):
        (copy / name).write_bytes((directory / name).read_bytes())
    (copy / "tests").symlink_to(directory / "tests")
    answers = yaml.safe_load((copy / ".copier-answers.yml").read_text())
    answers.update(hardware="4xA100-80GB", parallelism="ddp")  # a change of plan: other hardware
    (copy / ".copier-answers.yml").write_text(yaml.safe_dump(answers))
    monkeypatch.chdir(copy)
    refused = CliRunner().invoke(app, shlex.split("roadmap --pdf"))
    assert refused.exit_code == 2 and refused.output.startswith("error: ROADMAP.pdf exists; pass --force")
    done = CliRunner().invoke(app, shlex.split("roadmap --pdf --force"))  # as docs/roadmap_artifacts.md shows it
    assert done.exit_code == 0, done.output
    assert re.match(r"wrote ROADMAP.pdf \(\d+ pages, \d+ KiB\) in [\d.]+ s", done.output)
    text = flat(PdfReader(copy / "ROADMAP.pdf").pages[1].extract_text())
    assert "4xA100-80GB" in text and "4xA100-80GB" not in flat(roadmap["total"])
    table = CliRunner().invoke(app, shlex.split("roadmap"), env={"COLUMNS": "300"})
    assert table.exit_code == 0 and "4xA100-80GB" in table.output and roadmap["steps"][0]["title"] in table.output


def test_llmgen_roadmap_outside_a_project_is_one_line(tmp_path) -> None:
    result = CliRunner().invoke(app, ["roadmap", "--pdf", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "not a project generated by llmgen" in result.output
    assert result.output.count("\n") == 1
    assert not (tmp_path / "ROADMAP.pdf").exists()
