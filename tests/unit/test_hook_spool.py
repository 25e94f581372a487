"""SpoolReplayer against a real Redis: each spooled event once, problems reported once, an
unreadable file kept aside (never lost, never retried for ever)."""

from __future__ import annotations

import json
from pathlib import Path

from blueplane.health import Health
from blueplane.hooks.emit import build_fields, spool
from blueplane.hooks.spool import SpoolReplayer

STREAM = "telemetry:events"


async def test_replay_once_each_and_problems_reported(client, tmp_path: Path) -> None:
    home = tmp_path / "home"
    fields = build_fields({"hook_event_name": "stop", "conversation_id": "c"}, {})
    spool(str(home), {"fields": fields, "error": "down"})
    spool(str(home), {"problem": "hook input is not JSON: x", "at": "t"})
    (home / "spool" / "0-bad.json").write_text("{half")
    (home / "spool" / ".1-2-3.json.tmp").write_text("{}")  # a write in progress: not touched
    health = Health()
    r = SpoolReplayer(client, STREAM, home / "spool", health)
    assert await r.replay_once() == 1
    assert await r.replay_once() == 0
    entries = await client.xrange(STREAM)
    assert len(entries) == 1 and entries[0][1][b"event_id"] == fields["event_id"].encode()
    # the same file again (a crash between the XADD and the delete): not sent twice
    spool(str(home), {"fields": fields})
    assert await r.replay_once() == 0
    assert len(await client.xrange(STREAM)) == 1
    c = health.component("hook_spool")
    assert (c.counters["replayed"], c.counters["already_replayed"]) == (1, 1)
    assert c.counters["bad_hook_input"] == 1 and c.counters["bad_spool_files"] == 1
    assert (home / "spool" / "bad" / "0-bad.json").read_text() == "{half"
    left = sorted(p.name for p in (home / "spool").iterdir())
    assert left == [".1-2-3.json.tmp", "bad"]
    assert json.loads(entries[0][1][b"metadata"])["source"] == "cursor_hook"
