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

Logins in progress (step 2) and one-time codes (step 3) are kept in the store
(``one_time_values``), so a sign-in may begin on one of the daemons sharing a store, come back
from GitHub to another and be redeemed on a third, with no sticky load balancer. Each is found
by the SHA-256 of the secret handed out (the ``state`` that travels through GitHub, the code
sent to the app), never by the secret, so a reader of the database holds nothing to redeem; it
is taken by one ``DELETE ... RETURNING``, so of two uses on any nodes one finds it and a replay
finds nothing; and it expires on the store's clock (a login after ``oauth_login_ttl_s``, a code
after ``CODE_TTL_S``; expired rows go at each new one and in the periodic maintenance).

Why rows rather than a signed and encrypted ``state`` (a Fernet token of the cluster's keys
holding the verifier, the challenge and the redirect): such a state proves that we made it, not
that this is its first use. Refusing its replay within its lifetime takes a record of the states
spent, a write to the shared store all the same; and it would carry our PKCE verifier,
encrypted, through the browser, GitHub and their logs, in a ``state`` of several hundred
characters. A row costs one insert at the login and one delete at the callback, keeps the
``state`` at 32 characters, and bounds the logins in progress across the cluster
(``MAX_PENDING``). The GitHub token never leaves this module in clear.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import httpx2
from authlib.common.security import generate_token
from authlib.oauth2.client import OAuth2Client
from authlib.oauth2.rfc6749.parameters import prepare_token_request
from authlib.oauth2.rfc7636.challenge import compare_s256_code_challenge
from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, redirect, request
from quart.typing import ResponseReturnValue
from quart_schema import validate_request

from ..errors import Forbidden
from ..store import Store
from ..tokens import hash_token, new_token
from .errors import ApiError

if TYPE_CHECKING:
    from .app import WebState

log = logging.getLogger(__name__)

SCOPE = "repo read:user"  # push branches and open pull requests as the user
CODE_TTL_S = 120.0
MAX_PENDING = 10_000  # logins in progress (and codes not redeemed) across the cluster
LOGIN, CODE = "github_login", "github_code"  # their kinds in the store's one_time_values
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43,128}$")
# What a GitHub (Enterprise) login may look like; anything else from /user is refused.
_LOGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class PendingLogin:
    """A sign-in between our redirect to GitHub and GitHub's callback."""

    app_redirect: str
    app_challenge: str
    app_state: str | None
    verifier: str
    redirect_uri: str


class OAuthFlows:
    """Sign-ins in progress and unused one-time codes, in the store every daemon sharing it
    reads (see the module docstring); each taken once, and only before its deadline.

    Cancellation: each method is one store write, which is not abandoned (``StoreBase``).
    """

    def __init__(
        self,
        store: Store,
        *,
        login_ttl_s: float,
        code_ttl_s: float = CODE_TTL_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.store = store
        self.login_ttl_s = login_ttl_s
        self.code_ttl_s = code_ttl_s
        self.max_pending = max_pending

    async def _put(self, kind: str, value: dict[str, Any], ttl_s: float, size: int) -> str:
        secret = generate_token(size)
        kept = await self.store.put_one_time(
            kind, hash_token(secret), json.dumps(value), ttl_s=ttl_s, limit=self.max_pending
        )
        if not kept:
            raise ApiError(
                429,
                "rate_limited",
                "too many sign-ins in progress; retry later",
                headers={"Retry-After": "60"},
            )
        return secret

    async def _take(self, kind: str, secret: str) -> dict[str, Any] | None:
        value = await self.store.take_one_time(kind, hash_token(secret)) if secret else None
        return None if value is None else dict(json.loads(value))

    async def start(self, login: PendingLogin) -> str:
        """The ``state`` for GitHub's round trip of ``login``. ApiError 429 when ``max_pending``
        sign-ins are in progress already."""
        return await self._put(LOGIN, asdict(login), self.login_ttl_s, 32)

    async def finish(self, state: str) -> PendingLogin | None:
        """The login for ``state``, once: a second use (on any node) or an expired one gives None."""
        fields = await self._take(LOGIN, state)
        return None if fields is None else PendingLogin(**fields)

    async def grant(self, user_id: int, app_challenge: str) -> str:
        """A one-time code for ``user_id``, redeemed with the verifier of ``app_challenge``."""
        return await self._put(
            CODE, {"user_id": user_id, "app_challenge": app_challenge}, self.code_ttl_s, 43
        )

    async def redeem(self, code: str, verifier: str) -> int | None:
        """The user id for a one-time code and its PKCE verifier; the code is spent either way."""
        grant = await self._take(CODE, code)
        if grant is None or not compare_s256_code_challenge(verifier, grant["app_challenge"]):
            return None
        return int(grant["user_id"])


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
        oauth_state = await flows.start(
            PendingLogin(
                app_redirect=app_redirect,
                app_challenge=challenge,
                app_state=(args.get("state") or None),
                verifier=verifier,
                redirect_uri=redirect_uri,
            )
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
        pending = await flows.finish(request.args.get("state", ""))
        if pending is None:
            raise ApiError(400, "invalid_state", "unknown or expired sign-in; start again")

        def back(**params: str | None) -> ResponseReturnValue:
            return redirect(_with_query(pending.app_redirect, {**params, "state": pending.app_state}), 302)

        if request.args.get("error"):
            return back(error=request.args.get("error"))
        try:
            user_id = await _sign_in(state, pending, request.args.get("code", ""))
            code = await flows.grant(user_id, pending.app_challenge)
        except ApiError as exc:
            return back(error=exc.code, error_description=exc.message)
        return back(code=code)

    @bp.post("/auth/token")
    @validate_request(TokenRequest)
    async def token(data: TokenRequest) -> ResponseReturnValue:
        """Get an API token.

        For the one-time code and its PKCE verifier; the token is shown this once."""
        if data.grant_type != "authorization_code":
            raise ApiError(400, "unsupported_grant_type", "grant_type must be authorization_code")
        user_id = await flows.redeem(data.code, data.code_verifier)
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
