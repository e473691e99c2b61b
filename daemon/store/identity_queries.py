"""GitHub identities of users, written once for both backends (design §11).

A GitHub identity is GitHub's numeric user id, never its login: GitHub logins are renamed and
then given to someone else, and a local account (``agentctl user-add``) may carry any login.
So a sign-in finds its account by ``users.github_id`` alone:

- an account with that id: that account (its login stays; the GitHub login may have changed);
- none: a new account, named after the GitHub login when that login is free, else
  ``<login>-gh<id>`` (``GITHUB_LOGIN_FALLBACK``); when that is taken too, the sign-in is refused
  and an operator can link the id to an account with ``agentctl user-link``.

An account that exists without a GitHub id, an operator's above all, is therefore reached by
no sign-in until an operator links it (``link_github``).

Each function runs inside the one transaction the store opened for it, so a refused sign-in
writes nothing. ``ph`` is the backend's placeholder (``?`` for apsw, ``%s`` for psycopg).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import AgentdError, Forbidden, NotFound
from .models import User

USER_COLUMNS = "id, login, created_at, github_id, name, is_operator, disabled"
GITHUB_LOGIN_FALLBACK = "{login}-gh{github_id}"


def user_from_row(row: Sequence[Any]) -> User:
    uid, login, created_at, github_id, name, is_operator, disabled = row
    return User(uid, login, created_at, github_id, name, bool(is_operator), bool(disabled))


def _sql(text: str, ph: str) -> str:
    return text if ph == "?" else text.replace("?", ph)


def user_by_github_id(conn: Any, github_id: int, *, ph: str = "?") -> User | None:
    row = conn.execute(
        _sql(f"SELECT {USER_COLUMNS} FROM users WHERE github_id = ?", ph), (github_id,)
    ).fetchone()
    return user_from_row(row) if row else None


def _usable(user: User) -> User:
    if user.disabled:
        # An operator's revoke must stand: signing in again does not enable the account.
        raise Forbidden("this account was disabled by an operator", code="account_disabled")
    return user


def sign_in_github(
    conn: Any,
    github_id: int,
    login: str,
    name: str | None,
    token_enc: bytes | None,
    now: float,
    *,
    ph: str = "?",
) -> User:
    """The account of GitHub user ``github_id`` (made if there is none), its token stored.

    Raises ``Forbidden`` (code ``account_disabled``) for a disabled account and (code
    ``login_taken``) when neither ``login`` nor its fallback is free; nothing is written then.
    """
    user = user_by_github_id(conn, github_id, ph=ph)
    if user is None:
        candidates = [login, GITHUB_LOGIN_FALLBACK.format(login=login, github_id=github_id)]
        for candidate in candidates:
            # DO NOTHING on either unique column: a taken login, or (PostgreSQL, another node)
            # a sign-in of the same GitHub user that committed first, found just below.
            row = conn.execute(
                _sql(
                    "INSERT INTO users (login, github_id, name, github_token_enc, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
                    ph,
                ),
                (candidate, github_id, name, token_enc, now, now),
            ).fetchone()
            if row is not None:
                return user_by_github_id(conn, github_id, ph=ph)  # type: ignore[return-value]
            user = user_by_github_id(conn, github_id, ph=ph)
            if user is not None:
                break
        else:
            raise Forbidden(
                f"the logins {candidates[0]!r} and {candidates[1]!r} belong to other accounts; "
                f"an operator can link your GitHub account (id {github_id}) to an account with "
                f"`agentctl user-link LOGIN {github_id}`",
                code="login_taken",
            )
    _usable(user)
    conn.execute(
        _sql(
            "UPDATE users SET name = COALESCE(?, name), github_token_enc = ?, updated_at = ? WHERE id = ?", ph
        ),
        (name, token_enc, now, user.id),
    )
    return user_by_github_id(conn, github_id, ph=ph)  # type: ignore[return-value]


def link_github(conn: Any, login: str, github_id: int, operator: bool, now: float, *, ph: str = "?") -> User:
    """Give the account ``login`` the GitHub identity ``github_id`` (an operator's decision),
    and, with ``operator``, make it an operator.

    Raises ``NotFound`` for an unknown login and ``AgentdError`` (code ``github_id_taken``) when
    another account has that id. A changed id drops the stored GitHub token: it was the other
    GitHub user's.
    """
    row = conn.execute(_sql(f"SELECT {USER_COLUMNS} FROM users WHERE login = ?", ph), (login,)).fetchone()
    if row is None:
        raise NotFound(f"no user {login}")
    user = user_from_row(row)
    holder = user_by_github_id(conn, github_id, ph=ph)
    if holder is not None and holder.id != user.id:
        raise AgentdError(
            f"GitHub id {github_id} is already linked to the account {holder.login!r}", code="github_id_taken"
        )
    if user.github_id != github_id:
        conn.execute(
            _sql("UPDATE users SET github_id = ?, github_token_enc = NULL, updated_at = ? WHERE id = ?", ph),
            (github_id, now, user.id),
        )
    if operator and not user.is_operator:
        conn.execute(
            _sql("UPDATE users SET is_operator = ?, updated_at = ? WHERE id = ?", ph), (True, now, user.id)
        )
    return user_by_github_id(conn, github_id, ph=ph)  # type: ignore[return-value]
