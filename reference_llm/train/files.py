"""Run-directory files that survive crashes: atomic writes, and temporary names that say who wrote them.

Everything in a run directory is written under a temporary name and renamed into place, so a reader
sees either the old file or the new one. A process killed half-way leaves its temporary behind;
the name carries the writer's host, pid and process start time (`.tmp-<name>@<host>.<pid>.<start>`)
so that the next run can tell a dead writer's leftovers (removed) from a live one's (kept), even when
the pid has since been reused by another process. Torch-free: the metrics writer uses it too.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import time
from pathlib import Path

TMP_PREFIX = ".tmp-"
# A temporary from another host (a shared filesystem) cannot be checked for a live writer; it is taken
# for dead when nothing in it has changed for this long. Writing one file of a checkpoint updates its
# modification time as it goes, so even a slow writer of a very large checkpoint looks alive.
STALE_AFTER_S = 24 * 3600


@functools.cache
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, /proc/PID/stat field 22): with the pid, it
    names one process for good. None when there is no such process; 0 where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None if Path("/proc/self/stat").exists() else 0
    except OSError:
        return 0
    # The command name (field 2) is in parentheses and may hold spaces: count fields after it.
    return int(stat.rpartition(")")[2].split()[19])


def owner_tag() -> str:
    """`host.pid.start` of this process."""
    return f"{_host()}.{os.getpid()}.{_start_time(os.getpid()) or 0}"


def temp_name(name: str) -> str:
    """Temporary name for `name` in the same directory, owned by this process."""
    return f"{TMP_PREFIX}{name}@{owner_tag()}"


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary sibling, flush it to disk, then rename it over `path` (atomic on POSIX)."""
    tmp = path.with_name(temp_name(path.name))
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries (new files, renames), to disk where the platform
    allows it: a rename is only as durable as what it points at."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def writer_is_dead(entry: Path) -> bool:
    """True when the process that named temporary `entry` is gone: on this host, no process with its
    pid and start time; from another host (or an older name without a tag), untouched for STALE_AFTER_S."""
    _, _, tag = entry.name.rpartition("@")
    host, _, rest = tag.partition(".")
    pid_text, _, start_text = rest.partition(".")
    if host == _host() and pid_text.isdigit() and start_text.isdigit():
        pid, start = int(pid_text), int(start_text)
        now = _start_time(pid)
        if now is None:
            return True
        if now and start:
            return now != start  # the pid was reused by a later process
        try:  # no /proc: ask the kernel whether the pid exists at all
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # someone else's process
            return False
        return False
    return time.time() - _newest_mtime(entry) > STALE_AFTER_S


def _newest_mtime(entry: Path) -> float:
    try:
        times = [entry.lstat().st_mtime]
        if entry.is_dir() and not entry.is_symlink():
            times += [p.lstat().st_mtime for p in entry.iterdir()]
        return max(times)
    except OSError:
        return time.time()  # vanished or unreadable meanwhile: not ours to judge


def remove(entry: Path) -> None:
    """Remove a file or directory, first renaming it to a temporary name of ours, so that a process
    killed during a long removal leaves an obvious leftover (removed next time), never a half-deleted
    entry under its real name. Errors are ignored: another process may be removing it too."""
    try:  # "removing-": never the name of something this process is writing
        base = entry.name.removeprefix(TMP_PREFIX).partition("@")[0].removeprefix("removing-")
        doomed = entry.with_name(temp_name("removing-" + base))
        entry.rename(doomed)
    except OSError:
        return
    if doomed.is_dir() and not doomed.is_symlink():
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        doomed.unlink(missing_ok=True)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temporaries in `directory` whose writers are dead; returns what was removed."""
    removed: list[Path] = []
    try:
        entries = [p for p in directory.iterdir() if p.name.startswith(TMP_PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        if writer_is_dead(entry):
            remove(entry)
            removed.append(entry)
    return removed
