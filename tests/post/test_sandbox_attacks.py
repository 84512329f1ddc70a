"""The review's attacks on the sandbox fence (tests/post/fixtures/sandbox_attacks.py), each run three ways:

- behind every layer this machine offers: stopped, nothing damaged;
- behind no layer at all (the negative control): it works, so the test can see the damage it does;
- behind each layer that claims to stop it, alone: stopped. A broken layer fails its own test even
  while the others still hold.

Attacks on the evaluator itself (kill, renice, pin, report flood) run through a stand-in evaluator
process (fixtures/sandbox_evaluator.py) that reports on its own state afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from reference_llm.evaluate import sandbox_layers
from reference_llm.evaluate.sandbox import SandboxLimits, remove_tree, run_untrusted

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox layers are Linux's")

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("sandbox_attacks", FIXTURES / "sandbox_attacks.py")
attacks = sys.modules["sandbox_attacks"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(attacks)
EVALUATOR = FIXTURES / "sandbox_evaluator.py"
LIMITS = SandboxLimits(timeout_s=5.0, memory_mb=512)


def configurations(group) -> list:
    """(attack, layers) pairs: every layer ("all"), none ("none"), then each claimed layer alone."""
    return [
        pytest.param(attack, config, id=f"{attack.name}-{config}")
        for attack in group
        for config in ("all", "none", *attack.blocked_by)
    ]


def layers_for(attack, config: str) -> tuple[str, ...] | None:
    """The `layers` argument for a configuration, or a skip with the reason it cannot run here."""
    if config == "none":
        if attack.needs_root and os.geteuid() != 0:
            pytest.skip(f"{attack.name} does damage only for a root evaluator")
        return ()
    if config == "all":
        return None
    status = {s.name: s for s in sandbox_layers.probe()}[config]
    if not status.active:
        pytest.skip(f"layer {config} is unavailable here: {status.detail}")
    if config == "uid" and attack.imports and sandbox_layers.uid_drop_needs_bwrap():
        pytest.skip(f"uid 65534 alone cannot import {attack.imports} here: {sandbox_layers.uid_drop_needs_bwrap()}")
    return (config,)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside any work dir, with a file to delete and a private key to steal."""
    target = tmp_path / "outside"
    target.mkdir()
    (target / "victim.txt").write_text("keep me")
    key = target / "id_ed25519"
    key.write_text(f"SECRET-{secrets.token_hex(8)}")
    key.chmod(0o600)
    return target


def damaged(attack, outside: Path, stdout: str) -> bool:
    """Did the attack get what it wanted? Judged on the host where it can be, else on what it printed."""
    victim = outside / "victim.txt"
    if attack.name == "unlink_via_dir_fd":
        return not victim.exists()
    if attack.name == "sqlite_outside":
        return (outside / "stolen.db").exists()
    if attack.name == "mkfifo_outside":
        return (outside / "fifo").exists()
    if attack.name == "setxattr_outside":
        try:
            return os.getxattr(victim, "user.evil") == b"1"
        except OSError:
            return False
    if attack.name == "read_ssh_key":
        return (outside / "id_ed25519").read_text() in stdout
    return stdout.rstrip().endswith("SUCCEEDED")


@pytest.mark.parametrize("attack, config", configurations(attacks.FILE_ATTACKS + attacks.READ_ATTACKS))
def test_fence_attack(attack, config: str, outside: Path) -> None:
    if attack.name == "read_etc_shadow" and not Path("/etc/shadow").exists():
        pytest.skip("no /etc/shadow on this machine")
    if attack.name == "setxattr_outside" and not _user_xattrs_work(outside):
        pytest.skip("this filesystem has no user xattrs")
    result = run_untrusted(attacks.program(attack, outside=str(outside)), LIMITS, layers=layers_for(attack, config))
    if config == "none":
        assert damaged(attack, outside, result.stdout), (result.stdout, result.stderr)
        return
    assert not damaged(attack, outside, result.stdout), (config, result.stdout)
    # Stopped by the fence itself (an OSError from the kernel or the hook), not by a broken program.
    word, error = result.stdout.strip().splitlines()[-1].split()[:2]
    fence_errors = ("PermissionError", "FileNotFoundError", "OSError", "OperationalError")  # the last: sqlite's
    assert word == "BLOCKED" and error in fence_errors, (config, result.stdout)
    if config == "all":
        assert not Path(result.stdout.split()[0]).exists()  # the work dir is gone


