"""Secret key rotation: a new key in front, `rotate-keys`, the old key removed, a restart, and
everything stored still decrypts; keys that cannot decrypt what is stored are refused at start.

Both backends (tests/backends.py): the real daemon, restarted on the same store; the sweep is
asked for over the control socket, as `agentctl rotate-keys` does.
"""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from control.client import ControlClient
from daemon.config import Settings
from daemon.errors import ConfigError
from daemon.notify.vapid import vapid_keys
from daemon.service import Daemon
from daemon.supervisor.runner import NoopRunner

from .fakes import phone
from .fakes.phone import running_daemon

OLD, NEW, OTHER = (Fernet.generate_key().decode() for _ in range(3))
TOKEN = "gho_the_users_github_token"


async def _store_secrets(server) -> tuple[int, bytes]:
    """A user's GitHub token and a webhook secret, encrypted by the daemon; the VAPID key's
    public half (made on first use)."""
    user, _ = await server.user("alice")
    box = server.daemon.secrets
    await server.store.set_github_token(user.id, box.encrypt(TOKEN))
    p = server.store.queries.SECRETS.p
    sql = (
        "INSERT INTO notify_targets (id, user_id, kind, url, secret_enc, events, created_at) "
        f"VALUES ('wh_1', {p}, 'webhook', 'https://example.com/hook', {p}, '[]', 0)"
    )
    secret = box.encrypt("whsec_1")
    await server.store._write(lambda conn: conn.execute(sql, (user.id, secret)))
    return user.id, (await vapid_keys(server.store, box)).application_server_key.encode()


async def _rotate(server) -> dict:
    async with await ControlClient.connect(server.daemon.settings.control_socket_path) as client:
        return await client.call("keys.rotate")


async def _everything_decrypts(server, user_id: int, vapid_public: bytes) -> None:
    assert await server.daemon._github_token(user_id) == TOKEN
    box, store = server.daemon.secrets, server.store
    rows = await store._read(lambda conn: conn.execute("SELECT secret_enc FROM notify_targets").fetchall())
    assert [box.decrypt(bytes(row[0])) for row in rows] == ["whsec_1"]
    from daemon.notify import vapid

    vapid._CACHE.clear()  # read it from the store again, with these keys
    assert (await vapid_keys(store, box)).application_server_key.encode() == vapid_public


async def _refused(tmp_path, *keys: str) -> str:
    settings = Settings(data_dir=tmp_path / "data", secret_keys=list(keys), store=phone.STORE_URL)
    daemon = Daemon(settings, runner=NoopRunner())
    with pytest.raises(ConfigError) as refused:
        await daemon.serve()
    return refused.value.message


async def test_a_new_key_in_front_rotate_then_the_old_key_removed(tmp_path):
    async with running_daemon(tmp_path, secret_keys=[OLD]) as server:
        user_id, vapid_public = await _store_secrets(server)
    async with running_daemon(tmp_path, secret_keys=[NEW, OLD]) as server:
        await _everything_decrypts(server, user_id, vapid_public)
        first = await _rotate(server)
        assert {name: counts["rotated"] for name, counts in first["columns"].items()} == {
            "users.github_token_enc": 1,
            "notify_targets.secret_enc": 1,
            "cluster_values.value": 1,
        }
        assert first["old_keys_retirable"] is True
        again = await _rotate(server)  # idempotent: nothing left to rotate
        assert all(c["rotated"] == 0 and c["current"] == 1 for c in again["columns"].values())
        assert again["old_keys_retirable"] is True
    async with running_daemon(tmp_path, secret_keys=[NEW]) as server:  # the old key retired
        await _everything_decrypts(server, user_id, vapid_public)


async def test_keys_that_cannot_decrypt_what_is_stored_are_refused_at_start(tmp_path, backend):
    async with running_daemon(tmp_path, secret_keys=[OLD]) as server:
        await _store_secrets(server)
    message = await _refused(tmp_path, OTHER)
    assert "AGENTD_SECRET_KEYS" in message and OTHER not in message and "\n" not in message
    if backend == "sqlite":  # a shared store's nodes are told first to copy the cluster's keys
        assert "cannot decrypt the secrets this store holds (1 users' GitHub tokens, 1 webhook" in message
        assert "agentctl rotate-keys" in message


async def test_an_old_key_removed_before_the_sweep_is_refused(tmp_path):
    async with running_daemon(tmp_path, secret_keys=[OLD]) as server:
        await _store_secrets(server)
    async with running_daemon(tmp_path, secret_keys=[NEW, OLD]):
        pass  # the new key in front, and no rotate-keys
    message = await _refused(tmp_path, NEW)
    assert "the key that encrypted them is missing" in message
    assert "run `agentctl rotate-keys`, and only then remove it" in message
