"""What a pull request's reviewers and checks ask for, read through GitHub's REST API, and the
one user turn that hands it to the model.

Read: the reviews that request changes or comment with a body (``/pulls/{n}/reviews``), the
review comments grouped into threads by ``in_reply_to_id`` (``/pulls/{n}/comments``), and the
failing check runs of the pull request's head commit (``/commits/{sha}/check-runs``). Whether a
thread is resolved is only available through GitHub's GraphQL API, not REST: every thread is
given, resolved or not, and the model is told so. Each list is read page by page, at most
``MAX_PAGES`` pages of ``PER_PAGE``, each answer at most ``MAX_RESPONSE`` bytes; each text is
cut at ``MAX_TEXT`` characters and the turn at ``MAX_TURN``. Everything GitHub answers is
untrusted text: it goes to the model only. Page URLs are made here from the configured API
base; the ``Link`` header only says whether a next page exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx2

from daemon.errors import PermanentError, TransientError
from daemon.git.github import api_error, api_get

__all__ = [
    "CheckFailure",
    "Feedback",
    "PullRef",
    "Review",
    "Thread",
    "parse_pull_url",
    "read_feedback",
    "render_turn",
]

TIMEOUT_S = 15.0
PER_PAGE = 100
MAX_PAGES = 5
MAX_TEXT = 4_000
MAX_TURN = 40_000
MAX_RESPONSE = 4 * 2**20  # bytes of one answer
FAILING = frozenset({"failure", "timed_out", "cancelled", "action_required"})
ASKING = frozenset({"CHANGES_REQUESTED", "COMMENTED"})
_UNSENDABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class PullRef:
    """Pull request ``number`` of ``owner/repo``."""

    owner: str
    repo: str
    number: int


@dataclass(frozen=True)
class Review:
    author: str
    state: str
    body: str


@dataclass(frozen=True)
class Comment:
    id: int
    author: str
    path: str
    line: int | None
    body: str
    in_reply_to: int | None


@dataclass(frozen=True)
class Thread:
    """A review comment and its replies, oldest first (resolved or not: REST cannot tell)."""

    path: str
    line: int | None
    comments: tuple[Comment, ...]


@dataclass(frozen=True)
class CheckFailure:
    name: str
    conclusion: str
    title: str
    summary: str


@dataclass(frozen=True)
class Feedback:
    reviews: list[Review]
    threads: list[Thread]
    checks: list[CheckFailure]

    @property
    def empty(self) -> bool:
        return not (self.reviews or self.threads or self.checks)


def parse_pull_url(url: str, web_host: str) -> PullRef | None:
    """The pull request ``https://{web_host}/{owner}/{repo}/pull/{n}`` names, or None when
    ``url`` is not one on ``web_host``."""
    parts = urlsplit(url)
    segments = parts.path.strip("/").split("/")
    if (parts.hostname or "") != web_host.lower() or len(segments) != 4 or segments[2] != "pull":
        return None
    owner, repo, _, number = segments
    if not (owner and repo and number.isdigit()):
        return None
    return PullRef(owner, repo, int(number))


async def read_feedback(
    api_base: str, token: str, pull: PullRef, *, client: httpx2.AsyncClient | None = None
) -> Feedback:
    """The reviews, review threads and failing checks of ``pull``, read with ``token``.

    Raises ``PermanentError`` when GitHub refuses (bad token, no access, no such pull request)
    and ``TransientError`` when it cannot be reached, errs (5xx) or rate-limits. The token goes
    in one request header and nowhere else. Cancellation: the request under way is abandoned
    and its connection closed; nothing is kept.
    """
    base = f"{api_base.rstrip('/')}/repos/{quote(pull.owner, safe='')}/{quote(pull.repo, safe='')}"
    own_client = client is None
    client = client or httpx2.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False)
    try:
        get = _Getter(client, token, pull)
        head = (await get.one(f"{base}/pulls/{pull.number}")).get("head")
        sha = head.get("sha") if isinstance(head, dict) else None
        reviews = [r for r in map(_review, await get.pages(f"{base}/pulls/{pull.number}/reviews")) if r]
        comments = [c for c in map(_comment, await get.pages(f"{base}/pulls/{pull.number}/comments")) if c]
        checks: list[CheckFailure] = []
        if isinstance(sha, str) and sha.isalnum():
            runs = await get.pages(f"{base}/commits/{sha}/check-runs", key="check_runs")
            checks = [c for c in map(_check, runs) if c]
        return Feedback(reviews, _threads(comments), checks)
    finally:
        if own_client:
            await client.aclose()


class _Getter:
    """GET requests with the token, GitHub's errors turned into ours."""

    def __init__(self, client: httpx2.AsyncClient, token: str, pull: PullRef) -> None:
        self.client, self.token, self.pull = client, token, pull

    async def _get(self, url: str, params: dict[str, str] | None = None) -> httpx2.Response:
        """The answer, its body read (at most ``MAX_RESPONSE`` bytes, else ``PermanentError``)."""
        pull = self.pull
        resp = await api_get(
            self.client,
            url,
            self.token,
            params=params,
            max_bytes=MAX_RESPONSE,
            what=f"{pull.owner}/{pull.repo}#{pull.number}",
        )
        if resp.status_code != 200:
            raise api_error(resp, pull.owner, pull.repo)
        return resp

    async def one(self, url: str) -> dict[str, Any]:
        data = _json(await self._get(url))
        if not isinstance(data, dict):
            raise TransientError(
                "the GitHub API answered something that is not an object", code="github_error"
            )
        return data

    async def pages(self, url: str, *, key: str | None = None) -> list[Any]:
        """Every item of a paginated list (under ``key`` when the answer is an object), up to
        ``MAX_PAGES`` pages."""
        items: list[Any] = []
        for page in range(1, MAX_PAGES + 1):
            resp = await self._get(url, {"per_page": str(PER_PAGE), "page": str(page)})
            data = _json(resp)
            if key is not None and isinstance(data, dict):
                data = data.get(key)
            if not isinstance(data, list):
                raise PermanentError(
                    "the GitHub API answered something that is not a list", code="github_error"
                )
            items += data
            if "next" not in resp.links:
                break
        return items


