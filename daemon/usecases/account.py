"""What a signed-in person does with their own account: see who they are, sign out; and what
a client shows before anyone signs in (``client_config``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import NotFound
from ..store import Revoked
from ..tokens import hash_token
from .policy import Viewer

if TYPE_CHECKING:
    from ..services import Services


@dataclass(frozen=True)
class Me:
    """The caller's account; ``github_linked``: a GitHub token of theirs is kept (from a
    GitHub sign-in), so their repositories can be listed and their pushes reach GitHub."""

    user_id: int
    login: str
    is_operator: bool
    github_linked: bool


@dataclass(frozen=True)
class ModelChoice:
    """A model a task can use; ``default``: the one used when none is named; ``price``: its
    price row, USD per million tokens of each kind (``Price.public``)."""

    id: str
    default: bool
    price: dict[str, float]


@dataclass(frozen=True)
class ClientConfig:
    """What a client needs before it shows its forms: whether GitHub sign-in is offered, the
    models on offer, and each budget's default and cap (``max_turns``, ``max_tokens``,
    ``max_usd``: a task's own budget above a cap is held to the cap)."""

    github_sign_in: bool
    models: list[ModelChoice]
    budget_defaults: dict[str, float]
    budget_caps: dict[str, float]


async def me(svc: Services, viewer: Viewer) -> Me:
    """The viewer's account (``NotFound`` for the control socket's operator, who has none)."""
    if viewer.user_id is None or viewer.login is None:
        raise NotFound("the control socket's operator has no account")
    linked = await svc.store.github_token_enc(viewer.user_id) is not None
    return Me(viewer.user_id, viewer.login, viewer.is_operator, linked)


async def sign_out(svc: Services, token: str) -> bool:
    """Revoke the API token ``token``, and only it (the account's other tokens stay live);
    False when it was not live. Every later check of it fails, and its open WebSockets close
    at once on every daemon sharing the store (``Services.announce_revoked``; cancelled
    before that: at their next token re-check)."""
    token_hash = hash_token(token)
    user = await svc.store.user_by_token_hash(token_hash)
    revoked = await svc.store.revoke_token(token_hash)
    if revoked and user is not None:
        await svc.announce_revoked(Revoked("token", token_hash, user.id))
    return revoked


def client_config(svc: Services) -> ClientConfig:
    """What this daemon offers a client (no secrets: it is shown before sign-in)."""
    settings = svc.settings
    default = settings.default_model
    return ClientConfig(
        github_sign_in=bool(settings.github_client_id and settings.github_client_secret),
        models=[  # the operator's allowlist, the default first
            ModelChoice(model, model == default, price.public())
            for model, price in settings.model_prices().items()
        ],
        budget_defaults={
            "max_turns": settings.budget_max_turns,
            "max_tokens": settings.budget_max_tokens,
            "max_usd": settings.budget_max_usd,
        },
        budget_caps={
            "max_turns": settings.budget_cap_turns,
            "max_tokens": settings.budget_cap_tokens,
            "max_usd": settings.budget_cap_usd,
        },
    )
