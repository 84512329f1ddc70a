"""Every command a generated project shows runs as shown, in roadmap order, at tiny scale; and the
roadmap's graph is the data flow between those commands.

The commands are the ones ROADMAP.md shows (roadmap.html, `llmgen tracks` and the README's table show
the same text, checked here), plus the README's and Makefile's own (`make demo`, the one-device launch,
the override example, `llmgen check`) and the CPU tips in the launch scripts' comments. For each track
the project is generated with the track's defaults, GPU configs included, and each command is run with
`bash -c` exactly as shown, with settings the commands themselves honour:

    REFERENCE_LLM_OVERLAY=tiny.toml   every run config read at tiny scale (reference_llm.config)
    NPROC_PER_NODE=2                  GPU projects' launch scripts start two CPU processes (gloo), not one per GPU
    DEMO_STEPS=2                      make demo's training steps
    PYTHONPATH=src                    the project's package importable, as `pip install -e .` makes it

and stand-ins for SLURM: `sbatch` runs the job script at once on this machine as a one-node allocation,
`srun` runs its command once, `scontrol` names this host. `serve` is started, answers one completion,
and is stopped.

The graph: each command's inputs and outputs are read off its text (`declared_io`: --checkpoint, --out,
checkpoint.dir=, the config's data and run folder, post-training's `<init>-<method>` folder). A step B
requires step A when B reads what A wrote; steps that run the same command are stages of one run (clean
and tokenizer are both `prepare`); the bundled data/ is the data step's. The roadmap's edges must be
exactly the transitive reduction of those. Running the chain checks that model against what the
commands really do: every step writes only the run folders its text declares, every input exists when
its reader runs, and no step writes into a folder an earlier step wrote.

The chains of the three tracks run once per session, side by side (@slow: about 3-4 minutes on two cores).
"""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from generator.plan import plan_run
from generator.render import render_project
from generator.tracks import load_tracks
from reference_llm.config import OVERLAY_ENV, load_config, read_config_file

TRACKS = list(load_tracks())
VENV_BIN = Path(sys.executable).parent
SERVE_PORT = 8000  # serve's default: the command runs as shown, so one serve at a time
_serve_lock = threading.Lock()

TINY = """\
# Every stage at tiny scale: a 2-layer model, two steps, one evaluation batch, a few examples.
[model]
preset = "tiny"

[data]
vocab_size = 320

[train]
max_steps = 2
micro_batch = 2
grad_accum = 1
device = "cpu"
dtype = "float32"
compile = false
log_interval = 1

[eval]
iters = 1

[sft]
max_examples = 32

[dpo]
max_examples = 8

[grpo]
max_examples = 4
samples = 2
max_new_tokens = 8

[ppo]
max_examples = 4
samples = 2
max_new_tokens = 8
"""

STUBS = {  # SLURM on one machine, for `sbatch scripts/slurm.sbatch`
    "sbatch": '#!/usr/bin/env bash\n# Runs the job now, here, as a one-node allocation.\nscript="$1"; shift\n'
    'export SLURM_JOB_ID=4242 SLURM_NNODES=1 SLURM_JOB_NODELIST=localhost SLURM_SUBMIT_DIR="$PWD"\n'
    'exec bash "$script" "$@"\n',
    "srun": '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n',
    "scontrol": "#!/usr/bin/env bash\necho localhost\n",
}

# Commands of the README that are not run, and why.
NOT_RUN = {
    "pip install": "installs packages (offline here; the tests run against this checkout)",
    "python -m venv": "creates a virtual environment",
    "MASTER_ADDR=node001": "needs the other nodes of a cluster (scripts/slurm.sbatch runs it through srun)",
}


# ----------------------------------------------------------------------------------------------------
# Reading commands and their inputs and outputs
# ----------------------------------------------------------------------------------------------------


