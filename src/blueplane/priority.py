"""Background priority: the server yields the CPU and the disk to Cursor whenever both want them.

Since live capture a read follows every Cursor commit, so on a laptop's few cores our work
(the read, parsing, Redis, the store) competes with Cursor's next commit. A telemetry daemon
should lose that race: ``blueplane run`` lowers its own CPU priority (nice ``NICE``) and I/O
priority (best-effort class, lowest level) before it starts any thread or child, so every thread
and the bundled ``redis-server`` inherit it.

Why the whole process and not only the threads that read Cursor's databases: a lowered thread
that holds the GIL (or, in rollback-journal mode, Cursor's SHARED lock) while preempted stalls
everything that waits on it, our event loop included (priority inversion). One priority for the
whole process has no inversion inside it, and ``SCHED_IDLE`` is avoided for the same reason: a
starved reader holding SHARED would make Cursor's writer wait. Linux only; elsewhere (and where
the calls fail) it is a logged no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys
import threading
from dataclasses import dataclass

log = logging.getLogger("blueplane.priority")

NICE = 10  # CFS weight 110 against Cursor's 1024: ~10 % of a contended core, all of an idle one
IOPRIO_CLASS_BE = 2
IOPRIO_LOWEST_LEVEL = 7
_IOPRIO_CLASS_SHIFT = 13
_IOPRIO_WHO_PROCESS = 1
# ioprio_get / ioprio_set syscall numbers (no libc wrapper exists).
_IOPRIO_SYSCALLS = {"x86_64": (252, 251), "aarch64": (31, 30), "arm64": (31, 30)}


@dataclass(frozen=True)
class Priority:
    """What a thread runs at: its nice value and its I/O class/level (None: unknown)."""

    nice: int
    io_class: int | None
    io_level: int | None

    def as_dict(self) -> dict[str, int | None]:
        return {"nice": self.nice, "io_class": self.io_class, "io_level": self.io_level}


def _syscalls() -> tuple[int, int] | None:
    if not sys.platform.startswith("linux"):
        return None
    return _IOPRIO_SYSCALLS.get(platform.machine())


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def io_priority(tid: int = 0) -> tuple[int, int] | None:
    """``(class, level)`` of a thread (0: the calling one), or None where unknown."""
    calls = _syscalls()
    if calls is None:
        return None
    value = int(_libc().syscall(calls[0], _IOPRIO_WHO_PROCESS, tid))
    if value < 0:
        return None
    return value >> _IOPRIO_CLASS_SHIFT, value & ((1 << _IOPRIO_CLASS_SHIFT) - 1)


def thread_nice(tid: int, pid: int | None = None) -> int:
    """Nice value of one thread, from ``/proc/<pid>/task/<tid>/stat`` (field 19)."""
    with open(f"/proc/{pid or os.getpid()}/task/{tid}/stat", encoding="ascii") as fh:
        stat = fh.read()
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return int(stat.rsplit(")", 1)[1].split()[16])


def current() -> Priority:
    """The calling thread's priority."""
    io = io_priority()
    return Priority(
        nice=thread_nice(threading.get_native_id()) if sys.platform.startswith("linux") else 0,
        io_class=io[0] if io else None,
        io_level=io[1] if io else None,
    )


def lower_current_thread(nice: int = NICE) -> Priority:
    """Lower the calling thread (and what it starts from now on) to background priority.

    Never raises a priority: a nice value already above ``nice`` is kept. Call it before any
    thread or child process is started, so that they inherit it.
    """
    if not sys.platform.startswith("linux"):
        log.info("background priority: not supported on %s, running at normal priority",
                 sys.platform)  # fmt: skip
        return current()
    tid = threading.get_native_id()
    try:
        # On Linux a nice value is per thread; PRIO_PROCESS with a thread id sets that thread's.
        if thread_nice(tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        log.warning("background priority: cannot lower the CPU priority: %s", exc)
    calls = _syscalls()
    if calls is not None:
        value = (IOPRIO_CLASS_BE << _IOPRIO_CLASS_SHIFT) | IOPRIO_LOWEST_LEVEL
        io = io_priority(tid)
        # Leave an idle class (3) as it is: it is already lower than what we would set.
        keep = io is not None and io[0] == 3
        if not keep and int(_libc().syscall(calls[1], _IOPRIO_WHO_PROCESS, tid, value)) < 0:
            err = ctypes.get_errno()
            log.warning("background priority: cannot lower the I/O priority: %s",
                        os.strerror(err))  # fmt: skip
    now = current()
    log.info("background priority: nice %d, I/O class %s level %s (background_priority: true)",
             now.nice, now.io_class, now.io_level)  # fmt: skip
    return now
