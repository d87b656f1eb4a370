"""Process figures from Linux ``/proc`` for benchmarks and tests: CPU time spent by a
process (all its threads), and its child processes (``serve --mllp-workers`` and the like)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _stat(pid: int) -> list[str]:
    # Fields after the command name, which is in parentheses and may contain spaces.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (fields 14 and 15 of
    /proc/<pid>/stat): what it spent, whatever else the machine was doing meanwhile."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # a process that just ended
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its live children."""
    total = 0.0
    for one in [pid, *child_pids(pid)]:
        with contextlib.suppress(OSError):
            total += cpu_seconds(one)
    return total


def io_bytes(pid: int) -> tuple[int, int]:
    """Bytes a process has read and written so far through system calls (``rchar`` and
    ``wchar`` of /proc/<pid>/io: files and sockets, whether or not they reached a disk)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


def tree_io_bytes(pid: int) -> tuple[int, int]:
    """``io_bytes`` of a process and of its live children, summed."""
    read = written = 0
    for one in [pid, *child_pids(pid)]:
        with contextlib.suppress(OSError):
            r, w = io_bytes(one)
            read += r
            written += w
    return read, written


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (not gone, not a zombie waiting to be reaped)."""
    try:
        state = _stat(pid)[0]
    except OSError:
        return False
    return state != "Z"
