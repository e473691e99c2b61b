"""Fuzzing the HTTP API (design §5) on a real daemon: no 5xx, every error a clear JSON 4xx.

Requests are generated from the daemon's own /openapi.json: every documented operation, plus
undocumented methods and paths, with bodies valid for the schema, mutated, of the wrong type, not
JSON at all, nested past the parser's limits or too large; odd query values; missing, broken,
expired and revoked tokens; task ids that do not exist or are another user's. For every answer:

- never a 5xx (except /readyz's documented 503 while not ready);
- an error is a 4xx from the documented set with exactly ``{"error":{"code","message"}}``;
- nothing of another user's tasks shows, and their ids are a 404 (never a 409 or a 2xx);
- the server still answers /healthz afterwards.

Hypothesis with our own strategies, not schemathesis: schemathesis drives requests through its
own synchronous runner and ``requests``/``httpx`` clients, while this daemon runs in the test's
Trio loop and the project's client is ``httpx2``; bridging both ways cost more than the ~60 lines
of ``fuzz_support.from_schema`` that turn the OpenAPI schemas into strategies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, strategies as st

from .fakes.phone import running_daemon
from .fuzz_support import (
    LIVE_SUPERVISOR,
    ODD_STRINGS,
    TEXT,
    deep_nesting,
    drive,
    dumps,
    from_schema,
    fuzz_settings,
    json_values,
    on_loop,
    seeded,
    tally,
)

SECRET = "bob-secret-marker-7f3a"  # in bob's prompts: must never reach alice
ERROR_STATUSES = {400, 401, 404, 405, 409, 413, 415, 422, 429}
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
NOWHERE = "01m8bz0000000000000000000"  # looks like a task id, names none


@dataclass
class World:
    server: Any
    http: Any
    alice_id: int
    tokens: dict[str, str]  # name -> token: alice, expired, revoked
    alice_tasks: list[str]
    bob_tasks: list[str]
    openapi: dict[str, Any]
    operations: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)

    def __repr__(self) -> str:  # Hypothesis prints the strategies' arguments
        return "World(...)"


@pytest.fixture
async def world(tmp_path):
    async with running_daemon(
        tmp_path, rate_task_creates_per_min=1e9, rate_task_creates_burst=10**9
    ) as server:
        alice, alice_token = await server.user("alice")
        _, bob_token = await server.user("bob")
        _, expired = await server.user("carol", expires_at=1.0)
        _, revoked = await server.user("dave")
        await server.store.revoke_user("dave")
        await server.store.upsert_user("olga", is_operator=True)  # the operator surface, /admin
        _, operator = await server.user("olga")
        async with server.client() as http:
            alice_tasks, bob_tasks = [], []
            for token, prompt, ids in (
                (alice_token, "alice's work", alice_tasks),
                (bob_token, f"{SECRET} bob's work", bob_tasks),
            ):
                for _ in range(2):
                    response = await http.post(
                        "/api/tasks",
                        json={"repo_url": "file:///r", "prompt": prompt},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    assert response.status_code == 201, response.text
                    ids.append(response.json()["id"])
            if not LIVE_SUPERVISOR:
                server.daemon.supervisor.drain()
            openapi = (await http.get("/openapi.json")).json()
            # Signing out would end alice's token for every later example (test_web_client_api).
            openapi["paths"].pop("/api/auth/signout")
            operations = [
                (method.upper(), path, op)
                for path, ops in openapi["paths"].items()
                for method, op in ops.items()
            ]
            yield World(
                server,
                http,
                alice.id,
                {"alice": alice_token, "expired": expired, "revoked": revoked, "operator": operator},
                alice_tasks,
                bob_tasks,
                openapi,
                operations,
            )


# ---------------------------------------------------------------------------- strategies

# Header values: visible ASCII, no surrounding blanks (HTTP itself cannot carry those).
ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80).map(str.strip)


def task_ids(world: World) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(world.alice_tasks + world.bob_tasks + [NOWHERE]),
        TEXT.filter(bool),
        st.sampled_from(["a" * 64, "a" * 65, "a/b", ".", ".."]),
    )


def authorization(world: World) -> st.SearchStrategy[str | None]:
    return st.one_of(
        st.sampled_from(
            [f"Bearer {world.tokens['alice']}"] * 4
            + [
                None,
                "",
                "Bearer",
                f"bearer {world.tokens['alice']}",
                f"Basic {world.tokens['alice']}",
                f"Bearer {world.tokens['expired']}",
                f"Bearer {world.tokens['revoked']}",
                "Bearer " + "x" * 600,
                f"Bearer {world.tokens['operator']}",
                f"Bearer {world.tokens['alice']}x",
            ]
        ),
        ASCII.map(lambda s: f"Bearer {s}".strip()),
    )


# Numbers at and past every edge: the schema's bounds, 32/63/64 bits, beyond any integer type.
EDGES = st.sampled_from(
    [
        "-1",
        "0",
        "1",
        "200",
        "201",
        "1000",
        "1001",
        str(2**31),
        str(2**63 - 1),
        str(2**63),
        "9" * 19,
        "9" * 40,
        "-" + "9" * 40,
        "1e3",
        "2.5",
        " 5",
        "0x10",
        "true",
        "",
    ]
)


def query_value(schema: dict[str, Any] | None, components: dict[str, Any]) -> st.SearchStrategy:
    if schema is None:
        return st.one_of(EDGES, TEXT)
    valid = (
        from_schema(schema, components)
        .filter(lambda v: v is not None)
        .map(lambda v: v if isinstance(v, str) else json.dumps(v))
    )
    return st.one_of(EDGES, valid, EDGES, TEXT)


def body(op: dict[str, Any] | None, components: dict[str, Any]) -> st.SearchStrategy[bytes | None]:
    schema = (op or {}).get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    raw: list[st.SearchStrategy[Any]] = [
        st.none(),
        json_values().map(dumps),
        st.binary(max_size=64),
        deep_nesting(),
        st.sampled_from(
            [
                "",
                "{",
                '{"a":1,}',
                "[1,2",
                "\ufeff{}",
                '"\\ud800"',
                "{}" * 3,
                "9" * 5000,
                "NaN",
                "1e999",
                "x" * (1024 * 1024 + 1),
            ]
        ),
    ]
    if schema is not None:
        valid = from_schema(schema, components)
        raw.append(valid.map(dumps))
        raw.append(st.tuples(valid, TEXT, json_values()).map(lambda t: dumps(_mutate(*t))))
    return st.one_of(raw).map(lambda b: b.encode("utf-8", "surrogatepass") if isinstance(b, str) else b)


def _mutate(value: Any, key: str, replacement: Any) -> Any:
    """A valid body made wrong in one place: a key's value replaced, or one key dropped."""
    if not isinstance(value, dict) or not value:
        return replacement
    value = dict(value)
    victim = sorted(value)[len(key) % len(value)]
    if len(key) % 3 == 0:
        del value[victim]
    elif len(key) % 3 == 1:
        value[key or "extra"] = replacement
    else:
        value[victim] = replacement
    return value


