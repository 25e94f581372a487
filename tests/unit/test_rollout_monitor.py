"""The rollout inside the database monitor: an out-of-rollout workspace is tracked and mapped,
nothing is published for it (its own database nor the global one), and turning it on publishes
what was written meanwhile, once. A real Redis and real SQLite files."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from blueplane.config import FeatureFlagsConfig
from blueplane.cursor.database_monitor import CursorDatabaseMonitor
from blueplane.events import normalise_workspace_path, workspace_hash
from blueplane.publisher import Publisher
from blueplane.rollout import Rollout, bucket
from tests.fixtures.cursor_db import (
    make_assistant_bubble,
    make_generation,
    make_user_bubble,
    make_workspace_identifier,
    now_ms,
)
from tests.unit.test_layouts_global_monitor import STREAM, Rig, composer_ids


async def test_out_of_rollout_workspace_is_mapped_silent_then_resumes_once(
    tmp_path: Path, client
) -> None:
    rig = Rig(tmp_path, client)
    a, b = rig.project("a"), rig.project("b")
    hb = workspace_hash(normalise_workspace_path(b.folder_path or ""))
    rollout = Rollout(FeatureFlagsConfig(python_db_monitor_exclude=[b.folder_path or ""]))
    rig.monitor = CursorDatabaseMonitor(
        rig.cfg, rig.sessions, rig.mapper, Publisher(client, STREAM, 3600), rig.health,
        clock=time.time, rollout=rollout,
    )  # fmt: skip
    gen_a = a.db.append_generations([make_generation(now_ms(), "composer", "a1")])
    gen_b = b.db.append_generations([make_generation(now_ms(), "composer", "b1")])
    for ws in (a, b):
        rig.glob.put_conversation(
            [make_user_bubble(f"q-{ws.id}"), make_assistant_bubble(f"r-{ws.id}")],
            workspaceIdentifier=make_workspace_identifier(ws.id, ws.folder_path or ""),
        )
    await rig.sessions.load()
    await rig.start(a, "sa")
    await rig.start(b, "sb")
    await rig.monitor.poll_once()
    got = await rig.traces()
    assert got and {t["session"] for t in got} == {"sa"}
    assert [t["generation_id"] for t in got if t["trace_type"] == "generation"] == [
        gen_a[0]["generationUUID"]
    ]
    wb = rig.health.workspaces[hb]
    assert wb.rollout == {"enabled": False, "reason": "excluded"}
    assert wb.status == "rollout_off" and wb.database is not None  # tracked and mapped
    assert wb.items_published == 0

    # Written while off: nothing goes out, but it counts as activity (the session stays alive).
    before = rig.sessions.last_activity(hb)
    while before is not None and time.time() <= before[0]:  # a new activity's time differs
        await asyncio.sleep(0.001)
    gen_b += b.db.append_generations([make_generation(now_ms(), "composer", "b2")])
    await rig.monitor.poll_once()
    assert len(await rig.traces()) == len(got)
    after = rig.sessions.last_activity(hb)
    assert after is not None and after != before and after[1] == "database change"

    # On: its database from the watermarks, its global conversation by session replay.
    rollout.update(FeatureFlagsConfig())
    await rig.monitor.poll_once()
    after = await rig.traces()
    new = after[len(got) :]
    assert {t["session"] for t in new} == {"sb"}
    assert sorted(t["generation_id"] for t in new if t["trace_type"] == "generation") == sorted(
        g["generationUUID"] for g in gen_b
    )
    assert len(composer_ids(new)) == 1
    assert Counter(t["trace_type"] for t in new)["message"] == 2
    assert rig.health.workspaces[hb].rollout == {
        "enabled": True,
        "reason": f"in rollout (bucket {bucket(hb)} < 100)",
    }
    # Nothing twice.
    await rig.monitor.poll_once()
    assert len(await rig.traces()) == len(after)