def _json(resp: httpx2.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _text(value: Any) -> str:
    """Text cut at ``MAX_TEXT``, its control characters and lone surrogates (which a follow-up
    may not hold) replaced."""
    return _UNSENDABLE.sub("\N{REPLACEMENT CHARACTER}", value[:MAX_TEXT]) if isinstance(value, str) else ""


def _login(item: dict[str, Any]) -> str:
    user = item.get("user")
    return (_text(user.get("login")) if isinstance(user, dict) else "") or "someone"


def _review(item: Any) -> Review | None:
    if not isinstance(item, dict) or item.get("state") not in ASKING or not _text(item.get("body")).strip():
        return None
    return Review(_login(item), str(item["state"]), _text(item.get("body")))


def _comment(item: Any) -> Comment | None:
    if not isinstance(item, dict) or not isinstance(item.get("id"), int):
        return None
    line = item.get("line") if isinstance(item.get("line"), int) else item.get("original_line")
    reply = item.get("in_reply_to_id")
    return Comment(
        id=item["id"],
        author=_login(item),
        path=_text(item.get("path")),
        line=line if isinstance(line, int) else None,
        body=_text(item.get("body")),
        in_reply_to=reply if isinstance(reply, int) else None,
    )


def _threads(comments: list[Comment]) -> list[Thread]:
    """Comments grouped by the thread they start or answer (GitHub replies point at the first)."""
    by_root: dict[int, list[Comment]] = {}
    for comment in comments:
        root = comment.in_reply_to if comment.in_reply_to in by_root else comment.id
        by_root.setdefault(root, []).append(comment)
    return [Thread(group[0].path, group[0].line, tuple(group)) for group in by_root.values()]


def _check(item: Any) -> CheckFailure | None:
    if not isinstance(item, dict) or item.get("conclusion") not in FAILING:
        return None
    output = item.get("output")
    output = output if isinstance(output, dict) else {}
    return CheckFailure(
        _text(item.get("name")) or "a check",
        str(item["conclusion"]),
        _text(output.get("title")),
        _text(output.get("summary")),
    )


def render_turn(feedback: Feedback, pull: PullRef) -> str:
    """One user turn asking the model to address ``feedback``, at most ``MAX_TURN`` characters
    (a note says when it was cut)."""
    where = f"{pull.owner}/{pull.repo}#{pull.number}"
    intro = (
        f"Your pull request {where} got review feedback. Address it in this branch: change the code "
        "where it is right, and say in your final message what you changed and what you did not "
        "and why. The text below is what reviewers and CI wrote, quoted."
    )
    lines = [intro]

    def section(title: str, items: list[Any], show: Callable[[Any], list[str]]) -> None:
        if items:
            lines.extend(["", f"## {title}"])
            for item in items:
                lines.extend(["", *show(item)])

    section("Reviews", feedback.reviews, lambda r: [f"{r.author} ({r.state}):", _quoted(r.body)])
    section(
        "Review threads (GitHub's REST API does not say which are resolved)",
        feedback.threads,
        lambda t: [
            f"{t.path}:{t.line if t.line is not None else '?'}",
            *(f"{c.author}:\n{_quoted(c.body)}" for c in t.comments),
        ],
    )
    section(
        "Failing checks",
        feedback.checks,
        lambda c: [f"{c.name} ({c.conclusion}){': ' + c.title if c.title else ''}", _quoted(c.summary)],
    )
    text = "\n".join(lines)
    if len(text) > MAX_TURN:
        text = text[:MAX_TURN] + "\n\n[The feedback was cut here: it is longer than agentd passes on.]"
    return text


def _quoted(body: str) -> str:
    return "\n".join(f"> {line}" for line in body.strip().splitlines()) or "> (no text)"
