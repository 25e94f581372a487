"""Map 1,000 workspace storage folders cold (no cache) and warm (persistent cache).

Builds a temporary Cursor ``User`` folder with 1,000 ``workspaceStorage/<id>`` folders, each
with a real ``workspace.json`` and a real ``state.vscdb``, named by VS Code's rule for 1,000
real project folders. Then it times:

- cold, with path: a fresh mapper, no cache file, ``find_database_sync(hash, path)`` for all;
- cold, hash only: a fresh mapper, no cache, ``find_database_sync(hash, None)`` (scan);
- warm: a fresh mapper that loads the cache written by the first run.

Figures go to stdout and to ``bench/results/workspace_mapper.json``.
Run: ``.venv/bin/python bench/bench_workspace_mapper.py [--folders N]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from blueplane.cursor.storage_id import storage_id_for_local_folder
from blueplane.cursor.uris import file_uri
from blueplane.cursor.workspace_mapper import WorkspaceMapper
from blueplane.events import workspace_hash

DDL = "CREATE TABLE ItemTable (key TEXT UNIQUE ON CONFLICT REPLACE, value BLOB)"
RESULTS = Path(__file__).parent / "results" / "workspace_mapper.json"


def build(root: Path, n: int) -> tuple[Path, list[tuple[str, str]]]:
    user = root / "User"
    storage = user / "workspaceStorage"
    storage.mkdir(parents=True)
    template = root / "template.vscdb"
    conn = sqlite3.connect(template)
    conn.execute(DDL)
    conn.execute("INSERT INTO ItemTable VALUES ('aiService.generations', '[]')")
    conn.commit()
    conn.close()
    blob = template.read_bytes()
    workspaces: list[tuple[str, str]] = []
    for i in range(n):
        proj = root / "projects" / f"proj-{i:04d}"
        proj.mkdir(parents=True)
        sid = storage_id_for_local_folder(str(proj))
        assert sid is not None
        folder = storage / sid
        folder.mkdir()
        uri = file_uri(str(proj)).to_string()
        (folder / "workspace.json").write_bytes(f'{{\n  "folder": "{uri}"\n}}'.encode())
        (folder / "state.vscdb").write_bytes(blob)
        workspaces.append((workspace_hash(str(proj)), str(proj)))
    return user, workspaces


def run(
    label: str, make: Callable[[], WorkspaceMapper], work: list[tuple[str, str | None]]
) -> dict:
    mapper = make()
    strategies: dict[str, int] = {}
    t0 = time.perf_counter()
    for h, p in work:
        m = mapper.find_database_sync(h, p)
        key = m.strategy if m else "unmapped"
        strategies[key] = strategies.get(key, 0) + 1
    mapper.flush()
    total_ms = (time.perf_counter() - t0) * 1000
    out = {
        "total_ms": round(total_ms, 2),
        "per_folder_ms": round(total_ms / len(work), 4),
        "strategies": strategies,
    }
    total, per = out["total_ms"], out["per_folder_ms"]
    print(f"{label:<24} {total:>9.1f} ms total  {per:.4f} ms/folder  {strategies}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folders", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        user, workspaces = build(root, args.folders)
        print(f"built {args.folders} storage folders in {(time.perf_counter() - t0):.1f} s")
        cache = root / "cache.json"

        def fresh(cache_path: Path) -> Callable[[], WorkspaceMapper]:
            return lambda: WorkspaceMapper([user], cache_path)

        with_path: list[tuple[str, str | None]] = list(workspaces)
        hash_only: list[tuple[str, str | None]] = [(h, None) for h, _ in workspaces]
        results = {
            "cold_with_path": run("cold (hash + path)", fresh(cache), with_path),
            "cold_hash_only": run("cold (hash only, scan)", fresh(root / "c2.json"), hash_only),
            "warm_cache": run("warm (cache)", fresh(cache), with_path),
        }
        results["cache_file_bytes"] = cache.stat().st_size
    report = {
        "folders": args.folders,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