def roadmap_commands(project: Path) -> list[tuple[str, str]]:
    """(step id, command) in ROADMAP.md order, as its "Run:" lines show them."""
    text = (project / "ROADMAP.md").read_text()
    out = []
    for chunk in text.split('<a id="step-')[1:]:
        step = chunk[: chunk.index('"')]
        out.append((step, re.search(r"^- \*\*Run:\*\* `(.+)`$", chunk, re.M).group(1)))
    return out


def html_commands(project: Path) -> list[tuple[str, str]]:
    text = (project / "roadmap.html").read_text()
    sections = re.findall(r'<section class="step" id="step-([^"]+)">(.*?)</section>', text, re.S)
    return [
        (step, html.unescape(re.search(r"<dt>Run</dt><dd><pre><code>(.*?)</code>", body, re.S).group(1)))
        for step, body in sections
    ]


def alternatives(command: str) -> list[str]:
    """The command, and the ones its comment offers ("... # or RL: python -m ...")."""
    main, _, comment = command.partition("  #")
    return [main.strip()] + [alt.strip() for alt in re.findall(r"or [^:]*:\s*([^#]+)", comment)]


def declared_io(command: str, project: Path) -> tuple[set[str], set[str]]:
    """(inputs, outputs) of a command, from its text: run folders, data/cache (prepared data) and data/
    (the corpus). Checkpoint tests (pytest) read and write none of them."""
    words = shlex.split(command.partition("  #")[0])
    while words and re.match(r"^[A-Z_]+=", words[0]):  # NPROC_PER_NODE=2 ...: environment settings
        words.pop(0)
    options = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}
    overrides = dict(w.split("=", 1) for w in words if re.match(r"^[a-z_]+\.[a-z_]+=", w))
    module = words[words.index("-m") + 1] if "-m" in words else " ".join(words[:2])
    config = read_config_file(project / "configs" / "train.toml")
    run_dir = overrides.get("checkpoint.dir", config["checkpoint"]["dir"])
    checkpoint = options.get("--checkpoint")
    if words[:2] == ["llmgen", "compliance"]:
        return {"data/"}, set()
    if module == "reference_llm.data.prepare":
        return {"data/"}, {"data/cache"}
    launchers = {
        "reference_llm.train",
        "bash scripts/train.sh",
        "bash scripts/train_torchrun.sh",
        "sbatch scripts/slurm.sbatch",
    }
    if module in launchers or module.endswith(".train"):
        return {"data/", "data/cache"}, {run_dir}
    method = re.match(r"reference_llm\.posttrain\.(\w+)$", module)
    if method:
        return {checkpoint}, {overrides.get("checkpoint.dir", f"{checkpoint}-{method.group(1)}")}
    if "--out" in options:
        return {checkpoint}, {options["--out"]}
    if checkpoint:
        return {checkpoint}, set()
    assert module == "pytest", f"no input/output rule for {command!r}"
    return set(), set()


def derived_edges(steps: list[tuple[str, str]], project: Path) -> set[tuple[str, str]]:
    """(A, B) for each step B whose command reads what step A's wrote, transitively reduced. Steps with
    the same command are stages of one run, in order; the bundled data/ is the data step's."""
    owner = {"data/": "data"}
    edges: set[tuple[str, str]] = set()
    for i, (step, command) in enumerate(steps):
        reads, writes = declared_io(command, project)
        if i and command == steps[i - 1][1]:  # the next stage of the same run
            edges.add((steps[i - 1][0], step))
        else:
            edges |= {(owner[r], step) for r in reads if r in owner and owner[r] != step}
        owner.update({w: step for w in writes})
        for w in reads:
            owner.setdefault(w, "?")  # read before anything wrote it: reported by the graph comparison
    return _reduce(edges)


