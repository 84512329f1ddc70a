"""Run untrusted Python (model-written code) in a separate, fenced-in process, and get plain data back.

    result = run_untrusted("def f(x):\\n    return x + 1", entry_point="f", calls=[((1,), {})])
    result.status, result.report["calls"]    # "passed", [["ok", 2]]

The code never runs in the caller's process. Each run is a fresh `python -I -S -B` (no site-packages,
no environment-driven imports, no .pyc writes) in a throw-away work dir (also HOME and TMPDIR), behind
every isolation layer this machine offers (see sandbox_layers.py and `python -m reference_llm.evaluate
sandbox-check`): bubblewrap namespaces, uid 65534 when root, Landlock, seccomp, a network namespace,
rlimits, a PEP 578 audit hook. The evaluator meanwhile:

- enforces a wall-clock deadline, then kills the child's process group (bwrap's children die with it);
- reads stdout, stderr and the report pipe with a cap each, so no flood can grow its memory: past the
  cap the run ends as "output_limit";
- parses the report as plain data only (candidate_runner.decode: builtin types, nothing callable);
- removes the work dir whatever the code left in it (unreadable directories, immutable files).

`status` is "passed" when the child reports that the code ran to its end. That report comes from the
candidate's own process, so it is a claim, not a verdict: HumanEval decides pass/fail in the evaluator,
by running the problem's checks on the returned data (checks.py).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from reference_llm.errors import ConfigError
from reference_llm.evaluate import candidate_runner, sandbox_layers

RUNNER_SOURCE = Path(candidate_runner.__file__).read_text(encoding="utf-8")


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0  # wall clock; CPU time is capped at ceil(timeout_s) + 1 seconds
    memory_mb: int = 1024  # address space of the child (RLIMIT_AS)
    output_bytes: int = 256 * 1024  # stdout + stderr together; more ends the run as "output_limit"
    file_bytes: int = 16 * 1024 * 1024  # largest file the code may write in its working directory
    report_bytes: int = 4 * 1024 * 1024  # the child's report (call results); more ends it as "output_limit"

    def __post_init__(self) -> None:
        for key in ("timeout_s", "memory_mb", "output_bytes", "file_bytes", "report_bytes"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"sandbox {key} must be positive, got {getattr(self, key)!r}")


@dataclass(frozen=True)
class SandboxResult:
    """`status`: "passed" (the child reported running the code to its end, then exited 0), "failed" (an
    exception, a refused operation, sys.exit/os._exit, a signal, or no readable report), "timeout", or
    "output_limit". `report`: the child's report as plain data, or None."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    report: dict | None = None
    layers: frozenset[str] = frozenset()

    @property
    def passed(self) -> bool:
        return self.status == "passed"


Call = tuple[Sequence, dict]  # positional and keyword arguments, plain data


def run_untrusted(
    code: str,
    limits: SandboxLimits | None = None,
    *,
    entry_point: str | None = None,
    calls: Iterable[Call] = (),
    layers: Collection[str] | None = None,
) -> SandboxResult:
    """Run `code` in a sandboxed subprocess, then `entry_point(*args, **kwargs)` for each call; report
    how it ended (never raises for the code's sake). `layers`: the isolation layers to use (default:
    all that work here); tests pass fewer to show what each one stops."""
    limits = limits or SandboxLimits()
    layers = sandbox_layers.active_layers() if layers is None else frozenset(layers)
    unknown = layers - set(sandbox_layers.LAYERS)
    if unknown:
        raise ConfigError(f"unknown sandbox layer(s) {sorted(unknown)}; known: {', '.join(sandbox_layers.LAYERS)}")
    if "uid" in layers and os.geteuid() != 0:
        raise ConfigError("sandbox layer uid needs a root evaluator (an unprivileged one cannot change uid)")
    encode = candidate_runner.encode
    try:
        encoded_calls = [[encode(list(args)), encode(dict(kwargs))] for args, kwargs in calls]
    except candidate_runner.Unplain as exc:
        raise ConfigError(f"call arguments must be plain data, got {exc}") from None
    workdir = tempfile.mkdtemp(prefix="llmgen-sandbox-")
    start = time.monotonic()
    try:
        job = {
            "code": code,
            "entry_point": entry_point,
            "calls": encoded_calls,
            "workdir": workdir,
            "limits": {
                "cpu_s": math.ceil(limits.timeout_s) + 1,
                "memory_bytes": limits.memory_mb * 2**20,
                "file_bytes": limits.file_bytes,
            },
            "fences": {
                "bwrap": "bwrap" in layers,
                "uid": "uid" in layers,
                "audit": "audit" in layers,
                "netns": "netns" in layers and "bwrap" not in layers,  # bwrap brings its own
                "landlock": sandbox_layers.landlock_rules(workdir) if "landlock" in layers else None,
                "seccomp": sandbox_layers.seccomp_program() if "seccomp" in layers else None,
            },
        }
        job_path = os.path.join(workdir, ".job.json")
        with open(job_path, "w", encoding="utf-8") as f:
            json.dump(job, f)
        if "uid" in layers:
            os.chown(workdir, sandbox_layers.UNPRIVILEGED, sandbox_layers.UNPRIVILEGED)
            os.chmod(workdir, 0o711)  # bwrap enters it as capability-less root before the child drops to 65534
        argv = [sandbox_layers.interpreter(), "-I", "-S", "-B", "-c", RUNNER_SOURCE, job_path]
        if "bwrap" in layers:
            binary = sandbox_layers.bwrap_binary()
            if binary is None:
                raise ConfigError(f"sandbox layer bwrap: {sandbox_layers.BWRAP_MISSING}")
            argv = sandbox_layers.bwrap_argv(binary, workdir, "uid" in layers) + argv
        report_r, report_w = os.pipe()
        env = {
            "HOME": workdir,
            "TMPDIR": workdir,
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
        }
        try:
            proc = subprocess.Popen(
                argv + [str(report_w)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(report_w,),
                start_new_session=True,
            )
        finally:
            os.close(report_w)  # the child holds its own copy; ours would keep the pipe open forever
        try:
            outcome, stdout, stderr, report = _collect(proc, report_r, start + limits.timeout_s, limits)
        finally:
            # Kill the whole group before reaping the leader: its pid (the group id) cannot be reused
            # while it is an unreaped zombie, so this never hits an unrelated process group.
            _kill_group(proc.pid)
            proc.wait()
            os.close(report_r)
        parsed = _parse_report(report)
        if outcome is None:
            ok = proc.returncode == 0 and parsed is not None and parsed.get("completed") is True
            outcome = "passed" if ok else "failed"
        return SandboxResult(
            status=outcome,
            returncode=proc.returncode,
            stdout=stdout.decode("utf-8", "replace"),
            stderr=stderr.decode("utf-8", "replace"),
            duration_s=time.monotonic() - start,
            report=parsed,
            layers=layers,
        )
    finally:
        remove_tree(workdir)


def run_many(codes: Iterable[str], limits: SandboxLimits | None = None, workers: int = 2) -> list[SandboxResult]:
    """`run_untrusted` over many programs, `workers` subprocesses at a time; results in input order."""
    if workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda code: run_untrusted(code, limits), codes))


