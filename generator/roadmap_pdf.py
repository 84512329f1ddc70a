"""ROADMAP.pdf: the roadmap of a generated project as a document to read away from the screen.

    info = write_roadmap_pdf(project_dir, answers)      # answers: what `llmgen new` gave Copier
    info.pages, info.size, info.seconds

Page 1 is the dependency graph (every node a link to its step); page 2 the plan and each step's
estimate; then one page or more per step: what it is, the command that runs it, its estimate for this
plan, a short excerpt of the reference_llm code that implements it (read from the installed source when
the PDF is made), its checkpoint test with the output it expects (read from the project's own test),
open-source tools for the same job, and its security and compliance notes. Every step page links back
to the graph, and the PDF outline (bookmarks) lists the graph, the plan and each step.

ReportLab draws it: a pure-Python wheel of about 2 MB with no system libraries and no network, which
renders a project's PDF in well under a second. (Typst's wheel is ~34 MB; WeasyPrint needs Pango from
the system.) Only the 14 standard PDF fonts are used, so nothing is embedded and the file stays small;
their WinAnsi encoding lacks Greek and arrows, so `_pdf_text` spells those out. `invariant=True` fixes
the creation date and file ID, so the same answers give the same bytes.
"""

from __future__ import annotations

import ast
import io
import os
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.lib.utils import simpleSplit
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    BaseDocTemplate,
    Flowable,
    Frame,
    KeepTogether,
    PageBreak,
    PageTemplate,
    Paragraph,
    Spacer,
    Table,
    TableStyle,
    XPreformatted,
)

import reference_llm
from generator.roadmap import roadmap_for_answers

PDF_FILE = "ROADMAP.pdf"
# Node fill and text colour per depth; roadmap.html uses the same (tests/generator/test_roadmap_html.py).
DEPTH_COLOURS = {"read": ("#ffffff", "#1d2430"), "build": ("#4493f8", "#1d2430"), "extend": ("#512a97", "#ffffff")}
EXERCISE_COLOURS = ("#9a3412", "#ffffff")
DEPTH_TEXT = {
    "read": "read the code and run its checkpoint test",
    "build": "write or rebuild it and run it at this project's scale",
    "extend": "change it and measure the effect (an ablation)",
}
EXCERPT_LINES = 30

# The code each step is about: "module:qualname" in reference_llm; the first one inside the step's own
# modules is shown.
EXCERPTS: dict[str, tuple[str, ...]] = {
    "data": ("reference_llm.data.manifest:add_files", "reference_llm.assets:manifest"),
    "clean": ("reference_llm.data.dedup:exact_dedup",),
    "tokenizer": ("reference_llm.tokenizer.bpe_train:train_bpe",),
    "model": ("reference_llm.model.transformer:Attention.forward",),
    "distributed": ("reference_llm.distributed.ddp:DDPEngine.accumulating",),
    "pretrain": ("reference_llm.train.loop:train_step",),
    "generate": ("reference_llm.deploy.generate:sample_next",),
    "evaluate": ("reference_llm.evaluate.perplexity:evaluate_text",),
    "sft": ("reference_llm.posttrain.sft:sft_example",),
    "lora": ("reference_llm.posttrain.lora:LoRALinear.forward",),
    "align": ("reference_llm.posttrain.dpo:dpo_loss",),
    "reward": ("reference_llm.posttrain.reward:pairwise_loss",),
    "quantize": ("reference_llm.deploy.quantize:QuantizedLinear.dequantize",),
    "export": ("reference_llm.deploy.export:export_hf",),
    "deploy": ("reference_llm.deploy.serve:Generator.run",),
}

