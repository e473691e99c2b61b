"""What the daemons sharing a PostgreSQL store must agree on: their secret keys, each user's
rate-limit buckets, and GitHub sign-ins in progress. Two stores ("nodes") on one database, as
two daemons would have them, and two whole daemons for a sign-in that crosses them."""

from __future__ import annotations

import pytest
import trio
from cryptography.fernet import Fernet

pytest.importorskip("psycopg_pool", reason="the PostgreSQL store needs psycopg-pool")

import psycopg

from daemon.config import Settings
from daemon.errors import ConfigError, RateLimited
from daemon.rate_limit import RateLimiter, SharedRateLimiter, task_create_limiter
from daemon.secrets import KEY_CHECK, SecretBox, check_cluster_key
from daemon.store import SqliteStore
from daemon.tokens import hash_token

from .fakes.github_oauth import FakeGitHubOAuth
from .fakes.phone import running_daemon
from .test_oauth_github import APP, on, pkce, query, redeem, sign_in
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


# -- GitHub sign-in: logins in progress and one-time codes, in the store ------------------------


async def test_a_one_time_value_is_taken_once_by_one_node_before_its_deadline(pg_dsn, autojump_clock):
    a, b = await open_nodes(pg_dsn)
    assert await a.put_one_time("code", "h1", "v1", ttl_s=120, limit=3)
    taken: list[str | None] = []

    async def take(store) -> None:
        taken.append(await store.take_one_time("code", "h1"))

    async with trio.open_nursery() as nursery:  # ten at once, five from each node
        for i in range(10):
            nursery.start_soon(take, (a, b)[i % 2])
    assert sorted(taken, key=str) == [None] * 9 + ["v1"]
    assert await b.put_one_time("code", "h2", "v2", ttl_s=120, limit=3)
    await trio.sleep(120)  # on the store's clock, whichever node reads it
    assert await a.take_one_time("code", "h2") is None
    # The bound on what is kept is the cluster's.
    assert await a.put_one_time("code", "h3", "v3", ttl_s=120, limit=2)
    assert await b.put_one_time("code", "h4", "v4", ttl_s=120, limit=2)
    assert not await a.put_one_time("code", "h5", "v5", ttl_s=120, limit=2)
    await close_all([a, b])


@pytest.fixture
async def two_nodes(pg_dsn, tmp_path):
    """Two daemons on one database (the same keys), signing in with one fake GitHub."""
    github = FakeGitHubOAuth(client_id="cid", client_secret="csecret")
    async with trio.open_nursery() as nursery:
        url = await nursery.start(github.serve)
        config = dict(
            store=pg_dsn,
            secret_keys=[OLD],
            github_oauth_url=url,
            github_api=url,
            github_client_id="cid",
            github_client_secret="csecret",
            app_redirects=(APP,),
            oauth_login_ttl_s=60,
        )
        async with (
            running_daemon(tmp_path / "a", **config) as a,
            running_daemon(tmp_path / "b", **config) as b,
        ):
            yield a, b, github
        nursery.cancel_scope.cancel()


async def test_a_sign_in_begun_on_one_node_is_finished_on_another(two_nodes):
    a, b, github = two_nodes
    answer = await sign_in(a, github, callback_on=b)  # GitHub's redirect back reaches node B
    assert answer["state"] == "s1" and "code" in answer
    body = await redeem(a, answer)  # B's code, redeemed on A
    assert body["user"]["login"] == "octocat"
    async with b.client(body["token"]) as phone:
        assert (await phone.get("/api/tasks")).status_code == 200


async def test_a_code_is_redeemed_once_whichever_nodes_it_reaches(two_nodes):
    a, b, github = two_nodes
    answer = await sign_in(b, github, callback_on=a)
    await redeem(b, answer)
    await redeem(a, answer, ok=False)  # the second use, on the other node
    answer = await sign_in(a, github, callback_on=b)
    codes: list[int] = []

    async def post(node) -> None:
        async with node.client() as phone:
            issued = await phone.post(
                "/auth/token", json={"code": answer["code"], "code_verifier": answer["_verifier"]}
            )
            codes.append(issued.status_code)

    async with trio.open_nursery() as nursery:  # four at once, two on each node
        for node in (a, b, a, b):
            nursery.start_soon(post, node)
    assert sorted(codes) == [200, 400, 400, 400]


async def test_a_replayed_state_is_refused_on_every_node(two_nodes, pg_dsn):
    a, b, _ = two_nodes
    _, challenge = pkce()
    async with a.client() as browser:
        start = await browser.get(
            "/auth/github/login", params={"app_redirect": APP, "code_challenge": challenge}
        )
        back_from_github = (await browser.get(start.headers["Location"])).headers["Location"]
        state = query(back_from_github)["state"]
        with psycopg.connect(pg_dsn) as conn:  # the store keeps the state's hash, not the state
            assert conn.execute("SELECT key FROM one_time_values").fetchall() == [(hash_token(state),)]
        assert (await browser.get(on(b, back_from_github))).status_code == 302
        for node in (b, a):
            replay = await browser.get(on(node, back_from_github))
            assert replay.status_code == 400 and replay.json()["error"]["code"] == "invalid_state"