def _user_xattrs_work(directory: Path) -> bool:
    probe = directory / "xattr-probe"
    probe.write_text("")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def evaluate(jobs: list[dict], env: dict | None = None, as_nobody: bool = False) -> subprocess.CompletedProcess:
    """Run jobs through the stand-in evaluator process; one JSON line per job comes back on stdout."""
    argv = [sys.executable, str(EVALUATOR), json.dumps(jobs)]
    return subprocess.run(
        nobody_argv(argv) if as_nobody else argv, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize("attack, config", configurations(attacks.PROCESS_ATTACKS))
def test_attack_on_the_evaluator(attack, config: str, tmp_path: Path) -> None:
    if attack.name == "pin_evaluator" and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("pinning shows only with two or more CPUs")
    tmp = tmp_path / "tmp"  # the evaluator's work dirs go here, so a left-over one can be seen
    tmp.mkdir(mode=0o755)
    tmp.chmod(0o755)
    jobs = [{"code": attacks.program(attack), "layers": layers_for(attack, config)}]
    done = evaluate(jobs, env={**os.environ, "TMPDIR": str(tmp)})
    leftovers = list(tmp.iterdir())
    for leftover in leftovers:
        remove_tree(str(leftover))
    if attack.name == "kill_evaluator":
        if config == "none":  # the review's finding: the evaluator dies and leaves its work dir behind
            assert done.returncode == -9 and leftovers, (done.returncode, done.stderr)
        else:  # behind bwrap its parent is the sandbox's own init: the signal reaches nothing outside
            assert done.returncode == 0 and not leftovers, done.stderr
        return
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    changed = report["nice"] == 19 if attack.name == "renice_evaluator" else report["affinity"] == [0]
    assert changed == (config == "none"), (config, report)
    assert not leftovers


def test_a_report_flood_does_not_grow_the_evaluator() -> None:
    flood = {"code": attacks.REPORT_FLOOD, "layers": None, "timeout_s": 20.0}
    capped, uncapped = evaluate([flood]), evaluate([{**flood, "report_bytes": 1 << 30}])  # the control: no cap
    assert capped.returncode == uncapped.returncode == 0, capped.stderr + uncapped.stderr
    capped, uncapped = json.loads(capped.stdout), json.loads(uncapped.stdout)
    assert capped["status"] == "output_limit"
    assert capped["maxrss_after_kib"] - capped["maxrss_before_kib"] < 32 * 1024
    assert uncapped["maxrss_after_kib"] - uncapped["maxrss_before_kib"] > 200 * 1024


def test_the_work_dir_goes_whatever_the_code_leaves_in_it() -> None:
    result = run_untrusted(attacks.UNDELETABLE, LIMITS)
    workdir = Path(result.stdout.split()[0])
    assert result.passed and not workdir.exists()
    if "uid" in result.layers:
        assert "NOT-IMMUTABLE" in result.stdout  # uid 65534 cannot set the flag at all
    if os.geteuid() == 0:  # behind no layer a root candidate can, and the directory still goes
        result = run_untrusted(attacks.UNDELETABLE, LIMITS, layers=())
        assert "IMMUTABLE" in result.stdout and not Path(result.stdout.split()[0]).exists()


def test_remove_tree_removes_what_rmtree_leaves(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run([sys.executable, "-c", attacks.UNDELETABLE], cwd=tree, check=True, capture_output=True)
    if os.geteuid() == 0 and not _immutable(tree / "frozen"):
        pytest.skip("root ignores chmod 000 and this filesystem has no immutable flag: nothing resists rmtree")
    shutil.rmtree(tree, ignore_errors=True)  # the negative control
    assert tree.exists()
    remove_tree(str(tree))
    assert not tree.exists()


def _immutable(path: Path) -> bool:
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        flags = bytearray(4)
        fcntl.ioctl(fd, 0x80086601, flags, True)
        return bool(int.from_bytes(flags, "little") & 0x10)
    except OSError:
        return False
    finally:
        os.close(fd)


def nobody_argv(argv: list[str]) -> list[str]:
    """`argv` as uid 65534 with no capabilities: bwrap (as root) shows it the interpreter when that sits
    under a directory closed to others (/root), then setpriv drops to 65534."""
    bwrap, setpriv = sandbox_layers.bwrap_binary(), shutil.which("setpriv")
    if os.geteuid() != 0 or bwrap is None or setpriv is None:
        pytest.skip("running the evaluator as nobody needs root, bwrap and setpriv")
    outer = [bwrap, "--dev-bind", "/", "/", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    for path in {os.path.realpath(sys.base_prefix), str(Path(__file__).resolve().parents[2])}:
        closed = next((p for p in reversed(Path(path).parents) if not p.stat().st_mode & 0o001), None)
        if closed is not None:
            outer += ["--perms", "0755", "--tmpfs", str(closed)]
            for parent in reversed(Path(path).parents):
                if len(parent.parts) > len(closed.parts):
                    outer += ["--perms", "0755", "--dir", str(parent)]
            outer += ["--ro-bind", path, path]
    drop = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all", "--"]
    return outer + ["--", *drop, *argv]


@pytest.mark.parametrize(
    "name",
    [
        "unlink_via_dir_fd",
        "sqlite_outside",
        "setxattr_outside",
        "read_ssh_key",
        "read_foreign_environ",
        "renice_evaluator",
        "kill_evaluator",
    ],
)
def test_an_unprivileged_evaluator_is_fenced_too(name: str) -> None:
    """The evaluator itself as uid 65534: its candidates run as the same uid, so only the other layers
    stand between them; the negative control (no layers) shows each attack working against it."""
    attack = next(a for a in attacks.FILE_ATTACKS + attacks.READ_ATTACKS + attacks.PROCESS_ATTACKS if a.name == name)
    outside = Path(tempfile.mkdtemp(prefix="llmgen-nobody-"))
    try:
        outside.chmod(0o755)
        for file, text in (("victim.txt", "keep me"), ("id_ed25519", f"SECRET-{secrets.token_hex(8)}")):
            (outside / file).write_text(text)
            (outside / file).chmod(0o600)
        for path in (outside, *outside.iterdir()):
            os.chown(path, 65534, 65534)
        if name == "setxattr_outside" and not _user_xattrs_work(outside):
            pytest.skip("this filesystem has no user xattrs")
        tmp = outside / "tmp"  # the evaluator's work dirs: a left-over one shows here, and goes with it
        tmp.mkdir()
        os.chown(tmp, 65534, 65534)
        env = {**os.environ, "TMPDIR": str(tmp)}
        code = attacks.program(attack, outside=str(outside))
        fenced = evaluate([{"code": code, "layers": None}], env=env, as_nobody=True)
        assert fenced.returncode == 0, fenced.stderr
        report = json.loads(fenced.stdout)
        assert "uid" not in report["layers"] and "bwrap" in report["layers"], report["layers"]
        assert not damaged(attack, outside, report["stdout"]), report
        assert report["nice"] != 19 and not list(tmp.iterdir())
        control = evaluate([{"code": code, "layers": []}], env=env, as_nobody=True)
        if name == "kill_evaluator":  # bwrap reports its child's SIGKILL as 137
            assert control.returncode in (-9, 128 + 9) and list(tmp.iterdir()), control
        elif name == "renice_evaluator":
            assert json.loads(control.stdout)["nice"] == 19
        else:
            assert damaged(attack, outside, json.loads(control.stdout)["stdout"]), control.stdout
    finally:
        remove_tree(str(outside))