# Open-source tools that do the same job at scale, with their home pages.
TOOLS: dict[str, tuple[tuple[str, str], ...]] = {
    "data": (
        ("Hugging Face datasets", "https://github.com/huggingface/datasets"),
        ("DataTrove", "https://github.com/huggingface/datatrove"),
    ),
    "clean": (
        ("DataTrove", "https://github.com/huggingface/datatrove"),
        ("text-dedup", "https://github.com/ChenghaoMou/text-dedup"),
        ("Presidio (PII)", "https://github.com/microsoft/presidio"),
    ),
    "tokenizer": (
        ("Hugging Face tokenizers", "https://github.com/huggingface/tokenizers"),
        ("SentencePiece", "https://github.com/google/sentencepiece"),
        ("tiktoken", "https://github.com/openai/tiktoken"),
    ),
    "model": (
        ("nanoGPT", "https://github.com/karpathy/nanoGPT"),
        ("Hugging Face transformers", "https://github.com/huggingface/transformers"),
    ),
    "distributed": (
        ("PyTorch distributed (DDP, FSDP)", "https://pytorch.org/docs/stable/distributed.html"),
        ("DeepSpeed", "https://github.com/deepspeedai/DeepSpeed"),
        ("Megatron-LM", "https://github.com/NVIDIA/Megatron-LM"),
    ),
    "pretrain": (
        ("torchtitan", "https://github.com/pytorch/torchtitan"),
        ("LitGPT", "https://github.com/Lightning-AI/litgpt"),
    ),
    "generate": (
        ("llama.cpp", "https://github.com/ggml-org/llama.cpp"),
        ("Hugging Face transformers", "https://github.com/huggingface/transformers"),
    ),
    "evaluate": (
        ("lm-evaluation-harness", "https://github.com/EleutherAI/lm-evaluation-harness"),
        ("HumanEval", "https://github.com/openai/human-eval"),
    ),
    "sft": (("TRL", "https://github.com/huggingface/trl"), ("Axolotl", "https://github.com/axolotl-ai-cloud/axolotl")),
    "lora": (("PEFT", "https://github.com/huggingface/peft"),),
    "align": (("TRL", "https://github.com/huggingface/trl"), ("OpenRLHF", "https://github.com/OpenRLHF/OpenRLHF")),
    "reward": (("TRL", "https://github.com/huggingface/trl"), ("OpenRLHF", "https://github.com/OpenRLHF/OpenRLHF")),
    "quantize": (
        ("bitsandbytes", "https://github.com/bitsandbytes-foundation/bitsandbytes"),
        ("llama.cpp (GGUF)", "https://github.com/ggml-org/llama.cpp"),
    ),
    "export": (
        ("safetensors", "https://github.com/huggingface/safetensors"),
        ("Hugging Face transformers", "https://github.com/huggingface/transformers"),
    ),
    "deploy": (
        ("vLLM", "https://github.com/vllm-project/vllm"),
        ("llama.cpp server", "https://github.com/ggml-org/llama.cpp"),
    ),
}

# Security notes per step, next to the track's compliance notes.
SECURITY: dict[str, tuple[str, ...]] = {
    "data": ("Check each downloaded file against the sha256 in data/manifest.toml before training on it.",),
    "clean": ("Personal data and secrets found by the scan must not reach the tokenizer or the model.",),
    "pretrain": ("Checkpoints are safetensors plus JSON: loading one never runs code (no pickle).",),
    "distributed": (
        "PyTorch's rendezvous and collectives are unauthenticated: run multi-node jobs on a private network only.",
    ),
    "evaluate": ("HumanEval executes model-written code: only ever inside the evaluator's sandbox.",),
    "lora": ("Adapters are saved as safetensors; load adapters only from sources you trust, like base models.",),
    "export": ("Exported weights are safetensors; do not convert them to pickle-based formats (.bin, .pt).",),
    "deploy": (
        "The server has no authentication and listens on 127.0.0.1 by default: put an authenticating "
        "proxy in front before exposing it.",
    ),
}

# Characters the standard fonts' WinAnsi encoding lacks, as readable ASCII.
_SPELLED = {
    "α": "alpha",
    "β": "beta",
    "γ": "gamma",
    "δ": "delta",
    "ε": "epsilon",
    "η": "eta",
    "θ": "theta",
    "λ": "lambda",
    "μ": "mu",
    "π": "pi",
    "σ": "sigma",
    "τ": "tau",
    "→": "->",
    "←": "<-",
    "↔": "<->",
    "≈": "~",
    "≤": "<=",
    "≥": ">=",
    "≠": "!=",
    "−": "-",
    "∞": "inf",
    "√": "sqrt",
    "∑": "sum",
    "∈": "in",
    "↑": "^",
    "✓": "v",
    "✗": "x",
}


@dataclass(frozen=True)
class PdfInfo:
    path: Path
    pages: int
    size: int  # bytes
    seconds: float


