"""roadmap.html in a browser's terms: depth colours far enough apart (WCAG contrast ratios), the graph
reachable again after a click on a node (sticky beside the steps, and a link back from every step),
exercise nodes marked, and, in headless Chromium where it is installed, nothing cut off or out of reach
at 800, 1400 and 1920 px.

Projects are rendered as `llmgen new` renders them (`plan_run`, then `render_into`: Copier).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from generator.plan import plan_run
from generator.render import render_into
from generator.roadmap_pdf import DEPTH_COLOURS
from generator.tracks import load_tracks

pytestmark = pytest.mark.usefixtures("fixed_cpu", "template_cache")

TRACKS = list(load_tracks())
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(track: str, exercises: bool, directory: Path) -> tuple[str, dict]:
    """(roadmap.html, roadmap data) of a project of `track` rendered into `directory`."""
    defaults = load_tracks()[track].defaults
    answers = plan_run(
        f"{track}-llm",
        {
            "track": track,
            "budget": defaults.budget,
            "hardware": defaults.hardware,
            "parallelism": defaults.parallelism,
            "model_preset": defaults.model_preset,
            "exercises": exercises,
        },
    ).answers
    render_into(answers, directory)
    return (directory / "roadmap.html").read_text(encoding="utf-8"), answers["roadmap"]


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, tuple[str, dict]]:
    """track -> (roadmap.html in exercise mode, roadmap data)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMGEN_CPU_TFLOPS", "0.5")
        mp.setenv("LLMGEN_TEMPLATE_CACHE", str(tmp_path_factory.getbasetemp() / "llmgen-template-cache"))
        return {track: render(track, True, tmp_path_factory.mktemp(track)) for track in TRACKS}


# ----------------------------------------------------------------------------------------------------
# Colours: WCAG 2.1 relative luminance and contrast ratio
# ----------------------------------------------------------------------------------------------------


def luminance(colour: str) -> float:
    """WCAG 2.1 relative luminance of '#rrggbb'."""
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def css_variables(page: str) -> dict[str, str]:
    root = re.search(r":root\s*{([^}]*)}", page)
    assert root, "roadmap.html defines its colours as CSS variables in :root"
    return dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6})", root.group(1)))


def depth_colours_pass(fills: dict[str, str], text_on: dict[str, str]) -> bool:
    """WCAG 2.1: fills that tell depths apart differ by >= 3:1 (1.4.11, non-text contrast); the text on
    each fill by >= 4.5:1 (1.4.3, normal text)."""
    names = list(fills)
    apart = all(contrast(fills[a], fills[b]) >= 3 for i, a in enumerate(names) for b in names[i + 1 :])
    readable = all(contrast(fills[name], text_on[name]) >= 4.5 for name in names)
    return apart and readable


def test_depth_colours_are_far_apart_and_their_text_readable(pages) -> None:
    page, _ = pages[TRACKS[0]]
    var = css_variables(page)
    fills = {depth: var[depth] for depth in ("read", "build", "extend")}
    text_on = {"read": var["ink"], "build": var["ink"], "extend": var["on-extend"]}
    assert depth_colours_pass(fills, text_on)
    assert contrast(var["exercise"], var["on-exercise"]) >= 4.5  # the exercise badge's text
    # ROADMAP.pdf draws its graph with the same colours.
    assert {depth: DEPTH_COLOURS[depth][0] for depth in fills} == fills
    assert {depth: DEPTH_COLOURS[depth][1] for depth in fills} == text_on
    # Control: the colours before this fix (violet #fbefff next to white, 1.11:1) fail the same check.
    assert not depth_colours_pass(
        {"read": "#ffffff", "build": "#ddf4ff", "extend": "#fbefff"},
        {"read": var["ink"], "build": var["ink"], "extend": var["ink"]},
    )


@pytest.mark.parametrize("track", TRACKS)
def test_every_step_links_back_to_the_graph_and_exercises_are_marked(pages, track: str) -> None:
    page, roadmap = pages[track]
    assert 'id="graph"' in page
    for step in roadmap["steps"]:
        section = page[page.index(f'<section class="step" id="step-{step["id"]}">') :]
        section = section[: section.index("</section>")]
        assert '<a class="back" href="#graph">' in section, step["id"]
        node = re.search(rf'<a class="node ([^"]*)" id="node-{step["id"]}"', page)
        assert node is not None
        marked = "exercise" in node.group(1).split()
        assert marked == bool(step["exercises"]), step["id"]  # exercise mode: the steps that have one
        assert ('<span class="tag exercise">' in section) == marked


