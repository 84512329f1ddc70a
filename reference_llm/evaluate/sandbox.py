"""Run untrusted Python (model-written code) in a separate, fenced-in process.

    result = run_untrusted("print(1 + 1)", SandboxLimits(timeout_s=3))
    result.passed, result.status, result.stdout

The code never runs in the caller's process. Each run gets a fresh interpreter (`python -I -S -B`:
no user site, no site-packages, no environment-driven imports, no .pyc writes) in a new session, with:

- a wall-clock deadline enforced by the parent, which then kills the child's whole process group;
- rlimits set by the child on itself before the code runs: CPU seconds (RLIMIT_CPU), address space
  (RLIMIT_AS, so a memory hog gets MemoryError instead of the machine's OOM killer), file size
  (RLIMIT_FSIZE), no core dumps, and no new processes (RLIMIT_NPROC; not enforced for root, hence the
  next point);
- a Python audit hook (PEP 578) that refuses, for the rest of the child's life: creating processes
  (fork, exec, spawn, system, subprocess), signalling other processes, sockets, changing rlimits,
  loading C code through ctypes, and writing, deleting or renaming anything outside the working directory;
- a network namespace of its own when the kernel allows `unshare(CLONE_NEWNET)` (root, or a user
  namespace), so even a hole in the hook reaches no network;
- a throw-away working directory that is also HOME and TMPDIR, removed afterwards;
- stdout and stderr read with a cap: a flood ends the run and scores as a failure.

What it is for: code that is wrong, careless or stuck (infinite loops, fork bombs, memory hogs,
`os.system("rm -rf ~")`, output floods). It is not a security boundary against code written to escape
a Python-level sandbox; run evaluations of untrusted models inside a container or VM as well.
"""

from __future__ import annotations

import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from reference_llm.errors import ConfigError


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0  # wall clock; CPU time is capped at ceil(timeout_s) + 1 seconds
    memory_mb: int = 1024  # address space of the child (RLIMIT_AS)
    output_bytes: int = 256 * 1024  # stdout + stderr together; more ends the run as "output_limit"
    file_bytes: int = 16 * 1024 * 1024  # largest file the code may write in its working directory

    def __post_init__(self) -> None:
        for key in ("timeout_s", "memory_mb", "output_bytes", "file_bytes"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"sandbox {key} must be positive, got {getattr(self, key)!r}")


@dataclass(frozen=True)
class SandboxResult:
    """`status`: "passed" (ran to its end, exit code 0), "failed" (an exception, a refused operation,
    sys.exit/os._exit before the end, or a signal such as SIGXCPU), "timeout", or "output_limit"."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# The child's first code. It runs before the untrusted code, in the same interpreter, and leaves the
# audit hook behind: hooks cannot be removed once added. argv: [-c, code file, status fd, limits...].
_BOOTSTRAP = r"""
import os, sys

def _setup(code_path, status_fd, cpu_s, mem_bytes, file_bytes):
    import resource
    workdir = os.path.realpath(os.getcwd())
    # Own network namespace where the kernel allows it (root, or via a user namespace).
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        flags = 0x40000000 if os.geteuid() == 0 else 0x40000000 | 0x10000000  # CLONE_NEWNET [| NEWUSER]
        libc.unshare(flags)
    except Exception:
        pass
    # Forget ctypes so that importing it again goes through the import hook below and is refused.
    for name in ("ctypes", "ctypes._endian", "_ctypes"):
        sys.modules.pop(name, None)

    limits = [(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)), (resource.RLIMIT_AS, (mem_bytes, mem_bytes)),
              (resource.RLIMIT_FSIZE, (file_bytes, file_bytes)), (resource.RLIMIT_CORE, (0, 0)),
              (resource.RLIMIT_NPROC, (0, 0))]
    for which, value in limits:
        try:
            resource.setrlimit(which, value)
        except (ValueError, OSError):
            pass  # e.g. a hard limit already lower than ours: keep the stricter one

    refused = {"os.system", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec",
               "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "socket.__new__",
               "socket.connect", "socket.bind", "socket.getaddrinfo", "resource.setrlimit",
               "resource.prlimit", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
               "sys.remote_exec"}
    refused_imports = {"ctypes", "_ctypes", "_posixsubprocess", "cffi", "_cffi_backend"}
    path_events = {"os.remove": 1, "os.rmdir": 1, "shutil.rmtree": 1, "os.mkdir": 1, "os.chmod": 1,
                   "os.chown": 1, "os.truncate": 1, "os.utime": 1, "os.rename": 2, "os.link": 2,
                   "os.symlink": 2}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def inside(path):
        if isinstance(path, int):
            return True  # an already-open descriptor: it was checked when it was opened
        real = os.path.realpath(os.fsdecode(path))
        return real == workdir or real.startswith(workdir + os.sep)

    def hook(event, args):
        if event in refused:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].split(".")[0] in refused_imports:
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open" and args[0] is not None and isinstance(args[2], int) and args[2] & write_flags:
            if not inside(args[0]):
                raise PermissionError(f"sandbox: writing {args[0]!r} is outside the working directory")
        elif event in path_events:
            # symlink(src, dst): only where the link is made matters; rename/link: both ends.
            paths = args[1:2] if event == "os.symlink" else args[:path_events[event]]
            for path in paths:
                if not inside(path):
                    raise PermissionError(f"sandbox: {event} on {path!r} is outside the working directory")

    sys.addaudithook(hook)
    with open(code_path, encoding="utf-8") as f:
        source = f.read()
    return compile(source, "candidate.py", "exec")