def write_roadmap_pdf(project: Path, answers: Mapping[str, Any], out: Path | None = None) -> PdfInfo:
    """Write ROADMAP.pdf (or `out`) for the project in `project` whose template answers (with their
    "roadmap") are `answers`; written to a temporary name and renamed, so a reader never sees half a file."""
    start = time.perf_counter()
    out = project / PDF_FILE if out is None else out
    data, pages = roadmap_pdf_bytes(project, answers)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:  # O_EXCL: never write through a file or link that is already there; mode 0666 less the umask
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return PdfInfo(out, pages, len(data), time.perf_counter() - start)


def roadmap_pdf_bytes(project: Path, answers: Mapping[str, Any]) -> tuple[bytes, int]:
    """The PDF and its page count."""
    if "steps" not in (answers.get("roadmap") or {}):  # a project's answers record a compact roadmap, or none
        answers = {**answers, "roadmap": roadmap_for_answers(answers)}
    roadmap = answers["roadmap"]
    target = io.BytesIO()
    doc = BaseDocTemplate(
        target,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=18 * mm,
        title=f"Roadmap: {answers['project_name']}",
        author="llmgen",
        subject=roadmap["track_title"],
        creator="llmgen",
        invariant=True,
    )
    frame = Frame(doc.leftMargin, doc.bottomMargin, doc.width, doc.height, id="body")
    doc.addPageTemplates([PageTemplate("page", [frame], onPage=_footer(str(answers["project_name"])))])
    doc.build(_story(project, answers, doc.width, doc.height))
    return target.getvalue(), doc.page


# ----------------------------------------------------------------------------------------------------
# The story: graph page, plan page, step pages
# ----------------------------------------------------------------------------------------------------

_BASE = ParagraphStyle("base", fontName="Helvetica", fontSize=9.5, leading=12.5, textColor="#1d2430")
STYLES = {
    "title": ParagraphStyle("title", _BASE, fontName="Helvetica-Bold", fontSize=17, leading=21, spaceAfter=4),
    "h1": ParagraphStyle("h1", _BASE, fontName="Helvetica-Bold", fontSize=14, leading=18, spaceAfter=2),
    "label": ParagraphStyle("label", _BASE, fontName="Helvetica-Bold", spaceBefore=7, spaceAfter=1.5),
    "body": _BASE,
    "small": ParagraphStyle("small", _BASE, fontSize=8, leading=10),
    "note": ParagraphStyle("note", _BASE, fontSize=8, leading=10, spaceBefore=5),
    "code": ParagraphStyle(
        "code",
        _BASE,
        fontName="Courier",
        fontSize=8.5,
        leading=10.5,
        backColor="#f3f4f6",
        borderPadding=(3, 4, 3, 4),
        leftIndent=4,
        rightIndent=4,
        spaceBefore=1,
        spaceAfter=3,
    ),
    "excerpt": ParagraphStyle(
        "excerpt",
        _BASE,
        fontName="Courier",
        fontSize=7.2,
        leading=8.6,
        backColor="#f6f8fa",
        borderPadding=(3, 4, 3, 4),
        leftIndent=4,
        rightIndent=4,
    ),
    "bullet": ParagraphStyle("bullet", _BASE, leftIndent=10, bulletIndent=2),
}
LINK = "#0969da"


def _story(project: Path, answers: Mapping[str, Any], width: float, height: float) -> list[Flowable]:
    roadmap = answers["roadmap"]
    steps = roadmap["steps"]
    mode = (
        "Exercise mode: the parts marked <i>exercise</i> are yours to write."
        if roadmap["exercises"]
        else "Complete mode: the learner modules hold a reference solution."
    )
    head = [
        Anchor("graph", "Graph of the steps"),
        Paragraph(_t(f"Roadmap: {answers['project_name']}"), STYLES["title"]),
        Paragraph(
            f"<b>{_t(roadmap['track_title'])}.</b> Model {_t(roadmap['model'])} "
            f"({roadmap['params']:,} parameters) on {_t(roadmap['hardware'])}, {_t(roadmap['parallelism'])}, "
            f"{_t(roadmap['precision'])}. {mode}",
            STYLES["body"],
        ),
        Paragraph(
            f"<b>Required steps together:</b> {_t(roadmap['total'])}. Click a step to open its page; "
            f'every step page links back here. <a href="#plan" color="{LINK}">Plan and estimates</a>.',
            STYLES["body"],
        ),
        Spacer(0, 4),
        Legend(bool(roadmap["exercises"])),
        Spacer(0, 6),
    ]
    used = sum(f.wrap(width, height)[1] for f in head) + 30
    story: list[Flowable] = [*head, Graph(roadmap, height - used), PageBreak(), *_plan_page(roadmap), PageBreak()]
    for step in steps:
        story += _step_page(project, answers, step, steps)
        story.append(PageBreak())
    return story[:-1]