@st.composite
def requests(draw: st.DrawFn, world: World) -> tuple[str, str, list, dict, bytes | None]:
    components = world.openapi.get("components", {}).get("schemas", {})
    documented = st.sampled_from(world.operations)
    odd_method = st.tuples(
        st.sampled_from(METHODS), st.sampled_from(sorted(world.openapi["paths"])), st.none()
    )
    odd_path = st.tuples(
        st.sampled_from(METHODS),
        st.one_of(
            TEXT.map(lambda s: "/api/tasks/x/" + quote(s, safe="")),
            TEXT.map(lambda s: "/" + quote(s, safe="/")),
        ),
        st.none(),
    )
    method, template, op = draw(st.one_of(documented, documented, documented, odd_method, odd_path))
    task_id = draw(task_ids(world))
    raw_slash = draw(st.booleans()) and "/" in task_id
    path = template.replace("{task_id}", task_id if raw_slash else quote(task_id, safe=""))
    params: list[tuple[str, str]] = []
    for parameter in (op or {}).get("parameters", []):
        if parameter["in"] == "query" and draw(st.booleans()):
            params.append((parameter["name"], draw(query_value(parameter["schema"], components))))
    params += draw(
        st.lists(
            st.tuples(
                st.sampled_from(["limit", "after", "cursor", "status", "x"]), query_value(None, components)
            ),
            max_size=2,
        )
    )
    headers = {}
    auth = draw(authorization(world))
    if auth is not None:
        headers["Authorization"] = auth
    content_type = draw(
        st.sampled_from(
            ["application/json"] * 4
            + [
                None,
                "text/plain",
                "application/json; charset=utf-16",
                "multipart/form-data",
                "application/x-www-form-urlencoded",
            ]
        )
    )
    if content_type:
        headers["Content-Type"] = content_type
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(st.one_of(ASCII, st.just("k" * 201)))
    return method, path, params, headers, draw(body(op, components))


# ---------------------------------------------------------------------------- the checks