_code = _setup(sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6]))
_status_fd = int(sys.argv[2])
del _setup
sys.argv = ["candidate.py"]
try:
    exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as exc:
    # An exit before the end is not a pass, even with code 0: HumanEval's checks come last.
    sys.stdout.flush()
    sys.stderr.write(f"sandbox: code called exit({exc.code!r}) before finishing\n")
    sys.stderr.flush()
    os._exit(3)
# os._exit, not a normal exit: atexit handlers the code registered must not run after the verdict.
sys.stdout.flush()
sys.stderr.flush()
os.write(_status_fd, b"done")
os._exit(0)
"""


def run_untrusted(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `code` in a sandboxed subprocess and report how it ended (never raises for the code's sake)."""
    limits = limits or SandboxLimits()
    workdir = Path(tempfile.mkdtemp(prefix="llmgen-sandbox-"))
    start = time.monotonic()
    try:
        code_path = workdir / "candidate.py"
        code_path.write_text(code, encoding="utf-8")
        status_r, status_w = os.pipe()
        env = {"HOME": str(workdir), "TMPDIR": str(workdir), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
               "PYTHONIOENCODING": "utf-8"}
        argv = [sys.executable, "-I", "-S", "-B", "-c", _BOOTSTRAP, str(code_path), str(status_w),
                str(math.ceil(limits.timeout_s) + 1), str(limits.memory_mb * 1024 * 1024), str(limits.file_bytes)]
        try:
            proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(status_w,), start_new_session=True)
        finally:
            os.close(status_w)  # the child holds its own copy; ours would keep the pipe open forever
        try:
            outcome, stdout, stderr, done = _collect(proc, status_r, start + limits.timeout_s, limits.output_bytes)
        finally:
            # Kill the whole group before reaping the leader: its pid (the group id) cannot be reused
            # while it is an unreaped zombie, so this never hits an unrelated process group.
            _kill_group(proc.pid)
            proc.wait()
            os.close(status_r)
        if outcome is None:
            outcome = "passed" if done and proc.returncode == 0 else "failed"
        return SandboxResult(status=outcome, returncode=proc.returncode,
                             stdout=stdout.decode("utf-8", "replace"), stderr=stderr.decode("utf-8", "replace"),
                             duration_s=time.monotonic() - start)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_many(codes: Iterable[str], limits: SandboxLimits | None = None, workers: int = 2) -> list[SandboxResult]:
    """`run_untrusted` over many programs, `workers` subprocesses at a time; results in input order."""
    if workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda code: run_untrusted(code, limits), codes))


def _collect(proc: subprocess.Popen, status_fd: int, deadline: float,
             cap: int) -> tuple[str | None, bytes, bytes, bool]:
    """Read stdout, stderr and the status pipe until the child exits, the deadline passes or the
    output passes `cap`. Returns (status or None if it ended by itself, stdout, stderr, finished)."""
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), status_fd: bytearray()}
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
            if len(buffers[proc.stdout.fileno()]) + len(buffers[proc.stderr.fileno()]) > cap:
                outcome = "output_limit"
                break
            # Exited, and nothing left to read: whatever still holds the pipes is killed by the caller.
            if not events and proc.poll() is not None:
                break
    finally:
        selector.close()
    stdout, stderr = bytes(buffers[proc.stdout.fileno()][:cap]), bytes(buffers[proc.stderr.fileno()][:cap])
    proc.stdout.close()
    proc.stderr.close()
    return outcome, stdout, stderr, bytes(buffers[status_fd]) == b"done"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone
