"""The generated launch scripts under the real launchers, not stand-ins.

A researcher project is generated with `llmgen new` (4 nodes x 8 H100, ddp) and its scripts are run
as written, at tiny scale (REFERENCE_LLM_OVERLAY shrinks the model and the run; NPROC_PER_NODE, NNODES
and MASTER_ADDR are the settings the scripts document):

- a real single-host Slurm (munged, slurmctld and slurmd started here, with a slurm.conf whose one node
  is this host) runs `sbatch scripts/slurm.sbatch` to completion: srun starts torchrun, which meets
  itself at the c10d rendezvous on the allocation's first node and trains 2 ranks over gloo;
- two torchrun launchers on this host form a 2-"node" job through the script's multi-node command
  (`MASTER_ADDR=<first node> bash scripts/train_torchrun.sh`, NNODES=2, one process per node) and
  train exactly as one launcher with two processes does.

tests/generator/test_scripts.py and test_roadmap_commands.py check the same scripts with stand-ins for
srun/sbatch/scontrol; these tests prove that real Slurm and real multi-node rendezvous accept them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
NAME = "rl-launch"
RUN_TIMEOUT_S = 300  # a tiny run takes 10-25 s; this only bounds a hang (a rendezvous waits 600 s)
DOC = REPO / "docs" / "distributed.md"  # shows these commands; the tests run them as shown
SBATCH = (
    "NPROC_PER_NODE=2 sbatch --nodes=1 --cpus-per-task=2 --gpus-per-node=0 scripts/slurm.sbatch "
    "checkpoint.dir=runs/slurm"
)
TWO_NODES = (
    "NNODES=2 NPROC_PER_NODE=1 MASTER_ADDR=$(hostname) bash scripts/train_torchrun.sh checkpoint.dir=runs/two-node"
)
ONE_NODE = "NNODES=1 NPROC_PER_NODE=2 bash scripts/train_torchrun.sh checkpoint.dir=runs/one-node"

TINY = """\
# Every run at tiny scale on the CPU: a 2-layer model, two steps, one evaluation batch.
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
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A researcher project for 4 nodes of 8 H100s, as `llmgen new` writes it, plus the tiny overlay."""
    root = tmp_path_factory.mktemp("launchers")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "LLMGEN_CPU_TFLOPS": "0.5",
        "LLMGEN_TEMPLATE_CACHE": str(root / "template-cache"),
    }
    args = ["--track", "researcher", "--hardware", "4x8xH100", "--parallelism", "ddp", "--yes", "--no-git"]
    new = subprocess.run(
        [sys.executable, "-m", "generator.cli", "new", NAME, *args, "--dir", str(root / NAME)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert new.returncode == 0, new.stderr
    (root / "tiny.toml").write_text(TINY)
    return root / NAME


def project_env(project: Path, **settings: str) -> dict[str, str]:
    """A shell's environment for the project's scripts: torchrun on PATH, this checkout and the project
    importable, the tiny overlay, and none of a surrounding job's launcher or Slurm variables."""
    launcher = ("SLURM_", "MASTER_", "NPROC", "NNODES", "RDZV", "RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHRUN")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher)}
    env.update(
        {
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", "/usr/bin:/bin")]),
            "PYTHONPATH": os.pathsep.join([str(project / "src"), str(REPO)]),
            "REFERENCE_LLM_OVERLAY": str(project.parent / "tiny.toml"),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.update(settings)
    return env


def metrics(run_dir: Path) -> list[dict]:
    """The training steps' records of a run's metrics.jsonl (evaluation records left out)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "step_0000002" / "model.safetensors")


# ----------------------------------------------------------------------------------------------------
# Slurm on this host
# ----------------------------------------------------------------------------------------------------

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "scancel")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@dataclass
class Slurm:
    """A one-node cluster whose daemons this test started: `env` points the clients at it."""

    root: Path
    env: dict[str, str]
    cpus: int
    daemons: list[subprocess.Popen] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)

    def run(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(args, cwd=cwd, env=env or self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
        return done.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, ...). Without accounting there is no
        sacct; slurmctld keeps a finished job's record for MinJobAge (300 s by default)."""
        text = self.run("scontrol", "show", "job", "-o", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait(self, job_id: str, timeout: float) -> dict[str, str]:
        """Poll until the job finishes (`sbatch --wait` polls every 2 s up to every 32 s: too slow)."""
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id))["JobState"] not in FINISHED:
            assert time.monotonic() < deadline, f"job {job_id} still {job['JobState']} after {timeout} s"
            time.sleep(0.5)
        return job

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in sorted((self.root / "log").glob("*")))


