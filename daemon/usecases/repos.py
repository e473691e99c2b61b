"""A person's GitHub repositories, to pick one for a task: through the GitHub token their
GitHub sign-in left (kept encrypted; decrypted for one request at a time, never returned)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BadArguments
from ..git.github_repos import MAX_PER_PAGE, Repo, user_repos
from .policy import Viewer

if TYPE_CHECKING:
    from ..services import Services

PER_PAGE = 30
MAX_PAGE = 100
MAX_QUERY = 100
# A search reads GitHub's pages of 100 until it has enough, this many at most: it looks at the
# user's 500 most recently pushed repositories (GitHub's /user/repos cannot filter by name).
SEARCH_PAGES = 5


@dataclass(frozen=True)
class RepoPage:
    """One page of repositories, the most recently pushed first. ``github_linked`` False: the
    user has no GitHub token here (no repositories; a client offers a URL instead).
    ``next_page``: the page after this one, or None."""

    github_linked: bool
    repos: list[Repo]
    page: int
    next_page: int | None


async def github_token(svc: Services, user_id: int) -> str | None:
    """The user's GitHub token in clear, for one request, or None when they have none."""
    encrypted = await svc.store.github_token_enc(user_id)
    return svc.secrets.decrypt(encrypted) if encrypted else None


async def list_repos(svc: Services, viewer: Viewer, *, query: str = "", page: int = 1) -> RepoPage:
    """Page ``page`` (from 1, ``PER_PAGE`` a page) of the repositories the viewer's GitHub
    token reaches, the most recently pushed first; with ``query``, only those whose
    ``owner/name`` holds it, ignoring case (among the ``SEARCH_PAGES`` × 100 most recent).

    ``BadArguments``: no account (the control socket), a page outside 1..``MAX_PAGE``, a
    query over ``MAX_QUERY`` characters. GitHub's refusals and outages are
    ``PermanentError`` and ``TransientError`` (``github_repos.user_repos``). Cancellation:
    the request to GitHub is abandoned.
    """
    if viewer.user_id is None:
        raise BadArguments("the control socket's operator has no GitHub account")
    if not 1 <= page <= MAX_PAGE:
        raise BadArguments(f"page: from 1 to {MAX_PAGE}")
    if len(query) > MAX_QUERY:
        raise BadArguments(f"q: at most {MAX_QUERY} characters")
    token = await github_token(svc, viewer.user_id)
    if token is None:
        return RepoPage(github_linked=False, repos=[], page=page, next_page=None)
    api = svc.settings.github_api
    needle = query.strip().lower()
    if not needle:
        repos, more = await user_repos(api, token, page=page, per_page=PER_PAGE)
        return RepoPage(True, repos, page, page + 1 if more and page < MAX_PAGE else None)
    start = (page - 1) * PER_PAGE
    found: list[Repo] = []
    for github_page in range(1, SEARCH_PAGES + 1):
        repos, more = await user_repos(api, token, page=github_page, per_page=MAX_PER_PAGE)
        found += [repo for repo in repos if needle in repo.full_name.lower()]
        if not more or len(found) > start + PER_PAGE:
            break
    next_page = page + 1 if len(found) > start + PER_PAGE and page < MAX_PAGE else None
    return RepoPage(True, found[start : start + PER_PAGE], page, next_page)
