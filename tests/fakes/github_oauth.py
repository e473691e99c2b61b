"""A fake GitHub OAuth server (authorize, access_token with PKCE, /user) on 127.0.0.1.

``GET /login/oauth/authorize`` plays the user who clicks "Authorize": it answers 302 to the
``redirect_uri`` with a new code and the same state, remembering the PKCE challenge.
``POST /login/oauth/access_token`` checks client id and secret, the code (once), the
redirect_uri and the verifier, and answers like GitHub: 200 with ``access_token``, or 200 with
``error``. ``GET /user`` answers the profile for a valid bearer token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlencode, urlsplit

from .threaded_http import ThreadedHTTPFake


class FakeGitHubOAuth(ThreadedHTTPFake):
    def __init__(self, *, client_id: str, client_secret: str, profile: dict | None = None) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.profile = profile or {"login": "octocat", "id": 583231, "name": "The Octocat"}
        self.codes: dict[str, dict] = {}
        self.tokens: set[str] = set()
        self.authorize_requests: list[dict[str, str]] = []
        self.deny = False


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGitHubOAuth

    def log_message(self, format, *args):
        pass

    def _json(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        fake = self.owner
        if parts.path == "/login/oauth/authorize":
            fake.authorize_requests.append(query)
            if fake.deny:
                params = {"error": "access_denied", "state": query.get("state", "")}
            else:
                code = secrets.token_hex(10)
                fake.codes[code] = query
                params = {"code": code, "state": query.get("state", "")}
            self.send_response(302)
            self.send_header("Location", f"{query['redirect_uri']}?{urlencode(params)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif parts.path == "/user":
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if token in fake.tokens:
                self._json(200, fake.profile)
            else:
                self._json(401, {"message": "Bad credentials"})
        else:
            self._json(404, {"message": "Not Found"})

    def do_POST(self) -> None:
        fake = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if urlsplit(self.path).path != "/login/oauth/access_token":
            self._json(404, {"message": "Not Found"})
            return
        if (form.get("client_id"), form.get("client_secret")) != (fake.client_id, fake.client_secret):
            self._json(200, {"error": "incorrect_client_credentials"})
            return
        asked = fake.codes.pop(form.get("code", ""), None)
        if asked is None or asked.get("redirect_uri") != form.get("redirect_uri"):
            self._json(
                200,
                {
                    "error": "bad_verification_code",
                    "error_description": "The code passed is incorrect or expired.",
                },
            )
            return
        if asked.get("code_challenge_method") != "S256" or _s256(form.get("code_verifier", "")) != asked.get(
            "code_challenge"
        ):
            self._json(200, {"error": "bad_verification_code", "error_description": "PKCE failed"})
            return
        token = "gho_" + secrets.token_hex(18)
        fake.tokens.add(token)
        self._json(200, {"access_token": token, "token_type": "bearer", "scope": asked.get("scope", "")})


FakeGitHubOAuth.handler_class = _Handler
