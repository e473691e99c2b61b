"""The signed-in user's repositories, from GitHub's REST API (``GET /user/repos``).

What GitHub answers is read as untrusted data: each repository becomes a ``Repo`` of plain
strings, and one without a usable name or clone URL is left out. Page URLs are made here from
the configured API base; GitHub's ``Link`` header is read only to learn whether a next page
exists, so no URL from a response is ever requested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2

from daemon.errors import PermanentError, TransientError
from daemon.git.github import api_error, api_get

__all__ = ["Repo", "user_repos"]

TIMEOUT_S = 15.0
MAX_PER_PAGE = 100  # GitHub's own limit
MAX_RESPONSE = 4 * 2**20  # bytes of one answer


@dataclass(frozen=True)
class Repo:
    """One repository the user can reach, as the phone shows it and a task clones it."""

    full_name: str
    name: str
    owner: str
    private: bool
    default_branch: str
    clone_url: str
    html_url: str
    description: str
    pushed_at: str


async def user_repos(
    api_base: str, token: str, *, page: int, per_page: int, client: httpx2.AsyncClient | None = None
) -> tuple[list[Repo], bool]:
    """Page ``page`` (from 1) of the token's user's repositories, the most recently pushed
    first, ``per_page`` (at most 100) a page; and whether GitHub has a page after it.

    Raises ``PermanentError`` when GitHub refuses the token (``github_auth``) or the request, or
    answers over ``MAX_RESPONSE`` bytes;
    ``TransientError`` when it cannot be reached, errs (5xx) or rate-limits (``retry_after``).
    The token goes in one request header and nowhere else. Cancellation: the request is
    abandoned and its connection closed.
    """
    url = f"{api_base.rstrip('/')}/user/repos"
    params = {
        "sort": "pushed",
        "direction": "desc",
        "per_page": str(min(per_page, MAX_PER_PAGE)),
        "page": str(page),
    }
    own_client = client is None
    client = client or httpx2.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False)
    try:
        resp = await api_get(
            client, url, token, params=params, max_bytes=MAX_RESPONSE, what="your repositories"
        )
        if resp.status_code != 200:
            raise _refusal(resp)
        try:
            items = resp.json()
        except ValueError:
            items = None
        if not isinstance(items, list):
            raise TransientError("the GitHub API answered something that is not a list", code="github_error")
        repos = [repo for repo in map(_repo, items) if repo is not None]
        return repos, "next" in resp.links
    finally:
        if own_client:
            await client.aclose()


def _repo(item: Any) -> Repo | None:
    """A repository from one item of GitHub's answer, or None when it is not one."""
    if not isinstance(item, dict):
        return None
    owner = item.get("owner")

    def text(value: Any) -> str:
        return value if isinstance(value, str) else ""

    full_name, clone_url = text(item.get("full_name")), text(item.get("clone_url"))
    if "/" not in full_name or urlsplit(clone_url).scheme not in ("https", "http"):
        return None
    return Repo(
        full_name=full_name,
        name=text(item.get("name")) or full_name.rpartition("/")[2],
        owner=text(owner.get("login")) if isinstance(owner, dict) else full_name.partition("/")[0],
        private=item.get("private") is True,
        default_branch=text(item.get("default_branch")),
        clone_url=clone_url,
        html_url=text(item.get("html_url")),
        description=text(item.get("description"))[:500],
        pushed_at=text(item.get("pushed_at")),
    )


def _refusal(resp: httpx2.Response) -> PermanentError | TransientError:
    """Our error for GitHub's refusal to list: its rate limits and outages as ``api_error``
    says them; a refused token with what to do about it."""
    err = api_error(resp, "", "")
    if isinstance(err, TransientError):
        return err
    if resp.status_code == 401:
        return PermanentError(
            "GitHub no longer accepts the token it gave at sign-in: sign in with GitHub again",
            code="github_auth",
        )
    return PermanentError(
        f"GitHub refused to list the repositories ({resp.status_code})", code="github_refused"
    )
