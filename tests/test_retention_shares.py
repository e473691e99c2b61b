"""Retention and share links: a link revoked or expired more than retention_days ago goes, a
live one or one that died recently stays.

Both backends (tests/backends.py); time is the store's clock following trio's mock clock.
"""

from __future__ import annotations

import trio

from daemon.retention import BATCH_ROWS, run_retention
from daemon.tokens import hash_token

from .conftest import fake_wall

DAY = 86400.0


async def _link(store, task_id: str, user_id: int, name: str, *, lives_s: float) -> str:
    link = await store.add_share_link(
        task_id, user_id, hash_token(name), expires_at=fake_wall() + lives_s, live_cap=BATCH_ROWS * 2
    )
    assert link is not None
    return link.id


async def _dead_links(store, task_id: str, user_id: int, count: int) -> set[str]:
    """``count`` links that expire in a minute, written in one transaction (only their columns
    matter; ``add_share_link`` would take a write each)."""
    p, now = store.queries.RETENTION.p, fake_wall()
    ids = [f"sh_dead{i}" for i in range(count)]
    sql = (
        "INSERT INTO share_links (id, task_id, user_id, token_hash, created_at, expires_at) "
        f"VALUES ({p}, {p}, {p}, {p}, {p}, {p})"
    )

    def write(conn) -> None:
        for share_id in ids:
            conn.execute(sql, (share_id, task_id, user_id, hash_token(share_id), now, now + 60))

    await store._write(write)
    return set(ids)


async def _link_ids(store, task_id: str) -> set[str]:
    return {link.id for link in await store.list_share_links(task_id)}


async def test_retention_removes_links_dead_for_longer_than_retention_days_only(store, alice, autojump_clock):
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    revoked_old = await _link(store, task.id, alice.id, "revoked-old", lives_s=400 * DAY)
    await store.revoke_share_link(task.id, revoked_old)
    expired_old = await _link(store, task.id, alice.id, "expired-old", lives_s=3600)
    expired_lately = await _link(store, task.id, alice.id, "expired-lately", lives_s=35 * DAY)
    live = await _link(store, task.id, alice.id, "live", lives_s=400 * DAY)
    await trio.sleep(40 * DAY)
    revoked_young = await _link(store, task.id, alice.id, "revoked-young", lives_s=DAY)
    await store.revoke_share_link(task.id, revoked_young)

    report = await run_retention(store, 30)

    assert report.removed["share_links"] == 2
    # Dead for 5 days, or revoked today: kept (counted from when it died, not when it was made).
    assert await _link_ids(store, task.id) == {expired_lately, live, revoked_young}
    assert {revoked_old, expired_old}.isdisjoint(await _link_ids(store, task.id))
    assert (await store.share_link_by_token_hash(hash_token("live"))).id == live  # still opens it
    assert (await run_retention(store, 30)).removed["share_links"] == 0  # nothing left to do


async def test_many_dead_links_go_in_batches_and_zero_days_keeps_them(store, alice, autojump_clock):
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    dead = await _dead_links(store, task.id, alice.id, BATCH_ROWS + 3)
    await trio.sleep(31 * DAY)
    assert (await run_retention(store, 0)).removed.get("share_links", 0) == 0
    assert await _link_ids(store, task.id) == dead

    report = await run_retention(store, 30)

    assert report.removed["share_links"] == BATCH_ROWS + 3
    assert report.batches >= 2  # never more than BATCH_ROWS rows in one write
    assert await _link_ids(store, task.id) == set()
