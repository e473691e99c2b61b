"""What an operator does with accounts: add one (with an API token), link it to a GitHub user,
revoke its tokens, list them; and the logins shown next to tasks."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BadArguments
from ..store import Revoked, Task, User
from ..tokens import hash_token, new_token

if TYPE_CHECKING:
    from ..services import Services

TOKEN_TTL_S = 365 * 24 * 3600  # an operator-made token lasts a year
MAX_LOGIN = 64


@dataclass(frozen=True)
class NewUser:
    """An account and its new API token (shown this once; only its hash is kept)."""

    login: str
    user_id: int
    token: str


async def add_user(svc: Services, login: str, *, operator: bool = False) -> NewUser:
    """Make (or update) the account ``login`` and give it a new token, valid a year.

    ``BadArguments``: a login other than letters, digits, '-' and '_' (64 at most); or asking
    to make an account made by a GitHub sign-in an operator: whoever signed in with GitHub as
    ``login`` need not be who the operator thinks, so that takes ``link_user`` with the id.
    """
    login = login.strip()
    if not login or len(login) > MAX_LOGIN or not login.replace("-", "").replace("_", "").isalnum():
        raise BadArguments(f"invalid login {login!r}: letters, digits, '-' and '_' only")
    existing = await svc.store.user_by_login(login)
    if operator and existing is not None and existing.github_id is not None and not existing.is_operator:
        raise BadArguments(
            f"{login} is the account of GitHub user id {existing.github_id}, made by a GitHub "
            f"sign-in; to make it an operator, confirm that id: agentctl user-link {login} "
            f"{existing.github_id} --operator"
        )
    user = await svc.store.upsert_user(login, is_operator=operator)
    token = new_token()
    await svc.store.add_token(
        user.id, hash_token(token), expires_at=time.time() + TOKEN_TTL_S, label="agentctl"
    )
    return NewUser(user.login, user.id, token)


async def link_user(svc: Services, login: str, github_id: int, *, operator: bool = False) -> User:
    """Link the account ``login`` to GitHub user ``github_id`` (``operator``: and make it an
    operator); the only way a GitHub sign-in reaches an account it did not make."""
    if not login or github_id < 1 or len(login) > 200 or "\x00" in login:
        raise BadArguments("user-link needs a login and a GitHub user id (a whole number)")
    return await svc.store.link_github(login, github_id, operator=operator)


async def revoke_user(svc: Services, login: str) -> int:
    """Revoke every token of ``login`` and disable it (its share links stop working); returns
    how many tokens were live. The user's open WebSockets, and those of its share links,
    close at once on every daemon sharing the store (``Services.announce_revoked``)."""
    user = await svc.store.user_by_login(login)
    count = await svc.store.revoke_user(login)
    if user is not None:
        await svc.announce_revoked(Revoked("user", str(user.id), user.id))
    return count


async def list_users(svc: Services) -> list[User]:
    return await svc.store.list_users()


async def owner_logins(svc: Services, tasks: Iterable[Task]) -> dict[int, str]:
    """user id -> login for the owners of ``tasks`` (``#<id>`` for one that is gone)."""
    found: dict[int, str] = {}
    for user_id in {task.user_id for task in tasks}:
        user = await svc.store.user_by_id(user_id)
        found[user_id] = user.login if user is not None else f"#{user_id}"
    return found


async def with_owner_logins(svc: Services, tasks: Sequence[Task]) -> list[dict[str, Any]]:
    """``tasks`` as an operator sees them (the control socket, the ``/admin`` API): each
    task's ``public()`` with its owner's login as ``user_login``."""
    logins = await owner_logins(svc, tasks)
    return [{**task.public(), "user_login": logins[task.user_id]} for task in tasks]