def _plan_page(roadmap: Mapping[str, Any]) -> list[Flowable]:
    rows: list[list[Any]] = [
        [
            Paragraph("<b>#</b>", STYLES["small"]),
            Paragraph("<b>step</b>", STYLES["small"]),
            Paragraph("<b>estimate for this plan</b>", STYLES["small"]),
        ]
    ]
    for step in roadmap["steps"]:
        title = f'<a href="#step-{step["id"]}" color="{LINK}">{_t(step["title"])}</a>'
        if step["optional"]:
            title += " <i>(optional)</i>"
        rows.append(
            [
                Paragraph(str(step["number"]), STYLES["small"]),
                Paragraph(title, STYLES["small"]),
                Paragraph(_t(step["estimate"]["text"]), STYLES["small"]),
            ]
        )
    table = Table(rows, colWidths=[8 * mm, 42 * mm, None], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, -1), 0.3, "#d0d7de"),
                ("BACKGROUND", (0, 0), (-1, 0), "#eaeef2"),
            ]
        )
    )
    return [
        Anchor("plan", "Plan and estimates"),
        Paragraph("Plan and estimates", STYLES["h1"]),
        Paragraph(
            f"Track: {_t(roadmap['track_title'])}. Required steps together: <b>{_t(roadmap['total'])}</b>. "
            "Estimates come from llmgen's estimator (6ND training FLOPs plus attention, at a typical "
            "utilisation; <font face='Courier'>llmgen estimate</font> explains each assumption) and are a "
            "plan, not a measurement. Optional steps are not in the total.",
            STYLES["body"],
        ),
        Spacer(0, 6),
        table,
    ]


def _step_page(
    project: Path, answers: Mapping[str, Any], step: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]
) -> list[Flowable]:
    exercise_mode = bool(answers["roadmap"]["exercises"])
    tags = (
        [step["depth"]]
        + (["OPTIONAL"] if step["optional"] else [])
        + (["exercise"] if exercise_mode and step["exercises"] else [])
    )
    title = f"{step['number']}. {step['title']}" + (" (optional)" if step["optional"] else "")
    out: list[Flowable] = [
        Anchor(f"step-{step['id']}", title),
        Paragraph(f'<a href="#graph" color="{LINK}">&lt; Back to the graph</a>', STYLES["small"]),
        Paragraph(f"{_t(title)} <font size='9' color='#57606a'>[{', '.join(tags)}]</font>", STYLES["h1"]),
        Paragraph(_t(step["summary"]), STYLES["body"]),
        Paragraph(
            f"<i>Depth {step['depth']}: {DEPTH_TEXT[step['depth']]}.</i>"
            + (
                " <b>Optional:</b> the plan's total leaves it out; skip it or come back later."
                if step["optional"]
                else ""
            ),
            STYLES["body"],
        ),
    ]
    if step["requires"]:
        titles = {s["id"]: s["title"] for s in steps}
        links = ", ".join(f'<a href="#step-{d}" color="{LINK}">{_t(titles[d])}</a>' for d in step["requires"])
        out.append(Paragraph(f"<b>After:</b> {links}", STYLES["body"]))
    out += [
        _label("Run"),
        Paragraph(_code(step["command"]), STYLES["code"]),
        _label("Estimate for this plan"),
        Paragraph(_t(step["estimate"]["text"]), STYLES["body"]),
    ]
    where, excerpt = code_excerpt(step["id"], step["code"])
    out += [
        _label(f"Code: {where}" if where else "Code"),
        XPreformatted(escape(_pdf_text(excerpt)), STYLES["excerpt"]),
        Paragraph(
            "All of it: "
            + ", ".join(f"<font face='Courier'>{_t(p)}</font>" for p in step["code"])
            + " in reference_llm (installed with llmgen).",
            STYLES["note"],
        ),
    ]
    test = step["checkpoint_test"]
    out += [
        _label("Checkpoint test"),
        Paragraph(_code(f'python -m pytest "{test}"'), STYLES["code"]),
        Paragraph(
            f"<b>Expected:</b> {_t(expected_output(project, test))} pytest then reports "
            "<font face='Courier'>1 passed</font>.",
            STYLES["body"],
        ),
    ]
    for ex in step["exercises"]:
        prefix = "Exercise" if exercise_mode else "Exercise (solved here: reference code)"
        tests = ", ".join(t.split("::")[-1] for t in ex["tests"])
        out.append(
            Paragraph(
                f"<b>{prefix}:</b> {_t(ex['task'])}, <font face='Courier'>{_t(ex['symbol'])}</font> in "
                f"<font face='Courier'>{_t(ex['file'])}</font>; checked by {_t(tests)}.",
                STYLES["body"],
            )
        )
    tools = TOOLS.get(step["id"], ())
    if tools:
        out += [_label("Open-source tools for the same job")]
        out += [
            Paragraph(
                f'<a href="{url}" color="{LINK}">{_t(name)}</a>: {_t(url)}', STYLES["bullet"], bulletText="\u2022"
            )
            for name, url in tools
        ]
    notes = [*SECURITY.get(step["id"], ()), *step["compliance"]]
    out.append(_label("Security and compliance"))
    out += [Paragraph(_t(n), STYLES["bullet"], bulletText="\u2022") for n in notes] or [
        Paragraph("Nothing specific to this step; COMPLIANCE.md holds the project's checklist.", STYLES["body"])
    ]
    return [KeepTogether(out[:5]), *out[5:]]


