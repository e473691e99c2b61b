"""Pull requests against the fake GitHub REST API."""

from __future__ import annotations

import socket
import time

import pytest

from daemon.errors import PermanentError, TransientError
from daemon.git import PullRequest, open_pull_request
from daemon.git.github import API_VERSION
from tests.fakes.github_api import FakeGitHubAPI

TOKEN = "ghp_fakeGitHubToken123"


@pytest.fixture
async def api(nursery):
    api = FakeGitHubAPI(TOKEN)
    await nursery.start(api.serve)
    return api


async def open_pr(api_url: str, token: str = TOKEN, head: str = "agentd/1234abcd-fix"):
    return await open_pull_request(
        api_url,
        token,
        PullRequest("octo", "project", head=head, base="main", title="Fix add", body="The agent fixed it."),
    )


async def test_opens_pull_request(api):
    url = await open_pr(api.url)

    assert url == "https://github.example/octo/project/pull/1"
    (request,) = api.requests
    assert (request.method, request.path) == ("POST", "/repos/octo/project/pulls")
    assert request.headers["Accept"] == "application/vnd.github+json"
    assert request.headers["X-GitHub-Api-Version"] == API_VERSION
    assert request.json == {
        "title": "Fix add",
        "head": "agentd/1234abcd-fix",
        "base": "main",
        "body": "The agent fixed it.",
        "draft": False,
    }


async def test_already_exists_returns_existing_url(api):
    api.add_pull("octo", "project", head="other", base="main")
    existing = api.add_pull("octo", "project", head="agentd/1234abcd-fix", base="main")

    assert await open_pr(api.url) == existing["html_url"]
    assert [(r.method, r.query.get("head")) for r in api.requests] == [
        ("POST", None),
        ("GET", "octo:agentd/1234abcd-fix"),
    ]
    assert len(api.pulls) == 2


async def test_second_call_is_idempotent(api):
    first = await open_pr(api.url)
    assert await open_pr(api.url) == first


async def test_bad_token_is_permanent_without_the_token(api):
    with pytest.raises(PermanentError, match="401") as info:
        await open_pr(api.url, token="ghp_wrongToken999")
    assert "ghp_wrongToken999" not in str(info.value)


async def test_server_error_is_transient(api):
    api.fail_with(500)
    with pytest.raises(TransientError, match="GitHub API error 500"):
        await open_pr(api.url)


async def test_not_found_is_permanent(api):
    api.fail_with(404, message="Not Found")
    with pytest.raises(PermanentError, match="octo/project not found"):
        await open_pr(api.url)


async def test_forbidden_without_rate_limit_is_permanent(api):
    api.fail_with(403, message="Resource not accessible by integration")
    with pytest.raises(PermanentError, match="not accessible"):
        await open_pr(api.url)


async def test_rate_limited_403_is_transient_with_retry_after(api):
    reset = int(time.time()) + 120
    api.fail_with(
        403,
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
        message="API rate limit exceeded",
    )
    with pytest.raises(TransientError) as info:
        await open_pr(api.url)
    assert 100 < info.value.retry_after <= 121


async def test_429_retry_after_header(api):
    api.fail_with(429, headers={"retry-after": "7"}, message="secondary rate limit")
    with pytest.raises(TransientError) as info:
        await open_pr(api.url)
    assert info.value.retry_after == 7


async def test_other_validation_error_is_permanent_with_githubs_words(api):
    api.fail_with(422, message="Validation Failed: No commits between main and agentd/x")
    with pytest.raises(PermanentError, match="No commits between"):
        await open_pr(api.url)


async def test_unreachable_api_is_transient():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError, match="could not reach the GitHub API"):
        await open_pr(f"http://127.0.0.1:{port}")


async def test_secondary_rate_limit_without_headers_is_transient(api):
    api.fail_with(403, message="You have exceeded a secondary rate limit")
    with pytest.raises(TransientError) as info:
        await open_pr(api.url)
    assert info.value.retry_after == 60
