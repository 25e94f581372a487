"""Two laptops with identical Cursor paths publishing to ONE Redis (a team's shared Redis).

Both ``blueplane run`` producers read the same Cursor folder (so identical database paths,
hence identical watermark, revision and dedup keys) from two homes (two machine ids), one
after the other. With ``redis.key_namespace: machine`` each machine publishes all its items,
each once, tagged with its machine id. Without it (the legacy default), the second machine
finds the first one's watermark and dedup keys and skips every existing item: the documented
limit that the namespace removes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import redis as sync_redis

from tests.conftest import BlueplaneEnv, ServerProcess, wait_until
from tests.fixtures.cursor_db import UserDir
from tests.integration.reliability_support import project, stream_trace_fields

pytestmark = pytest.mark.integration


def _laptop(tmp_path: Path, name: str, user_dir: Path, url: str, ns: str) -> BlueplaneEnv:
    env = BlueplaneEnv(home=tmp_path / name, cursor_dirs=[user_dir], redis_url=url)
    env.extra.update(BLUEPLANE_FAST_PATH__ENABLED="false", BLUEPLANE_REDIS__KEY_NAMESPACE=ns)
    return env


def _generations_by_machine(client: sync_redis.Redis) -> Counter[tuple[str, str]]:
    """(machine_id, generation id) → how often it is on the stream."""
    seen: Counter[tuple[str, str]] = Counter()
    for fields in stream_trace_fields(client):
        payload = json.loads(fields["payload"])
        if payload.get("trace_type") == "generation":
            machine = json.loads(fields["metadata"])["machine_id"]
            seen[(machine, payload["generation_id"])] += 1
    return seen


def _publish_once(env: BlueplaneEnv, folder: str, session: str) -> ServerProcess:
    sp = ServerProcess(env).start()
    env.cli("session", "start", "--workspace", folder, "--session-id", session)
    return sp


@pytest.mark.parametrize("namespace", ["machine", ""], ids=["namespaced", "legacy"])
def test_two_machines_with_identical_paths_on_one_redis(
    tmp_path: Path, redis_url: str, redis_client: sync_redis.Redis, namespace: str
) -> None:
    user_dir = tmp_path / "Cursor" / "User"
    (user_dir / "workspaceStorage").mkdir(parents=True)
    (user_dir / "globalStorage").mkdir(parents=True)
    ws = UserDir(user_dir).add_workspace(project(tmp_path, "p"))
    gens = {g["generationUUID"] for g in ws.db.append_generations(5)}
    a = _laptop(tmp_path, "laptop-a", user_dir, redis_url, namespace)
    b = _laptop(tmp_path, "laptop-b", user_dir, redis_url, namespace)
    sa = _publish_once(a, ws.folder_path, "s-a")
    mid_a = (a.home / "machine_id").read_text().strip()
    wait_until(
        lambda: {g for m, g in _generations_by_machine(redis_client) if m == mid_a} == gens,
        timeout=30, what="laptop A's 5 generations",
    )  # fmt: skip
    assert sa.stop() == 0
    sb = _publish_once(b, ws.folder_path, "s-b")
    mid_b = (b.home / "machine_id").read_text().strip()
    assert mid_a != mid_b
    # a new item, so there is something B publishes in both modes: wait on it, not a sleep
    fresh = {g["generationUUID"] for g in ws.db.append_generations(1)}
    wait_until(
        lambda: fresh <= {g for m, g in _generations_by_machine(redis_client) if m == mid_b},
        timeout=30, what="laptop B's new generation",
    )  # fmt: skip
    components = json.loads((b.home / "status.json").read_text()).get("components", {})
    assert sb.stop() == 0
    # a namespaced producer without the fast path does not trim for the others
    assert ("stream_trimmer" in components) == (not namespace)
    seen = _generations_by_machine(redis_client)
    by_b = {g for m, g in seen if m == mid_b}
    if namespace:
        # every machine's items all arrive, each once, tagged with its machine id
        assert by_b == gens | fresh
        assert {g for m, g in seen if m == mid_a} == gens
        assert max(seen.values()) == 1
        assert redis_client.keys("blueplane:watermarks:*") == []  # nothing under legacy names
        assert redis_client.keys(f"blueplane:{mid_b}:watermarks:*")
        assert redis_client.get(f"blueplane:{mid_b}:sessions:last_id") is not None
    else:
        # the limit: B shares A's watermark and dedup keys and silently skips A's 5 items
        assert by_b == fresh
        assert redis_client.keys("blueplane:watermarks:*")