def _label(text: str) -> Paragraph:
    return Paragraph(_t(text), STYLES["label"])


# ----------------------------------------------------------------------------------------------------
# What the pages quote: code excerpts and expected outputs
# ----------------------------------------------------------------------------------------------------


def code_excerpt(step_id: str, paths: Sequence[str]) -> tuple[str, str]:
    """(where, source) of the step's code: the first EXCERPTS entry inside the step's own modules
    (`paths` as the roadmap lists them, e.g. "reference_llm/train/"), at most EXCERPT_LINES lines, its
    docstring left out (the page explains it). ("", message) when there is none.

    The source is read and parsed, not imported: importing reference_llm's modules would import torch,
    which takes longer than drawing the whole PDF."""
    root = Path(reference_llm.__file__).resolve().parent.parent
    for spec in EXCERPTS.get(step_id, ()):
        module_name, _, qualname = spec.partition(":")
        module_path = module_name.replace(".", "/")
        if not any(module_path == p.removesuffix(".py").rstrip("/") or module_path.startswith(p) for p in paths):
            continue
        file = root / f"{module_path}.py"
        file = file if file.is_file() else root / module_path / "__init__.py"
        lines = file.read_text(encoding="utf-8").splitlines()
        node = _find(ast.parse("\n".join(lines)), qualname.split("."))
        if node is None:
            raise LookupError(f"{spec} (generator/roadmap_pdf.py EXCERPTS) is not in {file}")
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        source = _without_docstring(node, lines[first - 1 : node.end_lineno], first)
        kept = textwrap.dedent("\n".join(source)).splitlines()
        if len(kept) > EXCERPT_LINES:
            kept = kept[:EXCERPT_LINES] + [f"    ... ({len(kept) - EXCERPT_LINES} more lines)"]
        return f"{qualname} in {file.relative_to(root).as_posix()}, line {first}", "\n".join(kept)
    return "", "(no excerpt chosen for this step: read the modules below)"


Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _find(tree: ast.Module | Definition, names: list[str]) -> Definition | None:
    """The function or class `names` (a qualname split at dots) defined in `tree`."""
    for node in tree.body:
        if isinstance(node, Definition) and node.name == names[0]:
            return node if len(names) == 1 else _find(node, names[1:])
    return None