def _reduce(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    def reachable(a: str, b: str, skip: tuple[str, str]) -> bool:
        frontier, seen = [a], set()
        while frontier:
            node = frontier.pop()
            for x, y in edges:
                if x == node and (x, y) != skip and y not in seen:
                    if y == b:
                        return True
                    seen.add(y)
                    frontier.append(y)
        return False

    return {e for e in edges if not reachable(*e, skip=e)}


def roadmap_edges(roadmap: dict) -> set[tuple[str, str]]:
    return {(dep, step["id"]) for step in roadmap["steps"] for dep in step["requires"]}


# ----------------------------------------------------------------------------------------------------
# Fast checks: no command is run
# ----------------------------------------------------------------------------------------------------


def plan_for(track: str):
    defaults = load_tracks()[track].defaults
    return plan_run(
        f"{track}-llm",
        {
            "track": track,
            "budget": defaults.budget,
            "hardware": defaults.hardware,
            "parallelism": defaults.parallelism,
            "model_preset": defaults.model_preset,
            "exercises": defaults.exercises,
        },
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """Each track's answers and its generated project, as `llmgen new` leaves it (without git)."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMGEN_CPU_TFLOPS", "0.5")
        mp.setenv("LLMGEN_TEMPLATE_CACHE", str(tmp_path_factory.getbasetemp() / "llmgen-template-cache"))
        for track in TRACKS:
            plan = plan_for(track)
            project = tmp_path_factory.mktemp("chain") / f"{track}-llm"
            render_project(plan.answers, project, git=False)
            out[track] = (plan.answers, project)
    return out


@pytest.mark.parametrize("track", TRACKS)
def test_graph_is_the_data_flow_of_the_commands(rendered, track):
    answers, project = rendered[track]
    steps = roadmap_commands(project)
    assert [s for s, _ in steps] == answers["roadmap"]["step_ids"]
    assert derived_edges(steps, project) == roadmap_edges(answers["roadmap"])


@pytest.mark.parametrize("track", TRACKS)
def test_every_place_shows_the_same_commands(rendered, track):
    answers, project = rendered[track]
    name, package = answers["project_name"], answers["package_name"]
    steps = roadmap_commands(project)
    assert html_commands(project) == steps
    shown = json.loads(
        subprocess.run(
            [str(VENV_BIN / "llmgen"), "tracks", track, "--json"], capture_output=True, text=True, check=True
        ).stdout
    )["tracks"][0]["steps"]
    assert [
        (s["id"], s["command_shown"].replace("<project>", name).replace("<package>", package)) for s in shown
    ] == steps
    table = subprocess.run(
        [str(VENV_BIN / "llmgen"), "tracks", track],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "400", "NO_COLOR": "1"},
    ).stdout
    assert all(s["command_shown"] in table for s in shown), "a command is cut or wrapped in `llmgen tracks`"
    by_step = dict(steps)
    readme = (project / "README.md").read_text()
    for what, step in (("train", "pretrain"), ("sample", "generate"), ("evaluate", "evaluate")):
        assert f"| {what} (`make {what}`) | `{by_step[step]}`" in readme
        recipe = subprocess.run(
            ["make", "-n", what, "PYTHON=python"], cwd=project, capture_output=True, text=True, check=True
        ).stdout.strip()
        assert recipe.split("  #")[0].removesuffix(" --max-new-tokens 200") == by_step[step], what
    assert (
        subprocess.run(
            ["make", "-n", "test", "PYTHON=python"], cwd=project, capture_output=True, text=True, check=True
        ).stdout.strip()
        == "python -m pytest -q tests"
    )  # test_new_generated_repo runs it


def test_overlay_sets_what_each_command_reads(tmp_path, monkeypatch):
    """REFERENCE_LLM_OVERLAY applies over the config file and under the command line, to the sections the
    reader knows; without it the file's values stand (the negative control)."""
    config = tmp_path / "train.toml"
    config.write_text('[model]\npreset = "demo"\n[train]\nmax_steps = 500\nlr = 0.01\n')
    overlay = tmp_path / "tiny.toml"
    overlay.write_text(TINY)
    assert load_config(config).train.max_steps == 500
    monkeypatch.setenv(OVERLAY_ENV, str(overlay))
    cfg = load_config(config, ["train.micro_batch=4"])
    assert (cfg.model.name, cfg.train.max_steps, cfg.train.lr, cfg.train.micro_batch) == ("tiny", 2, 0.01, 4)
    raw = read_config_file(config, [], sections={"sft", "model", "train"})
    assert raw["sft"] == {"max_examples": 32} and "dpo" not in raw and "data" not in raw
    overlay.write_text("[train]\nmax_steps = [")
    with pytest.raises(Exception, match="not valid TOML"):
        load_config(config)


# ----------------------------------------------------------------------------------------------------
# The chains: every command run
# ----------------------------------------------------------------------------------------------------


@dataclass
class Ran:
    what: str  # a step id, or "readme", "makefile", "script tip"
    command: str
    result: subprocess.CompletedProcess
    seconds: float
    written: set[str] = field(default_factory=set)  # run folders (and other files) it wrote
    missing_inputs: set[str] = field(default_factory=set)


@dataclass
class Chain:
    track: str
    answers: dict
    project: Path
    runs: list[Ran] = field(default_factory=list)
    seconds: float = 0.0


def _root(path: str) -> str:
    parts = path.split("/")
    if parts[0] == "runs":
        return "/".join(parts[:2])
    if parts[:2] == ["data", "cache"]:
        return "data/cache"
    return path


def _snapshot(project: Path) -> dict[str, tuple[int, int]]:
    state = {}
    for path in project.rglob("*"):
        rel = path.relative_to(project)
        if path.is_file() and not {"__pycache__", ".pytest_cache"} & set(rel.parts):
            stat = path.stat()
            state[rel.as_posix()] = (stat.st_mtime_ns, stat.st_size)
    return state


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(command: str, project: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Start the server as shown, ask it for one completion, stop it: rc 0 when the completion came back."""
    with _serve_lock:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        reply, deadline = None, time.monotonic() + 300
        try:
            while reply is None and time.monotonic() < deadline and process.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{SERVE_PORT}/health", timeout=2):
                        pass
                except OSError:
                    time.sleep(0.5)
                    continue
                with urllib.request.urlopen(f"http://127.0.0.1:{SERVE_PORT}/v1/models", timeout=10) as response:
                    model = json.loads(response.read())["data"][0]["id"]
                request = urllib.request.Request(
                    f"http://127.0.0.1:{SERVE_PORT}/v1/completions",
                    method="POST",
                    data=json.dumps({"model": model, "prompt": "ROMEO:", "max_tokens": 4, "temperature": 0}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        reply = json.loads(response.read())
                except urllib.error.HTTPError as exc:
                    reply = {"error": exc.code, "body": exc.read().decode(errors="replace")}
        finally:
            process.terminate()
            out, err = process.communicate(timeout=60)
        ok = reply is not None and len(reply.get("choices", [])) == 1
        return subprocess.CompletedProcess(command, 0 if ok else 1, f"{out}\ncompletion: {json.dumps(reply)}", err)


def _run(chain: Chain, what: str, command: str, env: dict[str, str]) -> Ran:
    before = _snapshot(chain.project)
    extra = what in ("readme", "script tip")
    reads = set() if extra else declared_io(command, chain.project)[0]
    missing = {r for r in reads if r and not (chain.project / r).exists()}
    start = time.monotonic()
    if command.startswith("llmgen check"):  # it checks the configured run, which the overlay would shrink
        env = {k: v for k, v in env.items() if k != OVERLAY_ENV}
    if "reference_llm.deploy.serve" in command:
        result = _serve(command, chain.project, env)
    else:
        result = subprocess.run(
            ["bash", "-c", command], cwd=chain.project, env=env, capture_output=True, text=True, timeout=600
        )
    after = _snapshot(chain.project)
    written = {_root(p) for p, stamp in after.items() if before.get(p) != stamp}
    ran = Ran(what, command, result, time.monotonic() - start, written, missing)
    chain.runs.append(ran)
    print(
        f"{chain.track}: {ran.seconds:5.1f} s  rc {result.returncode}  [{what}] {command}", file=sys.stderr, flush=True
    )
    return ran


def _chain_env(chain: Chain, base: dict[str, str], bin_dir: Path, overlay: Path) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith(("SLURM_", "MASTER_", "NPROC", "NNODES", "PYTHON"))}
    env.update(
        {
            OVERLAY_ENV: str(overlay),
            "DEMO_STEPS": "2",
            "MASTER_PORT": str(_free_port()),
            "PYTHONPATH": os.pathsep.join([str(chain.project / "src"), str(Path(__file__).resolve().parents[2])]),
            "PATH": os.pathsep.join([str(bin_dir), str(VENV_BIN), base["PATH"]]),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "NO_COLOR": "1",
        }
    )
    if chain.answers["gpu"] != "cpu":
        env["NPROC_PER_NODE"] = "2"
    return env


def readme_commands(readme: str) -> list[str]:
    """Every command the README shows (code spans and code-block lines that start like one), in order,
    without its own-data section (tests/generator/test_own_data.py runs that one as written)."""
    start = readme.find("## Your own data") if "## Your own data" in readme else readme.find("## After the demo")
    if start >= 0:
        readme = readme[:start] + readme[readme.index("\n## ", start + 1) :]
    found = re.findall(r"`([^`\n]+)`", readme) + [
        line.split("  #")[0].strip() for line in re.findall(r"^(?:make|pip|python) [^\n]+$", readme, re.M)
    ]
    starts = ("python ", "bash ", "sbatch ", "make ", "llmgen ", "copier ", "pip ")
    return list(dict.fromkeys(c for c in found if re.sub(r"^(?:[A-Z_]+=\S+ )+", "", c).startswith(starts)))


# README commands this module does not run, and where they are run or why they cannot be.
ELSEWHERE = {
    "make train": "make -n shows it runs its ROADMAP.md step's command, which runs here",
    "make sample": "make -n, as make train",
    "make evaluate": "make -n, as make train",
    "make test": "tests/generator/test_new_generated_repo.py runs the suite it runs (make -n checked here)",
    "python -m pytest tests": "tests/generator/test_new_generated_repo.py",
    "copier update --defaults --data exercises=false": "tests/generator/test_exercises.py (needs a git commit)",
    "llmgen update": "tests/generator/test_update.py (needs git and a second template version)",
}
NOT_RUNNABLE = ("pip install", "python -m venv")  # installs; the tests run against this checkout, offline


def _readme_and_script_commands(chain: Chain) -> list[tuple[str, str]]:
    """The README's and the scripts' commands that are not ROADMAP.md's own, in the order they are run."""
    project = chain.project
    shown = {command for _, command in roadmap_commands(project)}
    commands = [
        ("readme", c)
        for c in readme_commands((project / "README.md").read_text())
        if c not in shown and c not in ELSEWHERE and not c.startswith(NOT_RUNNABLE) and "..." not in c
    ]
    for script in sorted((project / "scripts").iterdir()):
        for line in script.read_text().splitlines():
            tip = line.removeprefix("#   ")
            if line.startswith("#   ") and ("train.device=cpu" in tip or "model.preset=tiny" in tip):
                commands.append(("script tip", tip))
    return commands


def _run_chain(chain: Chain, base_env: dict[str, str], bin_dir: Path, overlay: Path) -> Chain:
    env = _chain_env(chain, base_env, bin_dir, overlay)
    start = time.monotonic()
    for step, command in roadmap_commands(chain.project):
        for i, alternative in enumerate(alternatives(command)):
            # The first runs the whole line as shown (bash drops the comment); the others are what it offers.
            _run(chain, step, command if i == 0 else alternative, env)
    for what, command in _readme_and_script_commands(chain):
        _run(chain, what, command, env)
    chain.seconds = time.monotonic() - start
    return chain


@pytest.fixture(scope="session")
def chains(tmp_path_factory) -> dict[str, Chain]:
    """Every track's commands run in its project (once per session; the tracks side by side)."""
    base = tmp_path_factory.mktemp("chains")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    overlay = base / "tiny.toml"
    overlay.write_text(TINY)
    todo = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMGEN_CPU_TFLOPS", "0.5")
        mp.setenv("LLMGEN_TEMPLATE_CACHE", str(tmp_path_factory.getbasetemp() / "llmgen-template-cache"))
        for track in TRACKS:
            plan = plan_for(track)
            project = base / f"{track}-llm"
            render_project(plan.answers, project, git=False)
            todo.append(Chain(track, plan.answers, project))
    start = time.monotonic()
    with ThreadPoolExecutor(len(todo)) as pool:
        done = list(pool.map(lambda c: _run_chain(c, dict(os.environ), bin_dir, overlay), todo))
    total = time.monotonic() - start
    for chain in done:
        print(f"{chain.track}: {len(chain.runs)} commands in {chain.seconds:.0f} s", file=sys.stderr)
    print(f"all tracks: {total:.0f} s wall", file=sys.stderr)
    return {chain.track: chain for chain in done}


def _failure(ran: Ran) -> str:
    return f"[{ran.what}] {ran.command}\n{ran.result.stdout[-1500:]}\n{ran.result.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the session's chains run in the first of these tests; 3-4 minutes on two idle cores
@pytest.mark.parametrize("track", TRACKS)
def test_every_command_runs_as_shown(chains, track):
    chain = chains[track]
    shown = [c for _, c in roadmap_commands(chain.project)]
    ran = [r.command for r in chain.runs]
    assert all(c in ran for c in shown)
    assert "make demo" in ran and any(r.what == "script tip" for r in chain.runs)
    for run in chain.runs:
        assert "Traceback" not in run.result.stderr, _failure(run)
        if run.command == "llmgen check" and chain.answers["gpu"] != "cpu":
            # The README says so: a GPU run needs more text than the bundled corpus, and check says that.
            failing = re.findall(r"^(\w[\w ]*?)\s+fail\s", run.result.stdout, re.M)
            assert run.result.returncode == 2 and failing == ["data"], _failure(run)
            continue
        assert run.result.returncode == 0, _failure(run)
    for run in chain.runs:
        if "sample" in run.command or "deploy.generate" in run.command:
            assert run.result.stdout.startswith("ROMEO:"), _failure(run)


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("track", TRACKS)
def test_steps_read_and_write_what_their_commands_say(chains, track):
    """The graph's model of each command holds when it runs: inputs exist before, outputs appear, nothing
    else is written, and no step writes a run folder an earlier step wrote."""
    chain = chains[track]
    earlier: dict[str, str] = {}
    steps = [r for r in chain.runs if r.what in chain.answers["roadmap"]["step_ids"]]
    for ran in steps:
        reads, writes = declared_io(ran.command, chain.project)
        assert not ran.missing_inputs, f"{ran.what}: {ran.missing_inputs} did not exist when it ran"
        assert all((chain.project / w).exists() for w in writes), f"{ran.what}: no {writes}"
        assert ran.written <= writes | (reads & {"data/cache"}), (
            f"{ran.what} wrote {ran.written - writes}, which its command does not name"
        )
        for root in ran.written:
            assert earlier.get(root, ran.what) == ran.what or root == "data/cache", (
                f"{ran.what} wrote {root}, which {earlier[root]} had written"
            )
            earlier.setdefault(root, ran.what)
    extras = [r for r in chain.runs if r not in steps]
    run_dirs = {w for r in steps for w in r.written if w.startswith("runs/")}
    pretrain = declared_io(dict(roadmap_commands(chain.project))["pretrain"], chain.project)[1]
    for ran in extras:  # the README's own commands write their own run folders, or pretrain's (a launcher)
        assert ran.written & run_dirs <= pretrain, f"[{ran.what}] {ran.command} wrote {ran.written & run_dirs}"
