"""Encryption at rest for secrets the daemon keeps (GitHub access tokens).

Keys are Fernet keys (AES-128-CBC + HMAC-SHA256, urlsafe base64), newest first, taken from the
``secret_keys`` setting (env ``AGENTD_SECRET_KEYS``, comma-separated), else from the key file
(``secret_key_file``, one key a line, newest first; default ``<data_dir>/secret.key``, created
with mode 0600 when missing). Rotation: put a new key first and keep the old ones after it; new
secrets use the first key, old ones still decrypt, and ``rotate`` re-encrypts with the newest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .config import Settings
from .errors import ConfigError, PermanentError


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
                "(was a key removed from the rotation?)", code="secret_undecryptable",
            ) from None

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt with the newest key (for a rotation sweep)."""
        return self._box.rotate(token)


def load_secret_box(settings: Settings) -> SecretBox:
    """The box for these settings: configured keys, else the key file (made if missing).

    Blocking file I/O, a few hundred bytes: call at startup.
    """
    if settings.secret_keys:
        return SecretBox(settings.secret_keys)
    path = settings.secret_key_file or settings.data_dir / "secret.key"
    return SecretBox(_read_or_create_key_file(path, create=settings.secret_key_file is None))


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
