"""What the daemons sharing a PostgreSQL store must agree on: their secret keys, and each user's
rate-limit buckets. Two stores ("nodes") on one database, as two daemons would have them."""

from __future__ import annotations

import pytest
import trio
from cryptography.fernet import Fernet

pytest.importorskip("psycopg_pool", reason="the PostgreSQL store needs psycopg-pool")

from daemon.config import Settings
from daemon.errors import ConfigError, RateLimited
from daemon.rate_limit import RateLimiter, SharedRateLimiter, task_create_limiter
from daemon.secrets import KEY_CHECK, SecretBox, check_cluster_key
from daemon.store import SqliteStore

from .test_store_pg import close_all, open_nodes

OLD, NEW, OTHER = (Fernet.generate_key().decode() for _ in range(3))


def settings(tmp_path, *keys: str) -> Settings:
    return Settings(data_dir=tmp_path, secret_keys=list(keys))


async def test_a_node_with_other_keys_refuses_to_start_and_says_what_to_copy(pg_dsn, tmp_path):
    a, b = await open_nodes(pg_dsn)
    await check_cluster_key(a, SecretBox([OLD]), settings(tmp_path, OLD), "node-a")  # the first
    await check_cluster_key(b, SecretBox([OLD]), settings(tmp_path, OLD), "node-b")  # the same keys
    with pytest.raises(ConfigError) as refused:
        await check_cluster_key(b, SecretBox([OTHER]), settings(tmp_path, OTHER), "node-b")
    message = refused.value.message
    assert message.startswith(
        "this node's secret key differs from the one the cluster's data was encrypted with: copy"
    )
    assert "AGENTD_SECRET_KEYS" in message and "\n" not in message and OTHER not in message
    file_keyed = Settings(data_dir=tmp_path)  # no keys set: the key file in the data dir
    with pytest.raises(ConfigError, match=f"the key file {tmp_path / 'secret.key'}"):
        await check_cluster_key(b, SecretBox([OTHER]), file_keyed, "node-b")
    # What the store keeps is a check, never a key.
    stored = await a.cluster_value(KEY_CHECK, b"unused", node="x")
    assert OLD.encode() not in stored and SecretBox([OLD]).reads_key_check(stored) is True
    await close_all([a, b])


async def test_a_rotation_moves_the_check_to_the_newest_key(pg_dsn, tmp_path):
    a, b = await open_nodes(pg_dsn)
    await check_cluster_key(a, SecretBox([OLD]), settings(tmp_path, OLD), "node-a")
    # Step 1: the new key after the old one everywhere (it decrypts, nothing is written with it).
    await check_cluster_key(b, SecretBox([OLD, NEW]), settings(tmp_path, OLD, NEW), "node-b")
    # Step 2: the new key first: the check is made again with it; old-key-only nodes now refuse.
    await check_cluster_key(b, SecretBox([NEW, OLD]), settings(tmp_path, NEW, OLD), "node-b")
    stored = await a.cluster_value(KEY_CHECK, b"unused", node="x")
    assert SecretBox([NEW]).reads_key_check(stored) is True
    with pytest.raises(ConfigError, match="differs"):
        await check_cluster_key(a, SecretBox([OLD]), settings(tmp_path, OLD), "node-a")
    # Step 3: the old key gone.
    await check_cluster_key(a, SecretBox([NEW]), settings(tmp_path, NEW), "node-a")
    await close_all([a, b])


async def test_a_store_only_this_daemon_writes_keeps_no_check(tmp_path):
    store = await SqliteStore.open(tmp_path / "data")
    try:
        await check_cluster_key(store, SecretBox([OTHER]), settings(tmp_path, OTHER), "solo")
        assert await store.cluster_value(KEY_CHECK, b"nothing before", node="x") == b"nothing before"
    finally:
        await store.aclose()


async def test_one_users_bucket_is_shared_by_every_node(pg_dsn, autojump_clock):
    a, b = await open_nodes(pg_dsn)
    limits = [SharedRateLimiter(store, "task_creates", per_min=60, burst=4) for store in (a, b)]
    refused: list[RateLimited] = []

    async def create(limiter: SharedRateLimiter) -> None:
        try:
            await limiter.check(7, "tasks created")
        except RateLimited as exc:
            refused.append(exc)

    async with trio.open_nursery() as nursery:  # ten at once, five from each node
        for i in range(10):
            nursery.start_soon(create, limits[i % 2])
    assert len(refused) == 6  # the burst of 4, however the requests were spread
    assert all(exc.retry_after == 1 for exc in refused)
    await limits[0].check(8, "tasks created")  # another user's bucket is their own
    await trio.sleep(1)  # one token a second, on the store's clock
    await limits[1].check(7, "tasks created")
    with pytest.raises(RateLimited, match="too many tasks created; retry in 1 s"):
        await limits[0].check(7, "tasks created")
    await close_all([a, b])


async def test_the_create_limiter_is_in_the_store_only_when_it_is_shared(pg_dsn, tmp_path):
    (shared,) = await open_nodes(pg_dsn, 1)
    solo = await SqliteStore.open(tmp_path / "data")
    try:
        config = Settings(data_dir=tmp_path)
        assert isinstance(task_create_limiter(config, shared), SharedRateLimiter)
        assert isinstance(task_create_limiter(config, solo), RateLimiter)
    finally:
        await solo.aclose()
        await close_all([shared])