async def exchange(world: World, request: tuple, bob_target: bool) -> None:
    method, path, params, headers, content = request
    response = await world.http.request(method, path, params=params, headers=headers, content=content)
    status = response.status_code
    tally("http", method, _route(path, world), status)
    assert status < 500 or (path == "/readyz" and status == 503), (status, response.text)
    text = response.text
    # Operators see every task on the admin surface; everywhere else nobody sees bob's.
    operator_view = path.startswith("/admin") and world.tokens["operator"] in str(headers)
    if status >= 400 and method != "HEAD" and not (path == "/readyz" and status == 503):
        # 403 is for the operator surface only: for a task it would confirm that it exists.
        allowed = ERROR_STATUSES | ({403} if path.startswith("/admin") else set())
        assert status in allowed, (status, text)
        error = response.json()
        assert list(error) == ["error"] and sorted(error["error"]) == ["code", "message"], text
        assert isinstance(error["error"]["code"], str) and error["error"]["code"]
        assert isinstance(error["error"]["message"], str) and error["error"]["message"]
    if operator_view:
        pass
    elif bob_target:  # another user's task: exactly like one that does not exist
        assert not 200 <= status < 300 and status != 409, (status, text)
    if not operator_view:
        assert SECRET not in text
    if (
        method != "HEAD"
        and not operator_view
        and 200 <= status < 300
        and response.headers.get("content-type", "").startswith("application/json")
    ):
        for task_id in world.bob_tasks:
            assert task_id not in text
        _assert_only_user(response.json(), world.alice_id)
    health = await world.http.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


def _route(path: str, world: World) -> str:
    for task_id in world.alice_tasks + world.bob_tasks:
        path = path.replace(task_id, "{id}")
    return path if len(path) < 40 else path[:37] + "..."


def _assert_only_user(value: Any, user_id: int) -> None:
    if isinstance(value, dict):
        if "user_id" in value:
            assert value["user_id"] == user_id, value
        for item in value.values():
            _assert_only_user(item, user_id)
    elif isinstance(value, list):
        for item in value:
            _assert_only_user(item, user_id)


# ----------------------------------------------------------------------------- properties


async def test_any_request_to_any_route_is_answered_without_a_5xx(world):
    @fuzz_settings(150)
    @seeded
    @given(data=st.data())
    def prop(data):
        request = data.draw(requests(world), label="request")
        bob_target = any(task_id in request[1] for task_id in world.bob_tasks)
        on_loop(exchange, world, request, bob_target)

    await drive(prop)


@st.composite
def task_requests(draw: st.DrawFn, world: World, ids: list[str]) -> tuple:
    """A documented task route on one of ``ids``, alice's token, odd query values and bodies."""
    components = world.openapi.get("components", {}).get("schemas", {})
    task_routes = [op for op in world.operations if op[1].startswith("/api/tasks/{task_id}")]
    method, template, op = draw(st.sampled_from(task_routes))
    params = [
        (p["name"], draw(query_value(p["schema"], components)))
        for p in op.get("parameters", [])
        if p["in"] == "query" and draw(st.sampled_from([True, True, False]))
    ]
    content = draw(body(op, components).filter(lambda b: b is None or len(b) < 4096))
    headers = {"Authorization": f"Bearer {world.tokens['alice']}", "Content-Type": "application/json"}
    return method, template.replace("{task_id}", draw(st.sampled_from(ids))), params, headers, content


async def test_another_users_task_is_a_404_whatever_the_request(world):
    @fuzz_settings(60)
    @seeded
    @given(request=task_requests(world, world.bob_tasks))
    def prop(request):
        on_loop(exchange, world, request, True)

    await drive(prop)
    # Bob's tasks are untouched by all of it: no message reached them, none was cancelled.
    for task_id in world.bob_tasks:
        assert await world.server.store.list_messages(task_id) == []
        assert (await world.server.store.get_task(task_id)).status.value != "cancelled"


async def test_the_owners_task_routes_take_any_query_and_body(world):
    @fuzz_settings(100)
    @seeded
    @given(request=task_requests(world, world.alice_tasks))
    def prop(request):
        on_loop(exchange, world, request, False)

    await drive(prop)


async def test_listing_with_any_query_shows_only_the_callers_tasks(world):
    @fuzz_settings(60)
    @seeded
    @given(
        params=st.lists(
            st.tuples(
                st.sampled_from(["status", "limit", "cursor"]),
                st.one_of(
                    ODD_STRINGS,
                    st.sampled_from(["queued", "succeeded", "1", "200", "201", "0"]),
                    st.integers(-10, 10**20).map(str),
                ),
            ),
            max_size=4,
        )
    )
    def prop(params):
        headers = {"Authorization": f"Bearer {world.tokens['alice']}"}
        on_loop(exchange, world, ("GET", "/api/tasks", params, headers, None), False)

    await drive(prop)