def _collect(
    proc: subprocess.Popen, report_fd: int, deadline: float, limits: SandboxLimits
) -> tuple[str | None, bytes, bytes, bytes]:
    """Read stdout, stderr and the report pipe until the child exits, the deadline passes or a cap is
    passed. Returns (status or None if it ended by itself, stdout, stderr, report bytes). No buffer ever
    holds more than its cap plus one read."""
    assert proc.stdout is not None and proc.stderr is not None  # Popen(stdout=PIPE, stderr=PIPE)
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    buffers = {out: bytearray(), err: bytearray(), report_fd: bytearray()}
    selector = selectors.DefaultSelector()
    for fd in buffers:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    outcome = None
    try:
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome = "timeout"
                break
            events = selector.select(timeout=min(remaining, 0.1))
            for key, _ in events:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffers[key.fd] += chunk
            if (
                len(buffers[out]) + len(buffers[err]) > limits.output_bytes
                or len(buffers[report_fd]) > limits.report_bytes
            ):
                outcome = "output_limit"
                break
            # Exited, and nothing left to read: whatever still holds the pipes is killed by the caller.
            if not events and proc.poll() is not None:
                break
    finally:
        selector.close()
    cap = limits.output_bytes
    stdout, stderr = bytes(buffers[out][:cap]), bytes(buffers[err][:cap])
    proc.stdout.close()
    proc.stderr.close()
    return outcome, stdout, stderr, bytes(buffers[report_fd])


def _parse_report(data: bytes) -> dict | None:
    """The child's report, if it is a well-formed one. Values inside stay in their encoded form."""
    try:
        report = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # not JSON, or nested deep enough to exhaust the parser
        return None
    if type(report) is not dict or type(report.get("calls")) is not list or type(report.get("completed")) is not bool:
        return None
    return report


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS = 0x80086601, 0x40086602
_UNDELETABLE = 0x10 | 0x20  # FS_IMMUTABLE_FL, FS_APPEND_FL


def remove_tree(path: str) -> None:
    """Remove a work dir whatever the code did to it: directories it made unreadable (chmod 000), and,
    where the code could set them (as root without the uid layer), immutable and append-only flags."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return
    _unlock(path)
    shutil.rmtree(path, ignore_errors=True)


def _unlock(path: str) -> None:
    """Clear immutable/append-only flags and give the owner full rights, through the whole tree
    (never following a symlink: a link out of the work dir must not unlock what it points to)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        return  # links, fifos, device nodes: removed by rmtree as entries of their directory
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        fd = None
    if fd is not None:
        try:
            flags = bytearray(4)
            fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
            value = int.from_bytes(flags, "little")
            if value & _UNDELETABLE:
                fcntl.ioctl(fd, _FS_IOC_SETFLAGS, (value & ~_UNDELETABLE).to_bytes(4, "little"))
        except OSError:
            pass  # a filesystem without flags, or not ours to change
        finally:
            os.close(fd)
    if stat.S_ISDIR(mode):
        try:
            os.chmod(path, 0o700)
            entries = os.listdir(path)
        except OSError:
            return
        for entry in entries:
            _unlock(os.path.join(path, entry))
