"""The roadmap of each track: its data (steps, estimates from the estimator, code pointers, layout), and
what a generated repository gets from it: ROADMAP.md with a Mermaid graph, a standalone roadmap.html
whose nodes lead to each step, COMPLIANCE.md's per-step checklist, and one checkpoint test per step."""

from __future__ import annotations

import ast
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import escape

from generator.estimate import RunSpec, estimate_run, parse_hardware
from generator.plan import plan_run
from generator.render import render_into
from generator.roadmap import EXERCISES, step_estimate
from generator.tracks import load_tracks
from reference_llm.model import ModelConfig

pytestmark = pytest.mark.usefixtures("fixed_cpu", "template_cache")

REPO = Path(__file__).resolve().parents[2]
TRACKS = list(load_tracks())
POINTER = re.compile(r'see ROADMAP\.md, step \\?"([^"\\]+)\\?"')


def plan_for(track: str, exercises: bool = False):
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
def rendered(request, tmp_path_factory):
    """(track, roadmap data, project directory) for each track, rendered once per module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMGEN_CPU_TFLOPS", "0.5")
        mp.setenv("LLMGEN_TEMPLATE_CACHE", str(tmp_path_factory.getbasetemp() / "llmgen-template-cache"))
        plan = plan_for(request.param)
        project = tmp_path_factory.mktemp(request.param)
        render_into(plan.answers, project)
    return request.param, plan.answers["roadmap"], project


@pytest.mark.parametrize("track", TRACKS)
def test_roadmap_data(track):
    plan = plan_for(track)
    roadmap = plan.answers["roadmap"]
    steps = load_tracks()[track].ordered_steps()
    assert roadmap["step_ids"] == [s.id for s in steps] == [s["id"] for s in roadmap["steps"]]
    assert [s["number"] for s in roadmap["steps"]] == list(range(1, len(steps) + 1))
    json.dumps(roadmap)  # it travels through Copier's answers file
    by_id = {s["id"]: s for s in roadmap["steps"]}
    for step in roadmap["steps"]:
        for path in step["code"]:
            assert (REPO / path).exists(), f"{track}/{step['id']}: {path}"
        assert "{run}" not in step["command"] and step["estimate"]["text"]
        for dep in step["requires"]:  # drawn below its prerequisites
            assert step["y"] > by_id[dep]["y"]
        assert 0 <= step["x"] and step["x"] + roadmap["node_width"] <= roadmap["width"]
        assert 0 <= step["y"] and step["y"] + roadmap["node_height"] <= roadmap["height"]
    boxes = {(s["x"], s["y"]) for s in roadmap["steps"]}
    assert len(boxes) == len(steps), "two steps share a box"
    assert {e.step for e in EXERCISES} <= set(by_id)
    assert sum(len(s["exercises"]) for s in roadmap["steps"]) == len(EXERCISES)


def test_estimates_come_from_the_estimator():
    plan = plan_for("practitioner")
    answers, track = plan.answers, load_tracks()["practitioner"]
    model = ModelConfig.preset(answers["model_preset"])
    hardware = parse_hardware(answers["hardware"])
    pretrain = step_estimate(track.step("pretrain"), model, answers, hardware, "bfloat16")
    spec = RunSpec(
        model,
        hardware,
        float(answers["tokens"]),
        parallelism=answers["parallelism"],
        micro_batch=answers["micro_batch"],
        seq_len=model.block_size,
        grad_accum=answers["grad_accum"],
        precision="bfloat16",
    )
    est = estimate_run(spec)
    assert pretrain["gpu_hours"] == pytest.approx(est.gpu_hours) and pretrain["cost_usd"] == pytest.approx(est.cost_usd)
    assert f"{est.gpu_hours:.3g} GPU-hours" in pretrain["text"] and f"${est.cost_usd:,.2f}" in pretrain["text"]
    # a forward-only step costs the training run's time scaled by forward / training FLOPs per token
    evaluate = step_estimate(track.step("evaluate"), model, answers, hardware, "bfloat16")
    training = estimate_run(spec.but(tokens=track.step("evaluate").estimate.tokens))
    ratio = model.flops_per_token(training=False) / model.flops_per_token(training=True)
    assert evaluate["gpu_hours"] == pytest.approx(training.gpu_hours * ratio)
    data = step_estimate(track.step("data"), model, answers, hardware, "bfloat16")
    assert data["text"] == track.step("data").estimate.note and data["gpu_hours"] == 0
    required = [s for s in plan.answers["roadmap"]["steps"] if not s["optional"]]
    assert "GPU-hours" in plan.answers["roadmap"]["total"] and len(required) < len(track.steps)


def test_roadmap_markdown(rendered):
    track, roadmap, project = rendered
    text = (project / "ROADMAP.md").read_text()
    mermaid = text[text.index("```mermaid") : text.index("```", text.index("```mermaid") + 3)]
    sections = {chunk[: chunk.index('"')]: chunk for chunk in text.split('<a id="step-')[1:]}
    assert list(sections) == roadmap["step_ids"]
    for step in roadmap["steps"]:
        assert f'{step["id"]}["{step["number"]}. {step["title"]}"]' in mermaid
        arrow = "-.->" if step["optional"] else "-->"
        for dep in step["requires"]:
            assert f"{dep} {arrow} {step['id']}" in mermaid
        section = sections[step["id"]]
        assert f"## {step['number']}. {step['title']}" in section
        assert step["summary"] in section and step["command"] in section and step["estimate"]["text"] in section
        assert f'python -m pytest "{step["checkpoint_test"]}"' in section
        for exercise in step["exercises"]:
            assert f"`{exercise['symbol']}` in `{exercise['file']}`" in section
    optional = [s["id"] for s in roadmap["steps"] if s["optional"]]
    if optional:
        assert f"class {','.join(optional)} optional" in mermaid
    assert roadmap["total"] in text


class _Page(HTMLParser):
    """Collects ids, links and anything that would fetch from the network."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.node_links: list[str] = []
        self.fetches: list[str] = []
        self._in_svg = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        self._in_svg |= tag == "svg"
        if tag == "a" and self._in_svg:
            self.node_links.append(attrs.get("href", ""))
        if tag in ("script", "img", "iframe", "link", "source") and ("src" in attrs or "href" in attrs):
            self.fetches.append(f"<{tag}> {attrs}")

    def handle_endtag(self, tag):
        self._in_svg &= tag != "svg"


