"""At most two glibc malloc arenas in the long-running processes, so their memory comes back.

glibc gives each thread that meets a locked arena a new one, up to 8 per core. The server's
threads (SQLite reads, JSON decoding, store writes) each allocate in their own, and memory a
first sync freed stays spread over all of them: ``bench/bench_live.py`` saw the server at
97-113 MB after a 1 GB first sync, 85 MB with ``MALLOC_ARENA_MAX=2`` and no other change.
Two arenas serve two busy threads at once, which is what the GIL leaves room for.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("blueplane.server")

M_ARENA_MAX = -8  # glibc's mallopt parameter
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """``mallopt(M_ARENA_MAX, arenas)`` on glibc, before any thread starts; True if set.

    A ``MALLOC_ARENA_MAX`` set in the environment is left to glibc (the user's choice), and a
    libc without ``mallopt`` (musl, macOS) is left as it is.
    """
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if mallopt(M_ARENA_MAX, arenas) != 1:
        log.warning("mallopt(M_ARENA_MAX, %d) failed: memory may be kept per thread", arenas)
        return False
    return True
