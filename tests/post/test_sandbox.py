"""The sandbox survives hostile or broken candidate code, scores it as failed, and leaves no trace."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reference_llm.errors import ConfigError
from reference_llm.evaluate import sandbox_layers
from reference_llm.evaluate.sandbox import SandboxLimits, run_many, run_untrusted

FAST = SandboxLimits(timeout_s=2.0, memory_mb=256, output_bytes=64 * 1024)


def run(code: str, limits: SandboxLimits = FAST):
    return run_untrusted(textwrap.dedent(code), limits)


def test_ordinary_code_passes_and_its_output_is_captured() -> None:
    result = run("""
        import math
        print(math.factorial(5))
        import sys; print("warn", file=sys.stderr)
    """)
    assert result.passed and result.status == "passed" and result.returncode == 0
    assert result.stdout == "120\n" and result.stderr == "warn\n"


def test_runs_in_another_process_in_a_throwaway_directory() -> None:
    result = run("""
        import os
        print(os.getpid(), os.getcwd(), os.environ["HOME"], os.environ["TMPDIR"])
        open("scratch.txt", "w").write("mine")  # writing inside the working directory is allowed
        print(os.path.exists("scratch.txt"))
    """)
    assert result.passed
    pid, cwd, home, tmp = result.stdout.split("\n")[0].split()
    assert int(pid) != os.getpid()
    assert cwd == home == tmp and Path(cwd).name.startswith("llmgen-sandbox-")
    assert result.stdout.split("\n")[1] == "True"
    assert not Path(cwd).exists()  # removed afterwards


@pytest.mark.parametrize(
    "code",
    [
        "raise AssertionError('wrong answer')",
        "def f(:\n    pass",  # a syntax error
        "import sys; sys.exit(0)",  # leaving early, even with code 0, is not passing: the checks come last
        "import os; os._exit(0)",
    ],
)
def test_errors_and_early_exits_fail(code: str) -> None:
    result = run(code)
    assert not result.passed and result.status == "failed"


def test_infinite_loop_times_out() -> None:
    start = time.monotonic()
    result = run("while True:\n    pass", SandboxLimits(timeout_s=1.0))
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 10


def test_sleeping_code_times_out() -> None:
    result = run("import time; time.sleep(60)", SandboxLimits(timeout_s=1.0))
    assert result.status == "timeout"


def test_limits_are_in_force_in_the_child() -> None:
    result = run(
        """
        import resource
        for name in ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_CORE"):
            print(resource.getrlimit(getattr(resource, name))[0])
    """,
        SandboxLimits(timeout_s=1.5, memory_mb=300, file_bytes=4096),
    )
    assert result.stdout.split() == ["3", str(300 * 2**20), "4096", "0"]  # CPU: ceil(timeout) + 1 s


def test_fork_bomb_is_refused_and_leaves_no_processes() -> None:
    result = run("""
        import os
        print(os.getcwd(), flush=True)
        while True:
            os.fork()
    """)
    assert result.status == "failed" and "os.fork" in result.stderr
    workdir = result.stdout.split()[0]
    assert not _processes_mentioning(workdir)


@pytest.mark.parametrize(
    "code, refused",
    [
        ("import subprocess; subprocess.run(['sleep', '30'])", "_posixsubprocess"),
        ("import os; os.system('sleep 30')", "os.system"),
        ("import os; os.execv('/bin/sh', ['sh'])", "os.exec"),
        ("import os; os.posix_spawn('/bin/true', ['true'], {})", "os.posix_spawn"),
        ("import ctypes", "ctypes"),
        ("import os; os.kill(os.getppid(), 9)", "os.kill"),
        ("import resource; resource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "resource.setrlimit"),
    ],
)
def test_process_creation_signals_and_limit_changes_are_refused(code: str, refused: str) -> None:
    result = run(code)
    assert result.status == "failed" and refused in result.stderr


def test_rm_rf_home_destroys_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "precious").mkdir(parents=True)
    (home / "precious" / "data.txt").write_text("keep me")
    monkeypatch.setenv("HOME", str(home))  # the evaluator's HOME; the child gets its own
    for code in (
        'import os; os.system("rm -rf ~")',
        "import os, shutil; shutil.rmtree(os.path.expanduser('~')); print('wiped own home')",
        f"import shutil; shutil.rmtree({str(home)!r})",
        f"import os; os.remove({str(home / 'precious' / 'data.txt')!r})",
        f"open({str(home / 'precious' / 'data.txt')!r}, 'w').write('overwritten')",
        f"import os; os.rename({str(home / 'precious')!r}, 'stolen')",
    ):
        run(code)
    assert (home / "precious" / "data.txt").read_text() == "keep me"


def test_memory_hog_fails_without_hurting_the_evaluator() -> None:
    result = run(
        """
        hoard = []
        while True:
            hoard.append(bytearray(16 * 1024 * 1024))
    """,
        SandboxLimits(timeout_s=10.0, memory_mb=256),
    )
    assert result.status == "failed" and "MemoryError" in result.stderr


def test_output_flood_is_cut_off() -> None:
    limits = SandboxLimits(timeout_s=10.0, output_bytes=32 * 1024)
    result = run("while True:\n    print('x' * 1000)", limits)
    assert result.status == "output_limit" and not result.passed
    assert 0 < len(result.stdout) <= limits.output_bytes


def test_no_network(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        for code in (
            f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)",
            "import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
        ):
            result = run(code)
            assert result.status == "failed" and "PermissionError" in result.stderr
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()


def test_run_many_keeps_order_and_isolates_failures() -> None:
    codes = ["print(1)", "raise SystemExit(1)", "while True: pass", "print(4)"]
    results = run_many(codes, SandboxLimits(timeout_s=1.0), workers=2)
    assert [r.status for r in results] == ["passed", "failed", "timeout", "passed"]
    assert results[3].stdout == "4\n"


def test_calls_on_the_entry_point_come_back_as_plain_data() -> None:
    code = "def f(x, scale=1):\n    if x is None:\n        raise KeyError(x)\n    return (x * scale, {x}, [x])\n"
    result = run_untrusted(code, FAST, entry_point="f", calls=[((2,), {"scale": 3}), ((None,), {})])
    assert result.passed
    assert result.report["calls"] == [["ok", {"tuple": [6, {"set": [2]}, [2]]}], ["raise", "KeyError"]]


def test_sandbox_check_prints_one_line_per_layer() -> None:
    repo = Path(__file__).resolve().parents[2]
    # Both at once: each pays for importing torch (through reference_llm.evaluate) and probing the layers.
    plain, as_json = [
        subprocess.Popen(
            [sys.executable, "-m", "reference_llm.evaluate", "sandbox-check", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=repo,
        )
        for extra in ([], ["--json"])
    ]
    (plain_out, plain_err), (json_out, json_err) = plain.communicate(timeout=120), as_json.communicate(timeout=120)
    assert plain.returncode == as_json.returncode == 0, plain_err + json_err
    layers = json.loads(json_out)
    assert list(layers) == [*sandbox_layers.LAYERS, *sandbox_layers.ALWAYS]
    assert all(line.startswith(("active: ", "unavailable: ")) for line in layers.values())
    assert len(plain_out.splitlines()) == len(layers)
    assert layers["audit"].startswith("active")  # needs nothing from the machine


def test_a_missing_layer_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_layers, "bwrap_binary", lambda: None)
    assert "apt-get install bubblewrap" in sandbox_layers._prerequisite("bwrap")
    monkeypatch.setattr(sandbox_layers, "landlock_abi", lambda: 0)
    assert "no Landlock" in sandbox_layers._prerequisite("landlock")


def test_bad_limits_are_rejected() -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ConfigError, match="workers"):
        run_many(["pass"], workers=0)
    if os.geteuid() != 0:
        with pytest.raises(ConfigError, match="root evaluator"):
            run_untrusted("pass", layers=("uid",))
    with pytest.raises(ConfigError, match="unknown sandbox layer"):
        run_untrusted("pass", layers=("chroot",))
    with pytest.raises(ConfigError, match="plain data"):
        run_untrusted("def f(g): pass", entry_point="f", calls=[((len,), {})])


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text` (Linux /proc)."""
    if not sys.platform.startswith("linux"):
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
