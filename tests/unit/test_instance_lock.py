"""The single-instance lock against a real Redis: who holds it, stale holders, losing it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from blueplane.instance_lock import Holder, InstanceLock, InstanceLocked, pid_alive
from blueplane.keys import lock_key
from tests.conftest import async_wait_until, wait_until


def _alive(_pid: int) -> bool:
    return True


def _dead(_pid: int) -> bool:
    return False


async def test_second_lock_names_the_holder_and_release_frees_it(client, tmp_path: Path) -> None:
    first = InstanceLock(client, tmp_path)
    await first.acquire()
    assert 0 < await client.pttl(lock_key(tmp_path)) <= 15_000
    second = InstanceLock(client, tmp_path, is_alive=_alive)
    second.me = Holder(4242, first.me.host, "later", "t2")  # another live process, same host
    with pytest.raises(InstanceLocked) as err:
        await second.acquire()
    assert f"pid {first.me.pid} on {first.me.host} since {first.me.since}" in str(err.value)
    await first.release()
    await second.acquire()
    assert Holder.decode(await client.get(lock_key(tmp_path))) == second.me


async def test_other_home_has_its_own_lock(client, tmp_path: Path) -> None:
    await InstanceLock(client, tmp_path / "a").acquire()
    await InstanceLock(client, tmp_path / "b").acquire()


async def test_dead_holder_on_this_host_is_taken_over_at_once(client, tmp_path: Path) -> None:
    lock = InstanceLock(client, tmp_path, is_alive=_dead)
    stale = Holder(999_999, lock.me.host, "then", "old")
    await client.set(lock_key(tmp_path), stale.encode(), px=15_000)
    await lock.acquire()
    assert Holder.decode(await client.get(lock_key(tmp_path))) == lock.me


async def test_holder_on_another_host_is_respected(client, tmp_path: Path) -> None:
    """Its pid means nothing here: only the TTL frees it."""
    other = Holder(1, "another-host", "then", "x")
    await client.set(lock_key(tmp_path), other.encode(), px=15_000)
    with pytest.raises(InstanceLocked, match="pid 1 on another-host"):
        await InstanceLock(client, tmp_path, is_alive=_dead).acquire()


async def test_unreadable_lock_without_expiry_is_replaced(client, tmp_path: Path) -> None:
    await client.set(lock_key(tmp_path), "garbage")
    lock = InstanceLock(client, tmp_path)
    await lock.acquire()
    assert json.loads(await client.get(lock_key(tmp_path)))["pid"] == lock.me.pid


async def test_refresh_keeps_it_and_a_lost_lock_stops_the_holder(client, tmp_path: Path) -> None:
    lock = InstanceLock(client, tmp_path, ttl_s=1.0, refresh_s=0.05)
    await lock.acquire()
    stop, lost = asyncio.Event(), []
    refreshes = 0
    refresh = lock.refresh

    async def counted() -> bool:
        nonlocal refreshes
        refreshes += 1
        return await refresh()

    lock.refresh = counted  # type: ignore[method-assign]
    task = asyncio.create_task(lock.run(stop, lost.append))
    t0 = asyncio.get_running_loop().time()
    # 30 refreshes 50 ms apart outlast the 1 s TTL: only the refreshes keep it
    await async_wait_until(lambda: refreshes >= 30, "30 refreshes")
    assert asyncio.get_running_loop().time() - t0 > lock.ttl_ms / 1000
    assert Holder.decode(await client.get(lock_key(tmp_path))) == lock.me
    thief = Holder(7, "elsewhere", "now", "t")
    await client.set(lock_key(tmp_path), thief.encode(), px=15_000)
    await asyncio.wait_for(task, timeout=5)  # ends by itself once it sees the thief
    assert lost and "pid 7 on elsewhere" in lost[0]
    assert not lock.held
    await lock.release()  # not ours: left alone
    assert Holder.decode(await client.get(lock_key(tmp_path))) == thief


async def test_expired_lock_is_taken_back_by_its_holder(client, tmp_path: Path) -> None:
    """Redis away longer than the TTL: the key expired, nobody else took it."""
    lock = InstanceLock(client, tmp_path)
    await lock.acquire()
    await client.delete(lock_key(tmp_path))
    assert await lock.refresh()
    assert Holder.decode(await client.get(lock_key(tmp_path))) == lock.me


def test_pid_alive_sees_a_killed_unreaped_process_as_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(proc.pid)
        proc.kill()
        if Path("/proc").is_dir():  # zombie until reaped: not running
            wait_until(lambda: not pid_alive(proc.pid), what="the process gone")
    finally:
        proc.wait()
    assert not pid_alive(proc.pid)
