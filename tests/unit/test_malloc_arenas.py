"""The server limits glibc's malloc arenas (memory freed by a first sync comes back)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from blueplane.malloc_arenas import ARENAS

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

# Threads that each allocate, then glibc's own report of its heaps (one per arena).
PROBE = textwrap.dedent(
    """
    import ctypes, sys, threading
    from blueplane.malloc_arenas import limit_arenas
    if sys.argv[2] == "limit":
        assert limit_arenas()
    gate = threading.Barrier(6)
    def work():
        gate.wait()
        keep = [bytes(2000) for _ in range(2000)]
        gate.wait()
    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype = ctypes.c_void_p
    fp = libc.fopen(sys.argv[1].encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fclose(ctypes.c_void_p(fp))
    """
)


def heaps(tmp_path: Path, mode: str) -> int:
    out = tmp_path / f"malloc-{mode}.xml"
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_ARENA_MAX from the caller
    subprocess.run([sys.executable, "-c", PROBE, str(out), mode], check=True, env=env)
    return out.read_text().count("<heap nr=")


def test_limit_arenas_keeps_threads_to_two_heaps(tmp_path: Path) -> None:
    if heaps(tmp_path, "default") <= ARENAS:
        pytest.skip("this libc does not give each thread its own arena")
    assert heaps(tmp_path, "limit") <= ARENAS


def test_run_limits_arenas_before_serving() -> None:
    """``blueplane run`` calls it first: arenas are picked when a thread first allocates."""
    source = Path(__file__).parents[2] / "src" / "blueplane" / "cli" / "run.py"
    text = source.read_text()
    assert text.index("limit_arenas()") < text.index("asyncio.run(")


def test_an_arena_limit_set_by_the_user_is_left_to_glibc(monkeypatch) -> None:
    from blueplane.malloc_arenas import limit_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas() is False
