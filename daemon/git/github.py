"""GitHub's REST API (github.com or GitHub Enterprise): opening a pull request, and the
authenticated GET and error mapping the other GitHub modules share."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import quote

import httpx2

from daemon.errors import PermanentError, TransientError

__all__ = ["API_VERSION", "PullRequest", "api_error", "api_get", "api_headers", "open_pull_request"]

API_VERSION = "2022-11-28"
_ALREADY_EXISTS = "a pull request already exists"


@dataclass(frozen=True)
class PullRequest:
    """A pull request to open in ``owner/repo``: from branch ``head`` into ``base``; ``draft``:
    opened as a draft. ``title`` and ``body`` may be a user's text: they go as JSON data only."""

    owner: str
    repo: str
    head: str
    base: str
    title: str
    body: str
    draft: bool = False


async def open_pull_request(
    api_base: str,
    token: str,
    pr: PullRequest,
    *,
    timeout: float = 30.0,
    client: httpx2.AsyncClient | None = None,
) -> str:
    """Open ``pr`` and return its html_url.

    When GitHub answers that one already exists (a retried attempt), the existing open pull
    request's url is returned, so calling this twice is safe. Raises PermanentError for bad
    credentials, no access, a missing repository or another refusal (message from GitHub);
    TransientError for 5xx, connection failures, timeouts and rate limits (``retry_after``
    set from GitHub's headers when it says).

    Cancellation: the HTTP request is abandoned and its connection closed; GitHub may or may
    not have created the pull request, which the already-exists path covers on the next call.
    """
    owner, repo, head, base = pr.owner, pr.repo, pr.head, pr.base
    url = f"{api_base.rstrip('/')}/repos/{quote(owner, safe='')}/{quote(repo, safe='')}/pulls"
    headers = api_headers(token)
    payload = {"title": pr.title, "head": head, "base": base, "body": pr.body, "draft": pr.draft}
    own_client = client is None
    client = client or httpx2.AsyncClient(timeout=timeout, follow_redirects=True)
    try:
        try:
            resp = await client.post(url, json=payload, headers=headers)
            if resp.status_code == 201:
                return resp.json()["html_url"]
            if resp.status_code == 422 and _ALREADY_EXISTS in _messages(resp).lower():
                found = await client.get(
                    url,
                    params={"head": f"{owner}:{head}", "base": base, "state": "open"},
                    headers=headers,
                )
                if found.status_code == 200 and found.json():
                    return found.json()[0]["html_url"]
                if found.status_code != 200:
                    raise api_error(found, owner, repo)
                raise PermanentError(
                    f"GitHub says a pull request for {head} already exists in {owner}/{repo}, "
                    "but it could not be found",
                    code="github_pr_missing",
                )
            raise api_error(resp, owner, repo)
        except httpx2.TransportError as exc:
            raise TransientError(
                f"could not reach the GitHub API: {type(exc).__name__}", code="github_unavailable"
            ) from None
    finally:
        if own_client:
            await client.aclose()


def api_headers(token: str) -> dict[str, str]:
    """The headers of an authenticated GitHub REST request; the token goes here and nowhere else."""
    return {
        "Accept": "application/vnd.github+json",
        "Authorization": f"Bearer {token}",
        "X-GitHub-Api-Version": API_VERSION,
        "User-Agent": "agentd",
    }


async def api_get(
    client: httpx2.AsyncClient,
    url: str,
    token: str,
    *,
    params: dict[str, str] | None = None,
    max_bytes: int,
    what: str,
) -> httpx2.Response:
    """GitHub's answer to an authenticated GET of ``url``, its body read (any status).

    Raises ``TransientError`` when the API cannot be reached and ``PermanentError`` when the
    body is over ``max_bytes`` (``what`` names the answer in that message). Cancellation: the
    request is abandoned and its connection closed.
    """
    try:
        async with client.stream("GET", url, params=params, headers=api_headers(token)) as streamed:
            body = bytearray()
            async for chunk in streamed.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise PermanentError(
                        f"GitHub's answer for {what} is over {max_bytes // 2**20} MiB",
                        code="github_too_large",
                    )
    except httpx2.TransportError as exc:
        raise TransientError(
            f"could not reach the GitHub API: {type(exc).__name__}", code="github_unavailable"
        ) from None
    return httpx2.Response(streamed.status_code, headers=streamed.headers, content=bytes(body))


def api_error(resp: httpx2.Response, owner: str, repo: str) -> PermanentError | TransientError:
    """Our error for GitHub's refusal ``resp`` of a request about ``owner/repo``: rate limits,
    5xx as ``TransientError`` (``retry_after`` set when limited), the rest ``PermanentError``."""
    status = resp.status_code
    said = _messages(resp)
    retry_after = _retry_after(resp)
    if status == 403 and retry_after is None and "rate limit" in said.lower():
        retry_after = 60.0  # a secondary rate limit that did not say how long
    if status == 429 or (status == 403 and retry_after is not None):
        return TransientError(
            f"GitHub API rate limit hit ({status}); retry in {retry_after or 60:.0f} s",
            code="github_rate_limited",
            retry_after=retry_after if retry_after is not None else 60.0,
        )
    if status >= 500:
        return TransientError(f"GitHub API error {status}: {said}", code="github_unavailable")
    if status == 401:
        return PermanentError("GitHub rejected the token (401 Bad credentials)", code="github_auth")
    if status == 403:
        return PermanentError(
            f"GitHub refused access to {owner}/{repo} (403): {said}", code="github_forbidden"
        )
    if status == 404:
        return PermanentError(
            f"repository {owner}/{repo} not found on GitHub, or the token cannot see it (404)",
            code="github_not_found",
        )
    return PermanentError(f"GitHub refused the pull request ({status}): {said}", code="github_refused")


def _retry_after(resp: httpx2.Response) -> float | None:
    """Seconds to wait per GitHub's headers, or None when it is not rate limiting."""
    if (value := resp.headers.get("retry-after")) is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            return 60.0
    if resp.headers.get("x-ratelimit-remaining") == "0":
        try:
            return max(0.0, float(resp.headers["x-ratelimit-reset"]) - time.time())
        except (KeyError, ValueError):
            return 60.0
    return None


def _messages(resp: httpx2.Response) -> str:
    """GitHub's own words: the top message plus any per-field error messages."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:200]
    if not isinstance(data, dict):
        return ""
    parts = [str(data.get("message", ""))]
    for err in data.get("errors") or []:
        if isinstance(err, dict) and err.get("message"):
            parts.append(str(err["message"]))
        elif isinstance(err, str):
            parts.append(err)
    return "; ".join(p for p in parts if p)[:500]
