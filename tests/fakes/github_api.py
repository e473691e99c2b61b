"""A fake GitHub REST API on 127.0.0.1 (real HTTP) for the pull-request endpoints.

``POST /repos/{o}/{r}/pulls`` checks the Bearer token (401 "Bad credentials" otherwise),
records the request and the pull request (its title, body and ``draft``, a JSON boolean or 422),
and answers 201 with it, or 422 "A pull request already exists" when an open one has the same
head and base. ``GET /repos/{o}/{r}/pulls?head=o:branch``
lists them. ``GET /user/repos?sort=pushed&per_page=&page=`` lists ``user_repos`` (``add_repo``), the
most recently pushed first, with GitHub's ``Link`` header (``rel="next"``, ``rel="last"``).
``GET /repos/{o}/{r}/pulls/{n}`` gives one (its ``head.sha``: ``head_sha``), and
``.../pulls/{n}/reviews``, ``.../pulls/{n}/comments`` and ``.../commits/{sha}/check-runs`` give
what ``add_review``, ``add_review_comment`` and ``add_check_run`` stored, paginated
(``per_page``, ``page``, ``Link``). ``fail_with(status, headers=...)`` injects 5xx, rate limits
and the like.

Start it like the git server: ``url = await nursery.start(api.serve)`` or ``with api as url``.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from .threaded_http import QuietHandler, ThreadedHTTPFake

_PULLS = re.compile(r"^/repos/([^/]+)/([^/]+)/pulls/?$")
_PULL_PART = re.compile(r"^/repos/([^/]+)/([^/]+)/pulls/([0-9]+)(?:/(reviews|comments))?$")
_CHECK_RUNS = re.compile(r"^/repos/([^/]+)/([^/]+)/commits/([0-9a-fA-F]+)/check-runs$")


@dataclass
class ApiRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: object


@dataclass
class _Failure:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict = field(default_factory=lambda: {"message": "Server Error"})


class FakeGitHubAPI(ThreadedHTTPFake):
    def __init__(self, token: str, *, web_base: str = "https://github.example"):
        self.token = token
        self.web_base = web_base
        self.requests: list[ApiRequest] = []
        self.pulls: list[dict] = []  # each: owner, repo, number, head, base, title, body, draft, state
        self.user_repos: list[dict] = []  # as GitHub's /user/repos gives them
        # (owner, repo, number, "reviews" | "comments") or (owner, repo, sha, "check_runs"): items
        self.feedback: dict[tuple[str, str, object, str], list[dict]] = {}
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()

    def fail_with(
        self,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        message: str = "Server Error",
    ) -> None:
        with self._lock:
            self._failures += [_Failure(status, headers or {}, {"message": message})] * times

    def add_repo(self, full_name: str, *, pushed_at: str, private: bool = False, **extra: object) -> dict:
        """A repository of the token's user, in GitHub's shape (``extra`` overrides fields)."""
        owner, _, name = full_name.partition("/")
        repo = {
            "id": len(self.user_repos) + 1,
            "name": name,
            "full_name": full_name,
            "owner": {"login": owner},
            "private": private,
            "default_branch": "main",
            "clone_url": f"{self.web_base}/{full_name}.git",
            "html_url": f"{self.web_base}/{full_name}",
            "description": None,
            "pushed_at": pushed_at,
            **extra,
        }
        with self._lock:
            self.user_repos.append(repo)
        return repo

    def add_pull(self, owner: str, repo: str, *, head: str, base: str, title: str = "t") -> dict:
        with self._lock:
            return self._create(owner, repo, {"head": head, "base": base, "title": title})

    def _add(self, key: tuple[str, str, object, str], item: dict) -> dict:
        with self._lock:
            items = self.feedback.setdefault(key, [])
            item = {"id": 1000 + sum(map(len, self.feedback.values())), **item}
            items.append(item)
        return item

    def add_review(self, owner: str, repo: str, number: int, *, user: str, state: str, body: str) -> dict:
        return self._add(
            (owner, repo, number, "reviews"), {"user": {"login": user}, "state": state, "body": body}
        )

    def add_review_comment(
        self,
        owner: str,
        repo: str,
        number: int,
        *,
        user: str,
        path: str,
        line: int | None,
        body: str,
        in_reply_to: int | None = None,
    ) -> dict:
        item: dict = {"user": {"login": user}, "path": path, "line": line, "body": body}
        if in_reply_to is not None:
            item["in_reply_to_id"] = in_reply_to
        return self._add((owner, repo, number, "comments"), item)

    def add_check_run(
        self,
        owner: str,
        repo: str,
        sha: str,
        *,
        name: str,
        conclusion: str | None,
        title: str = "",
        summary: str = "",
    ) -> dict:
        status = "completed" if conclusion else "in_progress"
        item = {
            "name": name,
            "status": status,
            "conclusion": conclusion,
            "output": {"title": title, "summary": summary},
        }
        return self._add((owner, repo, sha, "check_runs"), item)

    def _create(self, owner: str, repo: str, data: dict) -> dict:
        number = len(self.pulls) + 1
        pr = {
            "owner": owner,
            "repo": repo,
            "number": number,
            "state": "open",
            "head": data["head"],
            "base": data["base"],
            "title": data.get("title", ""),
            "body": data.get("body", ""),
            "draft": data.get("draft", False),
            "html_url": f"{self.web_base}/{owner}/{repo}/pull/{number}",
            "head_sha": f"{number:040x}",
        }
        self.pulls.append(pr)
        return pr


class _Handler(QuietHandler):
    owner: FakeGitHubAPI

    def _send(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        api = self.owner
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            self._send(400, {"message": "Problems parsing JSON"})
            return
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with api._lock:
            api.requests.append(ApiRequest(self.command, parts.path, query, dict(self.headers.items()), data))
        if self.headers.get("Authorization") != f"Bearer {api.token}":
            self._send(401, {"message": "Bad credentials"})
            return
        with api._lock:
            failure = api._failures.pop(0) if api._failures else None
        if failure is not None:
            self._send(failure.status, failure.body, failure.headers)
            return
        if parts.path == "/user/repos" and self.command == "GET":
            self._user_repos(query)
            return
        if self.command == "GET" and self._feedback(parts.path, query):
            return
        match = _PULLS.match(parts.path)
        if not match:
            self._send(404, {"message": "Not Found"})
            return
        owner, repo = match.groups()
        if self.command == "GET":
            self._list(owner, repo, query)
        else:
            self._open(owner, repo, data)

    def _user_repos(self, query: dict[str, str]) -> None:
        api = self.owner
        per_page = min(int(query.get("per_page", "30")), 100)
        page = max(int(query.get("page", "1")), 1)
        with api._lock:
            repos = list(api.user_repos)
        if query.get("sort") == "pushed":
            repos.sort(key=lambda r: r["pushed_at"], reverse=query.get("direction", "desc") == "desc")
        last = max(1, -(-len(repos) // per_page))
        links = []
        base = f"http://{self.headers['Host']}/user/repos?per_page={per_page}"
        if page < last:
            links.append(f'<{base}&page={page + 1}>; rel="next"')
        links.append(f'<{base}&page={last}>; rel="last"')
        chunk = repos[(page - 1) * per_page : page * per_page]
        self._send(200, chunk, {"Link": ", ".join(links)})

    def _feedback(self, path: str, query: dict[str, str]) -> bool:
        """Answer a pull request, its reviews or comments, or a commit's check runs; False when
        ``path`` is none of them."""
        api = self.owner
        if match := _CHECK_RUNS.match(path):
            owner, repo, sha = match.groups()
            key: tuple[str, str, object, str] = (owner, repo, sha, "check_runs")
        elif match := _PULL_PART.match(path):
            owner, repo, number, part = match.groups()
            if part is None:
                with api._lock:
                    found = [
                        pr
                        for pr in api.pulls
                        if (pr["owner"], pr["repo"], pr["number"]) == (owner, repo, int(number))
                    ]
                if found:
                    self._send(200, _public(found[0]))
                else:
                    self._send(404, {"message": "Not Found"})
                return True
            key = (owner, repo, int(number), part)
        else:
            return False
        per_page = min(int(query.get("per_page", "30")), 100)
        page = max(int(query.get("page", "1")), 1)
        with api._lock:
            items = list(api.feedback.get(key, []))
        chunk = items[(page - 1) * per_page : page * per_page]
        base = f"http://{self.headers['Host']}{path}?per_page={per_page}"
        links = f'<{base}&page={page + 1}>; rel="next"' if page * per_page < len(items) else ""
        data: object = {"total_count": len(items), "check_runs": chunk} if key[3] == "check_runs" else chunk
        self._send(200, data, {"Link": links} if links else None)
        return True

    def _list(self, owner: str, repo: str, query: dict[str, str]) -> None:
        api = self.owner
        head = query.get("head")
        with api._lock:
            found = [
                pr
                for pr in api.pulls
                if pr["owner"] == owner
                and pr["repo"] == repo
                and pr["state"] == query.get("state", "open")
                and (head is None or f"{owner}:{pr['head']}" == head)
                and ("base" not in query or pr["base"] == query["base"])
            ]
        self._send(200, [_public(pr) for pr in found])

    def _open(self, owner: str, repo: str, data: object) -> None:
        api = self.owner
        # GitHub wants head, base and a title, and draft (when given) a JSON boolean.
        if (
            not isinstance(data, dict)
            or not all(data.get(k) for k in ("head", "base", "title"))
            or not isinstance(data.get("draft", False), bool)
        ):
            self._send(
                422,
                {
                    "message": "Validation Failed",
                    "errors": [{"resource": "PullRequest", "code": "missing_field"}],
                },
            )
            return
        with api._lock:
            exists = any(
                pr["owner"] == owner
                and pr["repo"] == repo
                and pr["state"] == "open"
                and pr["head"] == data["head"]
                and pr["base"] == data["base"]
                for pr in api.pulls
            )
            pr = None if exists else api._create(owner, repo, data)
        if pr is None:
            self._send(
                422,
                {
                    "message": "Validation Failed",
                    "errors": [
                        {
                            "resource": "PullRequest",
                            "code": "custom",
                            "message": f"A pull request already exists for {owner}:{data['head']}.",
                        }
                    ],
                },
            )
            return
        self._send(201, _public(pr))


def _public(pr: dict) -> dict:
    return {
        "number": pr["number"],
        "state": pr["state"],
        "title": pr["title"],
        "body": pr["body"],
        "draft": pr["draft"],
        "html_url": pr["html_url"],
        "head": {"ref": pr["head"], "label": f"{pr['owner']}:{pr['head']}", "sha": pr["head_sha"]},
        "base": {"ref": pr["base"]},
    }


FakeGitHubAPI.handler_class = _Handler