def test_roadmap_html_is_standalone_and_clickable(rendered):
    track, roadmap, project = rendered
    html = (project / "roadmap.html").read_text()
    page = _Page()
    page.feed(html)
    assert page.fetches == [] and "@import" not in html and "url(http" not in html
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", html), "a link that reaches the network"
    assert page.node_links == [f"#step-{s['id']}" for s in roadmap["steps"]], "one clickable node per step"
    for step in roadmap["steps"]:
        assert f"step-{step['id']}" in page.ids and f"node-{step['id']}" in page.ids
        section = html[html.index(f'<section class="step" id="step-{step["id"]}">') :]
        section = section[: section.index("</section>")]
        for part in (step["command"], step["estimate"]["text"], step["checkpoint_test"]):
            assert str(escape(part)) in section, (step["id"], part)
    edges = html.count('class="edge')
    assert edges == sum(len(s["requires"]) for s in roadmap["steps"])
    assert html.count('class="edge optional"') == sum(len(s["requires"]) for s in roadmap["steps"] if s["optional"])


def test_compliance_checklist_per_step(rendered):
    track, roadmap, project = rendered
    text = (project / "COMPLIANCE.md").read_text()
    for heading in (
        "Personal data",
        "Licences and their compatibility",
        "Dataset provenance",
        "Model card and intended use",
    ):
        assert f"### {heading}" in text
    for step in roadmap["steps"]:
        for note in step["compliance"]:
            assert f"- [ ] {note}" in text
        if step["compliance"]:
            assert f'<a id="step-{step["id"]}"></a>' in text


def test_one_checkpoint_test_per_step_with_its_expected_output(rendered):
    track, roadmap, project = rendered
    titles = {s["title"] for s in roadmap["steps"]}
    for step in roadmap["steps"]:
        file, name = step["checkpoint_test"].split("::")
        source = (project / file).read_text()
        functions = {node.name: node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)}
        assert name in functions, f"{track}: {step['checkpoint_test']} does not exist"
        docstring = ast.get_docstring(functions[name]) or ""
        assert "Expected" in docstring, f"{step['checkpoint_test']}: its docstring states no expected output"
    for path in (project / "tests" / "checkpoints").glob("test_*.py"):
        pointers = set(POINTER.findall(path.read_text()))
        assert pointers, f"{path.name}: failure messages name no ROADMAP step"
        assert pointers <= titles, f"{path.name} points at steps {pointers - titles} that {track} does not have"
    present = {p.name for p in (project / "tests" / "checkpoints").glob("test_*.py")}
    assert present == {s["checkpoint_test"].split("::")[0].split("/")[-1] for s in roadmap["steps"]}
