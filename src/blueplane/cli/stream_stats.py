"""What ``blueplane status`` shows of Redis: stream and dead-letter lengths, the fast-path
group's pending entries and lag, active sessions — each read through its owner's function."""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from blueplane.broker import REDIS_DOWN, make_client, resolve_client_url
from blueplane.config import Settings
from blueplane.cursor.session_monitor import SessionMonitor
from blueplane.fast_path.consumer import consumer_stats, group_stats
from blueplane.fast_path.dead_letters import dead_letter_count
from blueplane.urls import mask_url


async def stream_stats(settings: Settings) -> dict[str, Any]:
    """The stream statistics; ``reachable: false`` and ``error`` when Redis does not answer."""
    url = await resolve_client_url(settings)
    client = make_client(url, settings.redis)
    stream, fp = settings.redis.stream, settings.fast_path
    stats: dict[str, Any] = {"url": mask_url(url), "reachable": False}
    try:
        stats["stream_length"] = int(await client.xlen(stream))
        stats["dead_letter_length"] = await dead_letter_count(client, fp.dead_letter_stream)
        stats["reachable"] = True
        stats.update(await group_stats(client, stream, fp.group))
        stats["consumers"] = await consumer_stats(client, stream, fp.group)
        stats["active_sessions"] = await SessionMonitor.stored_session_count(
            client, settings.keys()
        )
    except (*REDIS_DOWN, RedisError) as exc:
        stats["error"] = str(exc)
    finally:
        await client.aclose()
    return stats
