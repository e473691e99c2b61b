"""The 4xx paths: 400, 401, 413, 422 and 429, each with the design's error shape."""

from __future__ import annotations

import time

import pytest

from daemon.rate_limit import RateLimiter

from .fakes.phone import running_daemon

TASK = {"repo_url": "file:///repo", "prompt": "go"}


def error_code(response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]["code"]


@pytest.mark.parametrize(
    "body, where",
    [
        ({"prompt": "go"}, "repo_url"),
        ({**TASK, "prompt": ""}, "prompt"),
        ({**TASK, "surprise": 1}, "surprise"),
        ({**TASK, "budget": {"max_turns": "5"}}, "budget.max_turns"),
        ({**TASK, "budget": {"max_turns": 0}}, "budget.max_turns"),
        ({**TASK, "budget": {"max_usd": -1}}, "budget.max_usd"),
        ({**TASK, "budget": {"max_turns": True}}, "budget.max_turns"),
        ({**TASK, "budget": {"max_cats": 3}}, "budget.max_cats"),
        ([1, 2], "body"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field(tmp_path, body, where):
    async with running_daemon(tmp_path) as server:
        _, token = await server.user("alice")
        async with server.client(token) as http:
            response = await http.post("/api/tasks", json=body)
    assert response.status_code == 422 and error_code(response) == "invalid_request"
    assert where.split(".")[0] in response.json()["error"]["message"] or where == "body"


async def test_bad_repo_urls_malformed_json_and_bad_queries(tmp_path):
    async with running_daemon(tmp_path, allow_local_remotes=False) as server:
        _, token = await server.user("alice")
        async with server.client(token) as http:
            for url in ["ext::sh -c evil", "file:///etc", "https://user:pw@github.com/a/b", "-u"]:
                response = await http.post("/api/tasks", json={**TASK, "repo_url": url})
                assert response.status_code == 422 and error_code(response) == "invalid_repo_url", url
            bad = await http.post(
                "/api/tasks", content=b"{nope", headers={"Content-Type": "application/json"}
            )
            assert bad.status_code == 400 and error_code(bad) == "bad_request"
            for params in [{"limit": 0}, {"limit": "x"}, {"cursor": "abc"}, {"status": "nope"}]:
                response = await http.get("/api/tasks", params=params)
                assert response.status_code == 422 and error_code(response) == "invalid_request", params
            response = await http.get("/api/tasks/x/events", params={"after": -1})
            assert response.status_code in (404, 422)
            assert (await http.get("/no/such/route")).status_code == 404


async def test_a_body_over_the_limit_is_413(tmp_path):
    async with running_daemon(tmp_path, http_max_body_bytes=4096) as server:
        _, token = await server.user("alice")
        async with server.client(token) as http:
            response = await http.post("/api/tasks", json={**TASK, "prompt": "x" * 10_000})
            assert response.status_code == 413 and error_code(response) == "too_large"
            # The same client goes on working (the server closed that connection cleanly).
            assert (await http.post("/api/tasks", json=TASK)).status_code == 201


async def test_task_creation_is_rate_limited_per_user_with_retry_after(tmp_path):
    async with running_daemon(tmp_path, rate_task_creates_burst=3, rate_task_creates_per_min=1) as server:
        _, alice = await server.user("alice")
        _, bob = await server.user("bob")
        async with server.client(alice) as http:
            codes = [(await http.post("/api/tasks", json=TASK)).status_code for _ in range(3)]
            limited = await http.post("/api/tasks", json=TASK)
        assert codes == [201] * 3
        assert limited.status_code == 429 and error_code(limited) == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        async with server.client(bob) as http:  # another user has a bucket of their own
            assert (await http.post("/api/tasks", json=TASK)).status_code == 201


async def test_missing_invalid_expired_and_revoked_tokens_are_401(tmp_path):
    async with running_daemon(tmp_path) as server:
        _, good = await server.user("alice")
        _, expired = await server.user("carol", expires_at=time.time() - 1)
        _, revoked = await server.user("dave")
        await server.store.revoke_user("dave")
        for token, header in [
            (None, None),
            ("agentd_forged", None),
            (expired, None),
            (revoked, None),
            (None, f"Basic {good}"),
            (None, "Bearer"),
        ]:
            async with server.client(token, headers={"Authorization": header} if header else {}) as http:
                response = await http.get("/api/tasks")
            assert response.status_code == 401 and error_code(response) == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        async with server.client(good) as http:
            assert (await http.get("/api/tasks")).status_code == 200


async def test_rate_limiter_refills_on_the_clock(autojump_clock):
    now = [0.0]
    limiter = RateLimiter(per_min=60, burst=2, clock=lambda: now[0])
    assert [limiter.take("u") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("u") == pytest.approx(1.0)
    now[0] = 0.5
    assert limiter.take("u") == pytest.approx(0.5)
    now[0] = 1.0
    assert limiter.take("u") == 0.0
    assert limiter.take("other") == 0.0
