"""The sandboxed side of a run: fence this process in, run the untrusted code, report plain data.

The evaluator starts it as `python -I -S -B -c <this file's source> JOB RESULT_FD` (see sandbox.py), so it
uses the standard library only and is never imported in the sandbox. The evaluator imports it for
`encode`/`decode`, the plain-data format both sides share.

JOB is a JSON file: the code, optionally an entry point and the calls to make on it, the rlimits, and the
fences to put up. RESULT_FD receives one JSON report: whether the code ran to its end, and for each call
either ["ok", result] (plus the arguments after the call, if the call changed them), ["raise", exception
name] or ["unplain", type name]. Nothing here decides pass or fail: the evaluator reads the report as data
and runs the problem's checks itself. The candidate can rewrite everything in this process, so the
report is only ever a claim about what its function returned.

Fences, in the order they go up (each only if the job asks for it; a fence that fails to go up ends the
run, never runs the code without it):
  1. its own network namespace (unshare; when bwrap is not already providing one);
  2. uid/gid 65534 and no supplementary groups when started as root;
  3. no_new_privs and SIGKILL on the evaluator's death (always);
  4. rlimits: CPU seconds, address space, file size, no core dumps, no new processes (always);
  5. Landlock: read-only access to the interpreter's files, full access to the work dir only, no
     device/fifo/socket nodes, no TCP, no signals or abstract sockets out of the sandbox;
  6. seccomp: a BPF program (compiled by the evaluator with libseccomp) refusing other processes,
     namespaces, mounts, device nodes, xattrs, and new processes;
  7. a PEP 578 audit hook, last because it only slows what follows (an extra layer: Python-level).
"""

import json
import os
import sys

UNPRIVILEGED = 65534  # "nobody" on Debian, Fedora and Alpine alike


class Unplain(TypeError):
    """A value that is not plain data (only exact builtin types cross between processes)."""


PLAIN = (bool, int, float, str, bytes, complex, list, tuple, dict, set, frozenset)


def encode(value, depth=0):
    """Plain data -> JSON-able form keeping its exact type: lists are JSON arrays, other containers,
    bytes, complex and huge ints are one-key objects. Only data crosses, never an object: an instance
    of a subclass of a plain type (a namedtuple, a Counter, an IntEnum, an int with its own __eq__)
    becomes its value as the base type, so that its methods stay behind; anything else (a custom
    object, a function, a generator) raises Unplain."""
    if depth > 100:
        raise Unplain("nesting deeper than 100")
    kind = type(value)
    if value is not None and kind not in PLAIN:
        base = next((b for b in PLAIN if issubclass(kind, b)), None)
        try:
            value = base(value) if base is not None else None
        except Exception:
            value = None
        if base is None or type(value) is not base:
            raise Unplain(kind.__name__)
        kind = base
    if value is None or kind in (bool, str, float):
        return value
    if kind is int:
        return value if value.bit_length() < 4000 else {"int": hex(value)}  # JSON's ints stop at 4300 digits
    if kind is list:
        return [encode(item, depth + 1) for item in value]
    if kind is tuple:
        return {"tuple": [encode(item, depth + 1) for item in value]}
    if kind in (set, frozenset):  # sorted, so that equal sets encode alike in any process
        items = sorted((encode(item, depth + 1) for item in value), key=lambda x: json.dumps(x, sort_keys=True))
        return {kind.__name__: items}
    if kind is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise Unplain(kind.__name__)


def decode(data):
    """The inverse of `encode`; builds builtin objects only, whatever the input (ValueError if malformed)."""
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode(item) for item in data]
    if type(data) is dict and len(data) == 1:
        ((tag, body),) = data.items()
        if tag == "int" and type(body) is str:
            return int(body, 16)
        if tag == "bytes" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "complex" and type(body) is list and len(body) == 2:
            return complex(float(body[0]), float(body[1]))
        if type(body) is list:
            if tag == "tuple":
                return tuple(decode(item) for item in body)
            if tag in ("set", "frozenset"):
                return (set if tag == "set" else frozenset)(decode(item) for item in body)
            if tag == "dict":
                return {decode(k): decode(v) for k, v in body}
    raise ValueError(f"not encoded plain data: {str(data)[:80]}")


