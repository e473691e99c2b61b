"""Encryption at rest for secrets the daemon keeps (GitHub access tokens).

Keys are Fernet keys (AES-128-CBC + HMAC-SHA256, urlsafe base64), newest first, taken from the
``secret_keys`` setting (env ``AGENTD_SECRET_KEYS``, comma-separated), else from the key file
(``secret_key_file``, one key a line, newest first; default ``<data_dir>/secret.key``, created
with mode 0600 when missing). Rotation: put a new key first and keep the old ones after it; new
secrets use the first key, old ones still decrypt, and ``rotate`` re-encrypts with the newest
(``agentctl rotate-keys`` does it to every stored secret: ``key_rotation``).

Daemons sharing a store must share the keys: what one encrypts, the others decrypt. The store
keeps a key check (a known text encrypted with a node's newest key, never a key); a node whose
keys cannot decrypt it refuses to start (``check_cluster_key``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .config import Settings
from .errors import ConfigError, PermanentError
from .store import Store

#: Where the store keeps the key check, and the text it encrypts.
KEY_CHECK = "secret_key_check"
_KEY_CHECK_TEXT = b"agentd: the keys of the daemons sharing this store"


class SecretBox:
    """Encrypts and decrypts small secrets; never logs or repr()s them."""

    def __init__(self, keys: Iterable[str | bytes]) -> None:
        fernets = []
        for index, key in enumerate(keys):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                raise ConfigError(
                    f"secret key #{index + 1} is not a Fernet key (32 url-safe base64 bytes); "
                    "make one with: python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'"
                ) from None
        if not fernets:
            raise ConfigError("no secret key configured")
        self._fernets = fernets
        self._box = MultiFernet(fernets)

    def __repr__(self) -> str:
        return "SecretBox(<keys hidden>)"

    def encrypt(self, plain: str) -> bytes:
        return self._box.encrypt(plain.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._box.decrypt(token).decode()
        except InvalidToken:
            raise PermanentError(
                "a stored secret cannot be decrypted with the configured keys "
                "(was a key removed from the rotation?)",
                code="secret_undecryptable",
            ) from None

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt with the newest key (for a rotation sweep)."""
        return self._box.rotate(token)

    def key_check(self, *, oldest: bool = False) -> bytes:
        """A known text encrypted with the newest key (``oldest``: with the oldest): tells
        another node's keys from these."""
        return (self._fernets[-1] if oldest else self._box).encrypt(_KEY_CHECK_TEXT)

    def reads_key_check(self, token: bytes) -> bool | None:
        """True: ``token`` is a key check made with the newest key; False: with an older one of
        these keys; None: with none of them."""
        return self.made_with_newest(token, expect=_KEY_CHECK_TEXT)

    def made_with_newest(self, token: bytes, *, expect: bytes | None = None) -> bool | None:
        """True: ``token`` was encrypted with the newest key; False: with an older one of these
        keys; None: with none of them (or it does not hold ``expect``, when given)."""
        newest, *older = self._fernets
        for fernet, verdict in ((newest, True), *((f, False) for f in older)):
            try:
                plain = fernet.decrypt(token)
            except InvalidToken:
                continue
            return verdict if expect is None or plain == expect else None
        return None


def load_secret_box(settings: Settings) -> SecretBox:
    """The box for these settings: configured keys, else the key file (made if missing).

    Blocking file I/O, a few hundred bytes: call at startup.
    """
    if settings.secret_keys:
        return SecretBox(settings.secret_keys)
    path = settings.secret_key_file or settings.data_dir / "secret.key"
    return SecretBox(_read_or_create_key_file(path, create=settings.secret_key_file is None))


def key_source(settings: Settings) -> str:
    """Where these settings take the keys from, as an operator finds them."""
    if settings.secret_keys:
        return "AGENTD_SECRET_KEYS (the secret_keys setting)"
    return f"the key file {settings.secret_key_file or settings.data_dir / 'secret.key'}"


async def check_cluster_key(store: Store, box: SecretBox, settings: Settings, node: str) -> None:
    """On a store several daemons share, refuse to go on with keys that differ from theirs.

    The first node to start stores its key check; a node whose keys cannot decrypt the stored
    one raises ``ConfigError`` saying what to copy where. A check made with an older key of this
    node is replaced by one made with its newest (a rotation: see the README), unless another
    node replaced it meanwhile. A store only this daemon writes holds no check.
    """
    if not store.shared:
        return
    stored = await store.cluster_value(KEY_CHECK, box.key_check(), node=node)
    verdict = box.reads_key_check(stored)
    if verdict is None:
        raise ConfigError(
            "this node's secret key differs from the one the cluster's data was encrypted with: "
            f"copy the keys of a node of the cluster (its AGENTD_SECRET_KEYS, or its key file) "
            f"to {key_source(settings)} here, the same keys in the same order on every node"
        )
    if verdict is False:
        await store.swap_cluster_value(KEY_CHECK, stored, box.key_check(), node=node)


def _read_or_create_key_file(path: Path, *, create: bool) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        if not create:
            raise ConfigError(f"secret_key_file {path}: not found") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        # O_EXCL: two starts racing never write two different keys.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return _read_or_create_key_file(path, create=False)
        with os.fdopen(fd, "wb") as file:
            file.write(key + b"\n")
        return [key.decode()]
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not keys:
        raise ConfigError(f"secret_key_file {path}: holds no key")
    return keys
