"""Both monitors in parallel: ``blueplane run`` reads a real workspace database while a simulated
extension puts the TypeScript monitor's events (typescript-monitor-events.md) on the same
stream; ``blueplane compare`` reports exactly what each side saw."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis as sync_redis

from blueplane.events import normalise_workspace_path, workspace_hash
from tests.conftest import BlueplaneEnv, wait_until
from tests.fixtures.cursor_db import UserDir, iso_ms, make_generation, now_ms

pytestmark = pytest.mark.integration


def extension_event(
    h: str, gen: dict, *, camel: bool = False, description: str | None = None
) -> dict[str, str]:
    """One entry exactly as databaseMonitor.ts / queueWriter.ts queued it."""
    text = description or gen["textDescription"]
    full = {"unixMs": gen["unixMs"], "generationUUID": gen["generationUUID"],
            "type": gen["type"], "textDescription": text}  # fmt: skip
    if camel:
        payload = {"traceType": "generation", "generationId": gen["generationUUID"],
                   "dataVersion": 17, "fullGenerationData": full}  # fmt: skip
        metadata = {"workspaceHash": h}
    else:
        payload = {"trace_type": "generation", "generation_id": gen["generationUUID"],
                   "data_version": 17, "request_parameters": {},
                   "generation_timestamp": iso_ms(gen["unixMs"]), "prompt_timestamp": "",
                   "full_generation_data": full}  # fmt: skip
        metadata = {"workspace_hash": h}
    return {
        "event_id": str(uuid.uuid4()), "enqueued_at": iso_ms(now_ms()), "retry_count": "0",
        "platform": "cursor", "external_session_id": f"curs_{now_ms()}_0a1b2c3d",
        "hook_type": "DatabaseTrace", "event_type": "database_trace",
        "timestamp": iso_ms(now_ms()), "payload": json.dumps(payload),
        "metadata": json.dumps(metadata),
    }  # fmt: skip


def test_parallel_run_compare_reports_exactly_what_each_side_saw(
    bp_env: BlueplaneEnv, server, redis_client: sync_redis.Redis, tmp_path: Path
) -> None:
    folder = tmp_path / "projects" / "demo"
    folder.mkdir(parents=True)
    ws = UserDir(bp_env.cursor_dirs[0]).add_workspace(str(folder))
    h = workspace_hash(normalise_workspace_path(str(folder)))
    server()
    bp_env.cli("session", "start", "--workspace", str(folder), "--session-id", "s-1")

    # An extension event that arrives BEFORE Python reads the same generation.
    early = make_generation(now_ms(), "composer", "written first by the extension's view")
    redis_client.xadd("telemetry:events", extension_event(h, early), maxlen=10000)
    gens = [early] + [
        make_generation(now_ms() + i, "composer", f"generation {i}") for i in range(1, 7)
    ]
    ws.db.append_generations(gens)
    ids = [g["generationUUID"] for g in gens]
    wait_until(lambda: len(bp_env.traces()) == len(gens), what="Python's 7 generations stored")

    # The extension reports 1..4 (2 in camelCase, 3 with another description), skips 5 and 6,
    # and reports one generation Python never saw; plus three events it cannot use.
    unseen = make_generation(now_ms(), "composer", "only the extension saw this")
    sent = [
        extension_event(h, gens[1]),
        extension_event(h, gens[2], camel=True),
        extension_event(h, gens[3], description="a different description"),
        extension_event(h, gens[4]),
        extension_event(h, unseen),
    ]
    bad_json = extension_event(h, gens[5])
    bad_json["payload"] = '{"trace_type": "generation", "generation_id": '
    no_gen_id = extension_event(h, gens[6])
    no_gen_id["payload"] = json.dumps({"trace_type": "generation", "data_version": 17})
    no_workspace = extension_event(h, make_generation(now_ms(), "composer", "no workspace"))
    no_workspace["metadata"] = json.dumps({})
    for fields in [*sent, bad_json, no_gen_id, no_workspace]:
        redis_client.xadd("telemetry:events", fields, maxlen=10000)
    wait_until(
        lambda: (
            redis_client.xlen("telemetry:dead_letter") == 2
            and len(bp_env.traces()) == len(gens) + 2
        ),
        what="the extension's events stored or dead-lettered",
    )

    traces = {t["generation_id"]: t for t in bp_env.traces()}
    assert len(traces) == 9  # 7 generations + unseen + no_workspace: one trace each
    assert traces[ids[0]]["sources"] == ["extension", "python_monitor"]
    for gid in ids[1:5]:
        assert traces[gid]["sources"] == ["python_monitor", "extension"]
    for gid in ids[5:]:
        assert traces[gid]["sources"] == ["python_monitor"]
    assert traces[unseen["generationUUID"]]["sources"] == ["extension"]

    human = bp_env.cli("traces", "--limit", "100").stdout
    assert "python_monitor, extension" in human and "extension, python_monitor" in human

    proc = bp_env.cli("compare", "--json", check=False)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["matched"] == 5
    assert report["extension_events"] == 6 and report["python_events"] == 7
    assert report["missing_in_python"] == [
        {"workspace_hash": h, "generation_id": unseen["generationUUID"]}
    ]
    assert sorted(m["generation_id"] for m in report["missing_in_extension"]) == sorted(ids[5:])
    assert report["field_differences"] == [
        {"workspace_hash": h, "generation_id": ids[3], "field": "description",
         "python": gens[3]["textDescription"], "extension": "a different description"}
    ]  # fmt: skip
    assert report["unusable_extension_events"] == 3
    reasons = report["unusable_reasons"]
    assert reasons.get("no workspace_hash in metadata") == 1
    assert any("'payload' is not valid JSON" in r for r in reasons)
    assert any("payload.generation_id" in r for r in reasons)
    assert report["workspaces"][h] == {
        "matched": 5, "missing_in_python": 1, "missing_in_extension": 2,
        "extension_events": 6, "python_events": 7, "extension_sent": True, "python_sent": True,
    }  # fmt: skip
    assert set(report) >= {"since", "until", "extension_events", "python_events",
                           "unusable_extension_events", "matched", "missing_in_python",
                           "missing_in_extension", "field_differences", "workspaces"}  # fmt: skip

    # Scoped to another workspace: nothing from either side, and Python missed nothing.
    other = bp_env.cli("compare", "--json", "--workspace", "ffffffffffffffff", check=False)
    assert other.returncode == 0
    empty = json.loads(other.stdout)
    assert empty["extension_events"] == 0 and empty["matched"] == 0
    assert any("extension sent 0" in n for n in empty["notes"])
    human = bp_env.cli("compare", check=False)
    assert human.returncode == 1 and "missing in Python: 1" in human.stdout
    # Bad input: exit 2 with one line.
    bad = bp_env.cli("compare", "--since", "yesterday-ish", check=False)
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_compare_without_a_store_is_bad_input(bp_env: BlueplaneEnv) -> None:
    bp_env.home.mkdir(parents=True)
    proc = bp_env.cli("compare", "--json", check=False)
    assert proc.returncode == 2 and "no store" in proc.stderr


def test_compare_on_a_store_that_cannot_be_read_is_bad_input(bp_env: BlueplaneEnv) -> None:
    bp_env.home.mkdir(parents=True)
    (bp_env.home / "telemetry.db").write_bytes(b"this is not a database" * 100)
    proc = bp_env.cli("compare", check=False)
    assert proc.returncode == 2 and "cannot read the store" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