def _fence(job):
    """Put up the fences the job asks for, in the order of the module docstring."""
    import ctypes
    import resource

    libc = ctypes.CDLL(None, use_errno=True)

    def check(result, what):
        if result < 0 or result is False:
            raise OSError(ctypes.get_errno(), f"sandbox: {what} failed: {os.strerror(ctypes.get_errno())}")
        return result

    fences = job["fences"]
    if fences.get("netns"):
        # CLONE_NEWNET, and CLONE_NEWUSER too when not root (an unprivileged user namespace).
        check(libc.unshare(0x40000000 if os.geteuid() == 0 else 0x50000000), "unshare(CLONE_NEWNET)")
    if fences.get("uid"):
        os.setgroups([])
        os.setresgid(UNPRIVILEGED, UNPRIVILEGED, UNPRIVILEGED)
        os.setresuid(UNPRIVILEGED, UNPRIVILEGED, UNPRIVILEGED)
    check(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    check(libc.prctl(1, 9, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")  # after setresuid, which clears it
    if os.getppid() == 1 and not fences.get("bwrap"):
        os._exit(3)  # the evaluator died before PDEATHSIG was set: nobody is waiting for this run

    limits = job["limits"]
    for which, value in [
        (resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1)),
        (resource.RLIMIT_AS, (limits["memory_bytes"],) * 2),
        (resource.RLIMIT_FSIZE, (limits["file_bytes"],) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NPROC, (0, 0)),
    ]:
        try:
            resource.setrlimit(which, value)
        except (ValueError, OSError):
            pass  # a hard limit already lower than ours: keep the stricter one

    if fences.get("landlock"):
        _landlock(libc, check, fences["landlock"])
    if fences.get("seccomp"):
        program = bytes.fromhex(fences["seccomp"])

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        buffer = ctypes.create_string_buffer(program, len(program))
        fprog = SockFprog(len(program) // 8, ctypes.addressof(buffer))
        check(libc.prctl(22, 2, ctypes.byref(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")
    # Forget ctypes so that importing it again goes through the audit hook and is refused.
    for name in ("ctypes", "ctypes._endian", "_ctypes"):
        sys.modules.pop(name, None)
    if fences.get("audit"):
        sys.addaudithook(_audit_hook(os.path.realpath(job["workdir"])))


def _landlock(libc, check, rules):
    """Landlock (kernel >= 5.13): the candidate's filesystem is the interpreter, read-only, plus its work
    dir; with ABI >= 4 it has no TCP, with ABI >= 6 it cannot signal or reach abstract sockets outside."""
    import ctypes

    abi = rules["abi"]
    every = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    read = 1 | 1 << 2 | 1 << 3  # EXECUTE, READ_FILE, READ_DIR
    file_rights = 1 | 1 << 1 | 1 << 2 | (1 << 14 if abi >= 3 else 0)  # EXECUTE, WRITE, READ, TRUNCATE
    nodes = 1 << 6 | 1 << 9 | 1 << 10 | 1 << 11 | (1 << 15 if abi >= 5 else 0)  # CHAR, SOCK, FIFO, BLOCK, IOCTL_DEV

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = RulesetAttr(every, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)  # net: TCP bind+connect; scoped: both
    ruleset = check(libc.syscall(444, ctypes.byref(attr), ctypes.sizeof(attr), 0), "landlock_create_ruleset")
    grants = [(path, read) for path in rules["read"]] + [(path, read | file_rights) for path in rules["devices"]]
    grants.append((rules["workdir"], every & ~nodes))
    for path, allowed in grants:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # not on this machine
        if not os.path.isdir(path):
            allowed &= file_rights
        check(libc.syscall(445, ruleset, 1, ctypes.byref(PathBeneath(allowed & every, fd)), 0), f"landlock rule {path}")
        os.close(fd)
    check(libc.syscall(446, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)


def _audit_hook(workdir):
    """PEP 578 hook refusing, for the rest of the process's life, what HumanEval code never needs."""
    refused = {
        "os.system",
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.exec",
        "subprocess.Popen",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "socket.__new__",
        "socket.connect",
        "socket.bind",
        "socket.getaddrinfo",
        "resource.setrlimit",
        "resource.prlimit",
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.cdata",
        "ctypes.call_function",
        "sys.remote_exec",
        "os.setxattr",
        "os.removexattr",
        "sys.settrace",
        "sys.setprofile",
    }
    refused_imports = {"ctypes", "_ctypes", "_posixsubprocess", "cffi", "_cffi_backend"}
    # event -> (positions of paths, positions of dir_fd arguments)
    path_events = {
        "os.remove": ((0,), (1,)),
        "os.rmdir": ((0,), (1,)),
        "os.mkdir": ((0,), (2,)),
        "os.chmod": ((0,), (2,)),
        "os.chown": ((0,), (3,)),
        "os.truncate": ((0,), ()),
        "os.utime": ((0,), (3,)),
        "os.rename": ((0, 1), (2, 3)),
        "os.link": ((0, 1), (2, 3)),
        "os.symlink": ((1,), (2,)),
        "shutil.rmtree": ((0,), (1,)),
    }
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
        if event == "sqlite3.connect" and args[0] not in (":memory:", ""):
            raise PermissionError("sandbox: sqlite3 may open in-memory databases only")
        if event == "open" and args[0] is not None and isinstance(args[2], int) and args[2] & write_flags:
            if not inside(args[0]):
                raise PermissionError(f"sandbox: writing {args[0]!r} is outside the working directory")
        elif event in path_events:
            paths, dir_fds = path_events[event]
            if any(args[i] not in (None, -1) for i in dir_fds if i < len(args)):
                raise PermissionError(f"sandbox: {event} relative to a directory descriptor is not allowed")
            for i in paths:
                if not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} on {args[i]!r} is outside the working directory")

    return hook


def _run(job):
    """Run the code, then the calls; returns the report."""
    calls: list = []
    report: dict = {"completed": False, "error": None, "calls": calls}
    namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(job["code"], "candidate.py", "exec"), namespace)
        wanted = job.get("calls", [])
        function = namespace[job["entry_point"]] if wanted else None
    except BaseException as exc:  # SystemExit included: leaving early is not finishing
        import traceback

        traceback.print_exc()
        report["error"] = f"{type(exc).__name__}: {exc}"[:1000]
        return report
    for args_data, kwargs_data in wanted:
        args, kwargs = decode(args_data), decode(kwargs_data)
        try:
            value = function(*args, **kwargs)  # type: ignore[misc]  # not None: there are calls
        except BaseException as exc:
            calls.append(["raise", type(exc).__name__])
            continue
        try:
            outcome = ["ok", encode(value)]
            after = encode(args)
            if after != args_data:  # the call changed its arguments in place; checks may look at them
                outcome.append(after)
        except (Unplain, RecursionError, ValueError):
            outcome = ["unplain", type(value).__name__]
        calls.append(outcome)
    report["completed"] = True
    return report


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    result_fd = int(sys.argv[2])
    _fence(job)
    sys.argv = ["candidate.py"]
    data = json.dumps(_run(job)).encode()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass  # the code may have closed or replaced them
    view = memoryview(data)
    while view:
        view = view[os.write(result_fd, view) :]
    # os._exit: atexit handlers the code registered must not run (they could only add noise to stderr).
    os._exit(0)


if __name__ == "__main__":
    main()