def _without_docstring(node: Definition, lines: list[str], first: int) -> list[str]:
    """`lines` (the definition's source, starting at line `first`) without its docstring."""
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
        and body[0].end_lineno is not None
    ):
        return lines[: body[0].lineno - first] + lines[body[0].end_lineno - first + 1 :]
    return lines


def expected_output(project: Path, test_id: str) -> str:
    """What the checkpoint test's docstring says it expects ("Expected: ..."), read from the project."""
    file, _, name = test_id.partition("::")
    path = project / file
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return f"(the test file {file} is missing or unreadable in this project)"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            doc = " ".join((ast.get_docstring(node) or "").split())
            return doc.removeprefix("Expected:").strip() or "(its docstring states no expected output)"
    return f"(no test {name} in {file})"


def _pdf_text(text: str) -> str:
    """Text the standard fonts can show: WinAnsi (cp1252) characters as they are, others spelled out."""
    out = []
    for ch in text:
        try:
            ch.encode("cp1252")
            out.append(ch)
        except UnicodeEncodeError:
            out.append(_SPELLED.get(ch, "?"))
    return "".join(out)


def _t(text: str) -> str:
    """Plain text for a Paragraph (which reads a little XML)."""
    return escape(_pdf_text(str(text)))


def _code(text: str) -> str:
    """A command for a Paragraph in a monospaced font: wraps at spaces, keeps runs of spaces."""
    return _t(text).replace("  ", "&nbsp; ")


# ----------------------------------------------------------------------------------------------------
# Flowables: anchors with outline entries, the legend and the graph
# ----------------------------------------------------------------------------------------------------


class Anchor(Flowable):
    """A named destination at the top of this page, and its entry in the PDF outline."""

    def __init__(self, key: str, title: str) -> None:
        super().__init__()
        self.key, self.title = key, title

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:
        return 0, 0

    def draw(self) -> None:
        self.canv.bookmarkPage(self.key)
        self.canv.addOutlineEntry(_pdf_text(self.title), self.key, level=0)


class Legend(Flowable):
    """Swatches for the depths, optional steps and (in exercise mode) the exercise badge."""

    def __init__(self, exercises: bool) -> None:
        super().__init__()
        self.exercises = exercises

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:
        return availWidth, 14

    def draw(self) -> None:
        c, x = self.canv, 0.0
        items: list[tuple[str, str, str, bool]] = [(d, *DEPTH_COLOURS[d], False) for d in DEPTH_COLOURS]
        items.append(("optional", "#ffffff", "#1d2430", True))
        for label, fill, _, dashed in items:
            c.setStrokeColor(colors.HexColor("#57606a"))
            c.setFillColor(colors.HexColor(fill))
            c.setDash(*((3, 2) if dashed else ()))
            c.roundRect(x, 2, 22, 10, 2, stroke=1, fill=1)
            c.setDash()
            c.setFillColor(colors.HexColor("#1d2430"))
            c.setFont("Helvetica", 8.5)
            c.drawString(x + 26, 4, label)
            x += 30 + c.stringWidth(label, "Helvetica", 8.5) + 14
        if self.exercises:
            _badge(c, x, 2)
            c.setFillColor(colors.HexColor("#1d2430"))
            c.drawString(x + 40, 4, "a part for you to write")


def _badge(c: Canvas, x: float, y: float) -> None:
    c.setFillColor(colors.HexColor(EXERCISE_COLOURS[0]))
    c.roundRect(x, y, 36, 10, 5, stroke=0, fill=1)
    c.setFillColor(colors.HexColor(EXERCISE_COLOURS[1]))
    c.setFont("Helvetica-Bold", 6.5)
    c.drawCentredString(x + 18, y + 2.7, "exercise")