def slurm_conf(root: Path, node: str, munge_socket: Path) -> str:
    """One node, this host as slurmd -C describes it (real CPUs and memory); no cgroups, no accounting,
    state and logs under root, ports nobody else holds."""
    host = socket.gethostname()
    return f"""\
ClusterName=llmgen-test
SlurmctldHost={host}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
{node} State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture
def slurm() -> Iterator[Slurm]:
    """munged, slurmctld and slurmd started for this test and stopped after it; skipped with the reason
    where the binaries are missing or the daemons do not come up."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    where = {name: shutil.which(name, path=search) for name in SLURM_BINARIES}
    found = {name: path for name, path in where.items() if path}
    missing = [name for name in SLURM_BINARIES if name not in found]
    if missing:
        pytest.skip(f"no {', '.join(missing)} here (Debian: apt-get install slurm-wlm munge; .ci/run installs them)")
    if os.geteuid() != 0:
        pytest.skip("this test's Slurm runs its daemons and jobs as root (SlurmUser=root); not root here")
    described = subprocess.run([found["slurmd"], "-C"], capture_output=True, text=True, timeout=60)
    node_line = next((line for line in described.stdout.splitlines() if line.startswith("NodeName=")), "")
    if not (m := re.search(r"\bCPUs=(\d+)", node_line)):
        pytest.skip(f"slurmd -C does not describe this host: {described.stdout}{described.stderr}")
    # Not under tmp_path: slurmd's spool and munged's socket are Unix sockets, whose paths may not
    # exceed 107 bytes, and pytest's tmp_path for a long test name comes close.
    root = Path(tempfile.mkdtemp(prefix="slurm-"))
    for sub in ("state", "spool", "log", "munge"):
        (root / sub).mkdir(mode=0o700)
    key = root / "munge" / "munge.key"  # a key of this cluster's own: the host's munged, if any, is not used
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, node_line, root / "munge" / "munge.socket"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({"SLURM_CONF": str(conf), "PATH": search})
    cluster = Slurm(root, env, int(m.group(1)))
    munge_args = [
        f"--key-file={key}",
        f"--socket={root / 'munge' / 'munge.socket'}",
        f"--pid-file={root / 'munge' / 'munged.pid'}",
        f"--seed-file={root / 'munge' / 'munged.seed'}",
        f"--log-file={root / 'log' / 'munged.log'}",
    ]
    commands = {
        "munged": [found["munged"], "--foreground", "--force", *munge_args],
        "slurmctld": [found["slurmctld"], "-D", "-f", str(conf)],
        "slurmd": [found["slurmd"], "-D", "-f", str(conf)],
    }
    try:
        for name, command in commands.items():
            with open(root / "log" / f"{name}.out", "w") as out:
                cluster.daemons.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))
            if name == "munged":
                deadline = time.monotonic() + 10
                while not (root / "munge" / "munge.socket").exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
        state, deadline = "", time.monotonic() + 30
        while state != "idle" and time.monotonic() < deadline and all(d.poll() is None for d in cluster.daemons):
            time.sleep(0.25)
            info = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30
            )
            state = info.stdout.strip()
        if state != "idle":
            exited = [name for name, d in zip(commands, cluster.daemons) if d.poll() is not None]
            reason = f"{', '.join(exited)} exited" if exited else f"node state {state or 'unknown'!r} after 30 s"
            pytest.skip(f"the test's Slurm did not start ({reason}):\n{cluster.logs()}")
        yield cluster
    finally:
        for job_id in cluster.jobs:  # a job still running (a failed test) is stopped by its own slurmstepd
            subprocess.run(["scancel", job_id], env=env, capture_output=True, timeout=60)
        for daemon in reversed(cluster.daemons):
            stop(daemon)
        shutil.rmtree(root, ignore_errors=True)


