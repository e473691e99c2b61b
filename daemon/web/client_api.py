"""The phone API's account routes, which the web client at ``/`` needs beyond the task routes:
who am I, sign out, what this server offers, and my GitHub repositories.

Each parses, calls one use case and renders it, as ``routes.py`` does; every field is described
for /openapi.json.
"""

from __future__ import annotations

from dataclasses import asdict

from pydantic import BaseModel, Field
from quart import Blueprint, request
from quart.typing import ResponseReturnValue
from quart_schema import validate_querystring, validate_response

from .. import usecases
from ..errors import TransientError
from ..usecases.repos import MAX_PAGE, MAX_QUERY
from .auth import bearer_token, require_user, services, viewer, web_state
from .errors import ApiError
from .session import CLOSE_AUTH_FAILED


class MeOut(BaseModel):
    """The caller's account."""

    user_id: int = Field(description="The account's id (the user_id of its tasks).")
    login: str = Field(description="The account's login.")
    is_operator: bool = Field(description="Whether it is an operator's (the operator view, any task).")
    github_linked: bool = Field(
        description="Whether a GitHub token of the account is kept (from a GitHub sign-in): its "
        "repositories can then be listed."
    )


class PriceOut(BaseModel):
    """What a model costs, in US dollars per million tokens."""

    input_usd_per_mtok: float = Field(description="Input tokens (not read from or written to the cache).")
    output_usd_per_mtok: float = Field(description="Output tokens.")
    cache_write_usd_per_mtok: float = Field(description="Input tokens written to the prompt cache.")
    cache_read_usd_per_mtok: float = Field(description="Input tokens read from the prompt cache.")


class ModelOut(BaseModel):
    """A model a task can use (the operator's allowlist)."""

    id: str = Field(description="The model's name: a task's model.")
    default: bool = Field(description="Whether tasks use it when none is named.")
    price: PriceOut = Field(description="Its price row, which a task's cost is counted from.")


class BudgetOut(BaseModel):
    """One figure per budget of a task."""

    max_turns: int = Field(description="Model turns.")
    max_tokens: int = Field(description="Input, output and cache-write tokens.")
    max_usd: float = Field(description="Model cost in US dollars.")


class BudgetsOut(BaseModel):
    """A task's budgets: what it gets without its own, and how high its own may go."""

    defaults: BudgetOut = Field(description="Each budget of a task that names none.")
    caps: BudgetOut = Field(description="The most each budget may be; a higher one is held to it.")


class ClientConfigOut(BaseModel):
    """What this server offers a client, before anyone signs in."""

    github_sign_in: bool = Field(description="Whether GitHub sign-in is configured here.")
    models: list[ModelOut] = Field(description="The models a task can use.")
    budget: BudgetsOut = Field(description="Budget defaults and caps.")


class ReposQuery(BaseModel):
    q: str = Field("", max_length=MAX_QUERY, description="Only repositories whose owner/name holds this.")
    page: int = Field(1, ge=1, le=MAX_PAGE, description="The page, from 1 (30 repositories a page).")


class RepoOut(BaseModel):
    """A GitHub repository the caller can reach."""

    full_name: str = Field(description="owner/name.")
    name: str = Field(description="The repository's name.")
    owner: str = Field(description="Its owner's login (a user or an organisation).")
    private: bool = Field(description="Whether it is private.")
    default_branch: str = Field(description="Its default branch (a task's base when none is named).")
    clone_url: str = Field(description="Its https URL: the repo_url of a task.")
    html_url: str = Field(description="Its page on GitHub.")
    description: str = Field(description="Its description (may be empty).")
    pushed_at: str = Field(description="When it was last pushed to (ISO 8601, from GitHub).")


class RepoPageOut(BaseModel):
    """One page of the caller's GitHub repositories, the most recently pushed first."""

    github_linked: bool = Field(
        description="False: no GitHub token is kept for this account (repos is empty: paste a URL)."
    )
    repos: list[RepoOut] = Field(description="The repositories of this page.")
    page: int = Field(description="This page's number.")
    next_page: int | None = Field(description="The next page's number; null: the last page.")


bp = Blueprint("client_api", __name__)


@bp.get("/api/me")
@require_user
@validate_response(MeOut)
async def me() -> ResponseReturnValue:
    """Who the token belongs to.

    Its account's id and login, whether it is an operator's and whether GitHub is linked.
    """
    return asdict(await usecases.me(services(), viewer()))


@bp.post("/api/auth/signout")
@require_user
async def sign_out() -> ResponseReturnValue:
    """Sign out: revoke this token.

    Only the token of this request; the account's other tokens stay. 204; the token is
    refused from then on, and the WebSockets signed in with it are closed (4401).
    """
    token = bearer_token(request.headers.get("Authorization"))
    assert token is not None  # require_user found it live
    await usecases.sign_out(services(), token)
    for session in list(web_state().sessions):
        if session.token == token:
            session.close(CLOSE_AUTH_FAILED, "signed out")
    return "", 204


@bp.get("/api/client-config")
@validate_response(ClientConfigOut)
async def client_config() -> ResponseReturnValue:
    """What this server offers a client.

    Needs no token: whether GitHub sign-in is configured, the models a task can use, and
    budget defaults and caps.
    """
    config = usecases.client_config(services())
    return {
        "github_sign_in": config.github_sign_in,
        "models": [asdict(model) for model in config.models],
        "budget": {"defaults": config.budget_defaults, "caps": config.budget_caps},
    }


@bp.get("/api/repos")
@require_user
@validate_querystring(ReposQuery)
@validate_response(RepoPageOut)
async def repos(query_args: ReposQuery) -> ResponseReturnValue:
    """The caller's GitHub repositories.

    Through the GitHub token of their GitHub sign-in, the most recently pushed first; ``q``
    keeps those whose owner/name holds it (ignoring case). Without a GitHub token:
    ``github_linked`` false and no repositories. 503 when GitHub cannot be reached or
    rate-limits (``Retry-After``); 422 when it refuses the token (sign in with GitHub again).
    """
    try:
        page = await usecases.list_repos(services(), viewer(), query=query_args.q, page=query_args.page)
    except TransientError as exc:
        wait = str(round(exc.retry_after or 30))
        raise ApiError(503, exc.code, exc.message, headers={"Retry-After": wait}) from None
    return asdict(page)