class Graph(Flowable):
    """The steps as boxes on their dependency rows (the roadmap's layout: x scaled to the page width,
    rows spaced to fit the height left), edges from each prerequisite, each box a link to its step."""

    def __init__(self, roadmap: Mapping[str, Any], max_height: float) -> None:
        super().__init__()
        self.roadmap, self.max_height = roadmap, max_height
        self.rows = sorted({s["y"] for s in roadmap["steps"]})

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:
        self.width = availWidth
        self.pitch = min(56.0, min(self.max_height, availHeight) / len(self.rows))
        self.height = self.pitch * len(self.rows)
        return self.width, self.height

    def _box(self, step: Mapping[str, Any]) -> tuple[float, float, float, float]:
        """(x, y, w, h) of a step's box, y measured up from the bottom of the flowable."""
        sx = self.width / self.roadmap["width"]
        h = min(32.0, self.pitch * 0.62)
        row = self.rows.index(step["y"])
        return (
            step["x"] * sx,
            self.height - row * self.pitch - (self.pitch - h) / 2 - h,
            self.roadmap["node_width"] * sx,
            h,
        )

    def draw(self) -> None:
        c, steps = self.canv, self.roadmap["steps"]
        boxes = {s["id"]: self._box(s) for s in steps}
        c.setLineWidth(0.8)
        c.setStrokeColor(colors.HexColor("#8c959f"))
        c.setFillColor(colors.HexColor("#8c959f"))
        for step in steps:
            x2, y2, w2, h2 = boxes[step["id"]]
            for dep in step["requires"]:
                x1, y1, w1, _ = boxes[dep]
                ax, bx, mid = x1 + w1 / 2, x2 + w2 / 2, (y1 + y2 + h2) / 2
                c.setDash(*((3, 2) if step["optional"] else ()))
                path = c.beginPath()
                path.moveTo(ax, y1)
                path.curveTo(ax, mid, bx, mid, bx, y2 + h2 + 3)
                c.drawPath(path, stroke=1, fill=0)
                c.setDash()
                arrow = c.beginPath()
                arrow.moveTo(bx, y2 + h2)
                arrow.lineTo(bx - 2.5, y2 + h2 + 4)
                arrow.lineTo(bx + 2.5, y2 + h2 + 4)
                arrow.close()
                c.drawPath(arrow, stroke=0, fill=1)
        for step in steps:
            self._node(step, *boxes[step["id"]])

    def _node(self, step: Mapping[str, Any], x: float, y: float, w: float, h: float) -> None:
        c = self.canv
        fill, ink = DEPTH_COLOURS[step["depth"]]
        c.setFillColor(colors.HexColor(fill))
        c.setStrokeColor(colors.HexColor("#57606a"))
        c.setLineWidth(1.3 if step["optional"] else 0.9)
        c.setDash(*((3.5, 2.2) if step["optional"] else ()))
        c.roundRect(x, y, w, h, 3, stroke=1, fill=1)
        c.setDash()
        label = _pdf_text(f"{step['number']}. {step['title']}" + (" (optional)" if step["optional"] else ""))
        size = 8.0
        lines = simpleSplit(label, "Helvetica", size, w - 6)
        while len(lines) > 2 and size > 5.5:
            size -= 0.5
            lines = simpleSplit(label, "Helvetica", size, w - 6)
        c.setFillColor(colors.HexColor(ink))
        c.setFont("Helvetica", size)
        top = y + h / 2 + (len(lines) - 1) * size * 0.6 - size * 0.35
        for i, line in enumerate(lines):
            c.drawCentredString(x + w / 2, top - i * size * 1.2, line)
        if self.roadmap["exercises"] and step["exercises"]:
            _badge(c, x + w - 38, y + h - 5)
        c.linkRect("", f"step-{step['id']}", (x, y, x + w, y + h), relative=1, thickness=0)


def _footer(project_name: str) -> Any:
    """Page furniture: the project's name, the page number, and (after page 1) a link back to the graph."""

    def draw(canvas: Canvas, doc: BaseDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.setFillColor(colors.HexColor("#57606a"))
        y = doc.bottomMargin - 10 * mm
        canvas.drawString(doc.leftMargin, y, _pdf_text(f"Roadmap: {project_name}"))
        canvas.drawRightString(doc.leftMargin + doc.width, y, f"page {doc.page}")
        if doc.page > 1:
            text = "Back to the graph (page 1)"
            x = doc.leftMargin + doc.width / 2 - canvas.stringWidth(text, "Helvetica", 7.5) / 2
            canvas.setFillColor(colors.HexColor(LINK))
            canvas.drawString(x, y, text)
            canvas.linkRect(
                "", "graph", (x, y - 2, x + canvas.stringWidth(text, "Helvetica", 7.5), y + 8), relative=0, thickness=0
            )
        canvas.restoreState()

    return draw