def test_generated_sbatch_runs_to_completion_under_real_slurm(project: Path, slurm: Slurm) -> None:
    """docs/distributed.md's `sbatch` command on a one-node CPU cluster: the job COMPLETES, srun's torchrun
    met at the c10d rendezvous on the allocation's first node and trained 2 ranks, and the run's
    checkpoint and metrics are where the project's config puts them. The script asks for 4 nodes x 8
    GPUs; sbatch's own options, which override the script's #SBATCH lines, fit the request to this node."""
    assert SBATCH in DOC.read_text()
    if slurm.cpus < 2:
        pytest.skip(f"2 ranks need 2 CPUs; this node has {slurm.cpus}")
    env = project_env(project, MASTER_PORT=str(free_port()), SLURM_CONF=slurm.env["SLURM_CONF"])
    env["PATH"] = os.pathsep.join([env["PATH"], slurm.env["PATH"]])
    submitted = slurm.run("bash", "-c", SBATCH, cwd=project, env=env)
    submission = re.fullmatch(r"Submitted batch job (\d+)\n", submitted)
    assert submission, submitted
    job_id = submission.group(1)
    slurm.jobs.append(job_id)
    job = slurm.wait(job_id, RUN_TIMEOUT_S)
    log = project / f"slurm-{job_id}.out"  # the script's --output=slurm-%j.out, in the submit directory
    output = log.read_text() if log.exists() else "(no job log)"
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), f"{job}\n{output}\n{slurm.logs()}"
    assert job["JobName"] == NAME and job["NumNodes"] == "1"
    done = [line for line in output.splitlines() if line.startswith("done: step 2")]
    assert len(done) == 1, output  # rank 0 alone reports
    print(f"\nslurm job {job_id}: JobState={job['JobState']} ExitCode={job['ExitCode']} {log.name}: {done[0]}")
    run = project / "runs" / "slurm"
    assert (run / "latest").exists() and (run / "step_0000002" / "model.safetensors").is_file()
    steps = metrics(run)
    assert [r["step"] for r in steps] == [1, 2]
    # Tokens per step = micro_batch x seq_len x world size: both ranks took part.
    assert steps[0]["tokens"] == 2 * 64 * 2, steps


# ----------------------------------------------------------------------------------------------------
# Two torchrun "nodes" on one host
# ----------------------------------------------------------------------------------------------------


def run_launchers(commands: list[str], project: Path, env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Start every command at once (each `bash -c`), wait for all; on a hang, SIGTERM each launcher,
    on which torchrun stops its workers."""
    procs = [
        subprocess.Popen(["bash", "-c", c], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c in commands
    ]
    results, deadline = [], time.monotonic() + RUN_TIMEOUT_S
    try:
        for command, proc in zip(commands, procs):
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(command, proc.returncode, out.decode(), err.decode()))
    finally:
        for proc in procs:
            stop(proc)
    return results


def test_two_torchrun_nodes_on_one_host_train_as_one_node_does(project: Path) -> None:
    """Two launchers run the script's multi-node command (its comment's `MASTER_ADDR=node001 bash
    scripts/train_torchrun.sh`, with this host as the first node, NNODES=2 and one process per node) at
    once: they meet at the c10d rendezvous, both exit 0, and the 2-rank job gives the same losses,
    gradient norms and weights as one launcher starting 2 processes (NNODES=1)."""
    script = (project / "scripts" / "train_torchrun.sh").read_text()
    assert "\n#   MASTER_ADDR=node001 bash scripts/train_torchrun.sh\n" in script and "NNODES" in script
    doc = DOC.read_text()
    assert TWO_NODES in doc and ONE_NODE in doc
    # The reference runs beside them: it uses a private rendezvous (--standalone), not MASTER_PORT.
    *nodes, single = run_launchers(
        [TWO_NODES, TWO_NODES, ONE_NODE], project, project_env(project, MASTER_PORT=str(free_port()))
    )
    for i, node in enumerate([*nodes, single]):
        assert node.returncode == 0, f"launcher {i} exited {node.returncode}:\n{node.stdout}\n{node.stderr[-4000:]}"
    assert sum("done: step 2" in node.stdout for node in nodes) == 1  # the rank-0 worker ran under one of them

    two, one = metrics(project / "runs" / "two-node"), metrics(project / "runs" / "one-node")
    assert two[0]["tokens"] == 2 * 64 * 2, two  # a world of 2: one rank from each launcher
    curve = [(r["step"], r["loss"], r["grad_norm"]) for r in two]
    assert curve == [(r["step"], r["loss"], r["grad_norm"]) for r in one]
    a, b = weights(project / "runs" / "two-node"), weights(project / "runs" / "one-node")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
