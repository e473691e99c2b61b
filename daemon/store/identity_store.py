"""The store's interface to users and their API tokens (a part of ``StoreBase``).

Every method runs one short transaction through the backend's runners, with the SQL of the
backend's ``queries`` module (users and tokens; GitHub sign-in in ``identity_queries``). A
GitHub token is stored as the caller encrypted it, never in plain text.

Cancellation: as the runners' (a read stops being waited for; a write is never abandoned).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar

from .models import User


class IdentityStore:
    """Users and tokens; mixed into ``StoreBase``, which provides the runners."""

    queries: ClassVar[ModuleType]
    now: Callable[[], float]
    _read: Any
    _write: Any

    # -- users and tokens -----------------------------------------------------------------------

    async def upsert_user(self, login: str, **fields: Any) -> User:
        now = self.now()
        return await self._write(lambda conn: self.queries.upsert_user(conn, login, now, **fields))

    async def user_by_id(self, user_id: int) -> User | None:
        return await self._read(lambda conn: self.queries.user_by_id(conn, user_id))

    async def set_github_token(self, user_id: int, token_enc: bytes | None) -> None:
        """Store the user's GitHub token, already encrypted by the caller (never plain text)."""
        now = self.now()
        await self._write(lambda conn: self.queries.set_github_token(conn, user_id, token_enc, now))

    async def github_token_enc(self, user_id: int) -> bytes | None:
        return await self._read(lambda conn: self.queries.github_token_enc(conn, user_id))

    async def user_by_login(self, login: str) -> User | None:
        return await self._read(lambda conn: self.queries.user_by_login(conn, login))

    async def user_by_github_id(self, github_id: int) -> User | None:
        return await self._read(lambda conn: self.queries.user_by_github_id(conn, github_id))

    async def sign_in_github(
        self, github_id: int, login: str, *, name: str | None, token_enc: bytes | None
    ) -> User:
        """The account of GitHub user ``github_id``, found by that id alone (made if none, as
        ``login`` or ``<login>-gh<id>``), with its encrypted token; see ``identity_queries``.
        Raises ``Forbidden`` (``account_disabled``, ``login_taken``), writing nothing."""
        now = self.now()
        return await self._write(
            lambda conn: self.queries.sign_in_github(conn, github_id, login, name, token_enc, now)
        )

    async def link_github(self, login: str, github_id: int, *, operator: bool = False) -> User:
        """An operator links the account ``login`` to GitHub user ``github_id`` (``operator``:
        and makes it an operator)."""
        now = self.now()
        return await self._write(lambda conn: self.queries.link_github(conn, login, github_id, operator, now))

    async def list_users(self) -> list[User]:
        return await self._read(self.queries.list_users)

    async def add_token(
        self, user_id: int, token_hash: str, *, expires_at: float | None = None, label: str | None = None
    ) -> None:
        now = self.now()
        await self._write(
            lambda conn: self.queries.insert_token(conn, user_id, token_hash, now, expires_at, label)
        )

    async def user_by_token_hash(self, token_hash: str) -> User | None:
        now = self.now()
        return await self._read(lambda conn: self.queries.user_by_token_hash(conn, token_hash, now))

    async def revoke_user(self, login: str) -> int:
        now = self.now()
        return await self._write(lambda conn: self.queries.revoke_user(conn, login, now))

    async def revoke_token(self, token_hash: str) -> bool:
        """Revoke the one token with this hash (a sign-out); False when none was live."""
        now = self.now()
        return await self._write(lambda conn: self.queries.revoke_token(conn, token_hash, now))