def test_complete_mode_marks_no_exercise(tmp_path) -> None:
    complete, roadmap = render("beginner", False, tmp_path)
    assert any(step["exercises"] for step in roadmap["steps"])  # the steps that have one in exercise mode
    assert '<rect class="badge"' not in complete and 'class="tag exercise"' not in complete


# ----------------------------------------------------------------------------------------------------
# Headless Chromium: layout at 800, 1400 and 1920 px
# ----------------------------------------------------------------------------------------------------

# Runs after the page has been laid out: what a reader at this window size sees, as JSON in <pre id=probe>.
PROBE = """<script>
(() => {
  const r = {width: innerWidth, height: innerHeight};
  const inside = el => { const b = el.getBoundingClientRect(); return b.left >= -0.5 && b.right <= innerWidth + 0.5; };
  r.overflowX = document.documentElement.scrollWidth - innerWidth;
  r.nodesCut = [...document.querySelectorAll(".node")].filter(n => !inside(n)).map(n => n.id);
  const svg = document.querySelector("#graph svg");
  r.scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
  const graph = () => { const b = document.getElementById("graph").getBoundingClientRect();
                        return {top: b.top, bottom: b.bottom}; };
  const steps = document.querySelectorAll("section.step"), last = steps[steps.length - 1];
  const node = document.getElementById("node-" + last.id.slice("step-".length));
  node.dispatchEvent(new MouseEvent("click", {bubbles: true, cancelable: true}));
  r.hash = location.hash;
  r.graphAfterClick = graph();
  last.querySelector("a.back").click();
  r.graphAfterBack = graph();
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
})();
</script>"""


def probe(page: str, width: int, tmp_path: Path, css: str = "") -> dict:
    """Open the page in headless Chromium at width x 1200 and return what PROBE measured."""
    path = tmp_path / f"roadmap-{width}.html"
    path.write_text(
        page.replace("</head>", f"<style>{css}</style></head>").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},1200",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium printed no probe result: {done.stderr[-500:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
@pytest.mark.parametrize("width", [800, 1400, 1920])
@pytest.mark.parametrize("track", TRACKS)
def test_in_chromium_nothing_is_cut_off_and_the_graph_stays_reachable(pages, tmp_path, track: str, width: int) -> None:
    page, roadmap = pages[track]
    seen = probe(page, width, tmp_path)
    assert seen["width"] == width
    assert seen["nodesCut"] == [] and seen["overflowX"] <= 0, seen
    assert seen["scale"] <= 1  # drawn at most at its natural size, smaller where the window is narrow
    last = roadmap["steps"][-1]["id"]
    assert seen["hash"] == f"#step-{last}"  # the node's link went to its step

    def visible(box: dict) -> bool:
        return 0 <= box["top"] < seen["height"]

    if width >= 1200:  # two columns: the graph stayed in view beside the step (sticky), all of it
        assert visible(seen["graphAfterClick"]) and seen["graphAfterClick"]["bottom"] <= seen["height"], seen
    assert visible(seen["graphAfterBack"]), seen  # and "Back to the graph" brings it back in any layout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_in_chromium_the_probe_sees_the_old_layout_fail(pages, tmp_path) -> None:
    """Control: with the page's old layout put back (the SVG at its natural size, the graph not sticky),
    the same probe finds nodes cut off and the graph scrolled away after a click."""
    page, roadmap = pages["practitioner"]  # its graph is the widest: 1,178 user units
    old_page = page.replace("<svg ", f'<svg width="{roadmap["width"]}" ', 1)
    old = "#graph { position: static !important; } #graph svg { width: auto !important; max-width: none !important; }"
    narrow = probe(old_page, 800, tmp_path, css=old)
    assert narrow["nodesCut"] and narrow["overflowX"] > 0
    wide = probe(old_page, 1400, tmp_path, css=old)
    assert wide["graphAfterClick"]["bottom"] < 0
