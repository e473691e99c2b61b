"""GitHub sign-in for the phone app: authorization code with state and PKCE, twice.

1. The app makes a PKCE pair and opens ``GET /auth/github/login?app_redirect=URI
   &code_challenge=C&code_challenge_method=S256[&state=S]`` in a browser. ``app_redirect`` must be
   one of the ``app_redirects`` setting (exact match), or this daemon's own web client
   (``client.py``), ``<origin>/``, where the origin is a trusted one: ``public_url``'s when the
   operator set it, else the request's own only when it is a loopback address (``127.0.0.1``,
   ``[::1]``, ``localhost``), which only a browser on this machine sends. Never a Host header
   otherwise: behind a proxy, or with a name an attacker points at this server, it would send
   the one-time code to whatever origin the request named (an open redirect).
2. We remember (state, our own PKCE verifier, the app's challenge) and redirect to GitHub's
   authorize endpoint (``github_oauth_url``: github.com, Enterprise, or a fake in tests).
3. GitHub sends the browser to ``/auth/github/callback?code&state``; we exchange the code (with
   our verifier), read ``/user``, find the account by GitHub's numeric user id alone (never by
   login: ``store/identity_queries.py``), keep the GitHub token encrypted, and redirect to
   ``app_redirect?code=<one-time code>&state=S``.
4. The app posts ``{"code", "code_verifier"}`` to ``POST /auth/token`` and gets an API token.

Logins in progress and one-time codes live in memory with short lifetimes (a restart in the
middle of a sign-in means signing in again). The GitHub token never leaves this module in clear.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import httpx2
import trio
from authlib.common.security import generate_token
from authlib.oauth2.client import OAuth2Client
from authlib.oauth2.rfc6749.parameters import prepare_token_request
from authlib.oauth2.rfc7636.challenge import compare_s256_code_challenge
from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, redirect, request
from quart.typing import ResponseReturnValue
from quart_schema import validate_request

from ..errors import Forbidden
from ..tokens import hash_token, new_token
from .errors import ApiError

if TYPE_CHECKING:
    from .app import WebState

log = logging.getLogger(__name__)

SCOPE = "repo read:user"  # push branches and open pull requests as the user
CODE_TTL_S = 120.0
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43,128}$")
# What a GitHub (Enterprise) login may look like; anything else from /user is refused.
_LOGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass
class PendingLogin:
    app_redirect: str
    app_challenge: str
    app_state: str | None
    verifier: str
    redirect_uri: str
    expires: float


@dataclass
class Grant:
    user_id: int
    app_challenge: str
    expires: float


class OAuthFlows:
    """Sign-ins in progress and unused one-time codes, each with a deadline (trio's clock)."""

    def __init__(
        self, *, login_ttl_s: float, clock: Callable[[], float] = trio.current_time, max_pending: int = 10_000
    ) -> None:
        self.login_ttl_s = login_ttl_s
        self.clock = clock
        self.max_pending = max_pending
        self.logins: dict[str, PendingLogin] = {}
        self.grants: dict[str, Grant] = {}

    def _sweep(self) -> None:
        now = self.clock()
        for table in (self.logins, self.grants):
            for key in [k for k, v in table.items() if v.expires <= now]:
                del table[key]

    def start(self, **fields: Any) -> str:
        self._sweep()
        if len(self.logins) >= self.max_pending:
            raise ApiError(
                429,
                "rate_limited",
                "too many sign-ins in progress; retry later",
                headers={"Retry-After": "60"},
            )
        state = generate_token(32)
        self.logins[state] = PendingLogin(expires=self.clock() + self.login_ttl_s, **fields)
        return state

    def finish(self, state: str) -> PendingLogin | None:
        """The login for ``state``, once: a second use or an expired one gives None."""
        login = self.logins.pop(state, None)
        return login if login is not None and login.expires > self.clock() else None

    def grant(self, user_id: int, app_challenge: str) -> str:
        self._sweep()
        code = generate_token(43)
        self.grants[code] = Grant(user_id, app_challenge, self.clock() + CODE_TTL_S)
        return code

    def redeem(self, code: str, verifier: str) -> int | None:
        """The user id for a one-time code and its PKCE verifier; the code is spent either way."""
        grant = self.grants.pop(code, None)
        if grant is None or grant.expires <= self.clock():
            return None
        if not compare_s256_code_challenge(verifier, grant.app_challenge):
            return None
        return grant.user_id


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    grant_type: str = Field("authorization_code", description="Always authorization_code.")
    code: str = Field(min_length=1, max_length=200, description="The one-time code sent to app_redirect.")
    code_verifier: str = Field(
        min_length=43, max_length=128, description="The PKCE verifier of the sign-in's code_challenge."
    )


def _display_name(name: Any) -> str | None:
    """GitHub's display name as we keep it: text without control characters, at most 200."""
    if not isinstance(name, str):
        return None
    name = "".join(c for c in name if c.isprintable())[:200]
    return name or None


def own_client_redirect(public_url: str | None, host_url: str) -> str | None:
    """The address of this daemon's web client that a sign-in may return to without being
    listed in ``app_redirects`` (see the module docstring): ``public_url``'s root, else the
    request's root (``host_url``) when its host is a loopback address, else None."""
    if public_url:
        return public_url.rstrip("/") + "/"
    host = urlsplit(host_url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return host_url.rstrip("/") + "/" if loopback else None


def _with_query(uri: str, params: dict[str, str | None]) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{uri}{'&' if urlsplit(uri).query else '?'}{query}"


def oauth_blueprint(state: WebState) -> Blueprint:
    bp = Blueprint("github_oauth", __name__)
    settings = state.settings
    flows = state.oauth

    def configured() -> None:
        if not settings.github_client_id or not settings.github_client_secret:
            raise ApiError(404, "not_configured", "GitHub sign-in is not configured on this server")

    @bp.get("/auth/github/login")
    async def login():
        """Start a GitHub sign-in.

        Redirects to GitHub (see the module docstring for the whole flow)."""
        configured()
        args = request.args
        app_redirect = args.get("app_redirect", "")
        own = own_client_redirect(settings.public_url, request.host_url)
        if app_redirect not in settings.app_redirects and app_redirect != own:
            raise ApiError(
                400,
                "invalid_redirect",
                "app_redirect is not an allowed redirect URI (this server's web client signs in "
                "with GitHub at the address of public_url, or on a loopback address)",
            )
        challenge = args.get("code_challenge", "")
        if args.get("code_challenge_method", "S256") != "S256" or not _CHALLENGE.match(challenge):
            raise ApiError(
                400, "invalid_request", "a PKCE code_challenge (S256, base64url, 43-128 chars) is required"
            )
        base = (settings.public_url or request.host_url).rstrip("/")
        verifier = generate_token(64)
        redirect_uri = f"{base}/auth/github/callback"
        oauth_state = flows.start(
            app_redirect=app_redirect,
            app_challenge=challenge,
            app_state=(args.get("state") or None),
            verifier=verifier,
            redirect_uri=redirect_uri,
        )
        client = OAuth2Client(
            None,
            client_id=settings.github_client_id,
            scope=SCOPE,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
        )
        url, _ = client.create_authorization_url(
            f"{settings.github_oauth_url.rstrip('/')}/login/oauth/authorize",
            state=oauth_state,
            code_verifier=verifier,
        )
        return redirect(url, 302)

    @bp.get("/auth/github/callback")
    async def callback():
        """GitHub's redirect back.

        Finishes the sign-in and sends the app its one-time code at ``app_redirect``."""
        configured()
        pending = flows.finish(request.args.get("state", ""))
        if pending is None:
            raise ApiError(400, "invalid_state", "unknown or expired sign-in; start again")

        def back(**params: str | None) -> ResponseReturnValue:
            return redirect(_with_query(pending.app_redirect, {**params, "state": pending.app_state}), 302)

        if request.args.get("error"):
            return back(error=request.args.get("error"))
        try:
            user_id = await _sign_in(state, pending, request.args.get("code", ""))
        except ApiError as exc:
            return back(error=exc.code, error_description=exc.message)
        return back(code=flows.grant(user_id, pending.app_challenge))

    @bp.post("/auth/token")
    @validate_request(TokenRequest)
    async def token(data: TokenRequest) -> ResponseReturnValue:
        """Get an API token.

        For the one-time code and its PKCE verifier; the token is shown this once."""
        if data.grant_type != "authorization_code":
            raise ApiError(400, "unsupported_grant_type", "grant_type must be authorization_code")
        user_id = flows.redeem(data.code, data.code_verifier)
        user = await state.store.user_by_id(user_id) if user_id is not None else None
        if user is None or user.disabled:
            raise ApiError(400, "invalid_grant", "invalid, expired or used code, or wrong verifier")
        api_token = new_token()
        expires_at = time.time() + settings.api_token_ttl_s
        await state.store.add_token(
            user.id, hash_token(api_token), expires_at=expires_at, label="github sign-in"
        )
        return {
            "token": api_token,
            "token_type": "bearer",
            "expires_at": expires_at,
            "user": {"id": user.id, "login": user.login, "name": user.name},
        }

    return bp


async def _sign_in(state: WebState, pending: PendingLogin, code: str) -> int:
    """Code -> GitHub token -> /user -> our user (created or updated); returns its id.

    Cancellation: the HTTP requests are abandoned; nothing is stored until both succeeded.
    """
    settings = state.settings
    if not code:
        raise ApiError(400, "invalid_request", "GitHub sent no code")
    body = prepare_token_request(
        "authorization_code",
        code=code,
        redirect_uri=pending.redirect_uri,
        code_verifier=pending.verifier,
        client_id=settings.github_client_id,
        client_secret=settings.github_client_secret,
    )
    async with httpx2.AsyncClient(timeout=15.0) as client:
        try:
            response = await client.post(
                f"{settings.github_oauth_url.rstrip('/')}/login/oauth/access_token",
                content=body,
                headers={"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"},
            )
            answer = response.json() if response.status_code == 200 else {}
            access_token = answer.get("access_token")
            if not access_token:
                # GitHub reports a bad code with 200 and an "error" field; never log the body.
                raise ApiError(
                    400,
                    answer.get("error") or "token_exchange_failed",
                    answer.get("error_description") or "GitHub refused the code",
                )
            me = await client.get(
                f"{settings.github_api.rstrip('/')}/user",
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/vnd.github+json"},
            )
            if me.status_code != 200:
                raise ApiError(502, "github_error", f"GitHub /user answered {me.status_code}")
            profile = me.json()
        except ValueError:
            raise ApiError(502, "github_error", "GitHub answered something that is not JSON") from None
        except httpx2.HTTPError as exc:
            raise ApiError(
                502, "github_unreachable", f"GitHub could not be reached: {type(exc).__name__}"
            ) from None
    if not isinstance(profile, dict):
        raise ApiError(502, "github_error", "GitHub /user answered something that is not a user")
    login, github_id = profile.get("login"), profile.get("id")
    if not isinstance(github_id, int) or isinstance(github_id, bool) or not 0 < github_id < 2**63:
        raise ApiError(502, "github_error", "GitHub /user gave no user id")
    if not isinstance(login, str) or not _LOGIN.fullmatch(login):
        raise ApiError(502, "github_error", "GitHub /user gave no usable login")
    # The account is GitHub's immutable id's, never the login's (design §11): see
    # store/identity_queries.py for what a login that is already taken gives.
    try:
        user = await state.store.sign_in_github(
            github_id,
            login,
            name=_display_name(profile.get("name")),
            token_enc=state.services.secrets.encrypt(access_token),
        )
    except Forbidden as exc:
        raise ApiError(403, exc.code, exc.message) from None
    log.info("user %s (GitHub %s, id %d) signed in with GitHub", user.login, login, github_id)
    return user.id
