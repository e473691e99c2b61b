"""The server side of the web client at ``/``, on a real daemon: its files from a fixed list
(traversal goes nowhere), its security headers, and the account API it needs beyond the task
routes: ``/api/me``, sign-out, ``/api/client-config``. Its GitHub parts (repositories, sign-in
back to its own origin) are in ``test_web_client_github.py``, the task diff in
``test_web_client_diff.py``."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import trio
from trio_websocket import ConnectionClosed

from daemon.store import open_store
from daemon.tokens import hash_token
from daemon.web import client
from daemon.web.headers import CONTENT_SECURITY_POLICY as OPERATOR_API_POLICY

from .fakes.phone import recv_json, running_daemon, send_json

# -- the files ----------------------------------------------------------------------------------


@pytest.fixture
def app_files(tmp_path, monkeypatch):
    """A client of known files, some of which must never be served, loaded as at import."""
    root = tmp_path / "app"
    (root / "vendor").mkdir(parents=True)
    files = {
        "index.html": b"<!doctype html><title>agentd</title>",
        "app.js": b"import './live.js';",
        "live.js": b"export {};",
        "app.css": b"body{}",
        "sw.js": b"self.addEventListener('fetch', () => {});",
        "manifest.webmanifest": b'{"name": "agentd"}',
        "icon.svg": b"<svg/>",
        "icon-192.png": b"\x89PNG\r\n\x1a\n",
        "vendor/lib.js": b"export const lib = 1;",
        ".secret.js": b"hidden",
        "notes.unknown": b"no type",
    }
    for name, body in files.items():
        (root / name).write_bytes(body)
    (root / "linked.js").symlink_to(tmp_path / "outside.js")
    (tmp_path / "outside.js").write_bytes(b"outside")
    monkeypatch.setattr(client, "ASSETS", client.load_assets(root))
    return files


async def raw_get(server, target: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """One GET of ``target`` exactly as written (no client normalises its dots or escapes)."""
    url = urlsplit(server.url)
    lines = [f"GET {target} HTTP/1.1", f"Host: {url.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    answer = b""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(url.hostname, url.port)
        async with stream:
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
            while chunk := await stream.receive_some(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    found = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), found, body


def assert_client_headers(headers) -> None:
    csp = headers["content-security-policy"]
    assert csp.startswith(OPERATOR_API_POLICY)  # the operator API's, not a copy of it
    assert "manifest-src 'self'" in csp and "worker-src 'self'" in csp
    assert "unsafe-inline" not in csp and "connect-src 'self'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer"


async def test_the_shell_and_its_files_are_served_with_their_types_and_headers(tmp_path, app_files):
    async with running_daemon(tmp_path) as server:
        async with server.client() as http:
            for path, name, content_type in [
                ("/", "index.html", "text/html; charset=utf-8"),
                ("/app/app.js", "app.js", "text/javascript; charset=utf-8"),
                ("/app/live.js", "live.js", "text/javascript; charset=utf-8"),
                ("/app/vendor/lib.js", "vendor/lib.js", "text/javascript; charset=utf-8"),
                ("/app/app.css", "app.css", "text/css; charset=utf-8"),
                ("/app/icon.svg", "icon.svg", "image/svg+xml"),
                ("/app/icon-192.png", "icon-192.png", "image/png"),
                ("/manifest.webmanifest", "manifest.webmanifest", "application/manifest+json"),
                ("/sw.js", "sw.js", "text/javascript; charset=utf-8"),
            ]:
                got = await http.get(path)
                assert (got.status_code, got.content) == (200, app_files[name]), path
                assert got.headers["content-type"] == content_type, path
                assert got.headers["cache-control"] == "no-cache", path
                assert_client_headers(got.headers)
                # Revalidation: the same strong ETag gives a 304 with the same headers, no body.
                etag = got.headers["etag"]
                assert etag.startswith('"') and not etag.startswith('W/"')
                again = await http.get(path, headers={"If-None-Match": etag})
                assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
                assert_client_headers(again.headers)
            worker = await http.get("/sw.js")
            assert worker.headers["service-worker-allowed"] == "/"
            stale = await http.get("/", headers={"If-None-Match": '"0123"'})
            assert stale.status_code == 200 and stale.content == app_files["index.html"]


async def test_no_request_path_reaches_the_filesystem(tmp_path, app_files):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "config").write_text("secret")
    async with running_daemon(tmp_path) as server:
        for target in [
            "/app/../config",
            "/app/%2e%2e/x",
            "/app/%2e%2e%2fconfig",
            "/app/..%2f..%2fsecret.key",
            "/app/vendor/../app.js",
            "/app/.secret.js",
            "/app/notes.unknown",
            "/app/linked.js",
            "/app/nothing.js",
            "/app/sw.js",  # served at /sw.js only
            "/app/index.html",  # served at / only
            "/app/",
            "/index.html",
            "/nowhere",
        ]:
            status, headers, body = await raw_get(server, target)
            assert status == 404, target
            assert headers["content-type"] == "application/json", target
            assert b'"not_found"' in body and b"secret" not in body and b"outside" not in body, target
        # Slashes are merged (werkzeug's rule for every route): a redirect here, then a 404.
        for target in ["/app//etc/passwd", "/app/%2Fetc%2Fpasswd"]:
            status, headers, _ = await raw_get(server, target)
            assert (status, headers["location"]) == (308, server.url + "/app/etc/passwd"), target
        status, headers, body = await raw_get(server, "/app/etc/passwd")
        assert status == 404 and b'"not_found"' in body


async def test_the_real_client_directory_is_served(tmp_path):
    """Whatever the client's directory holds at import, with the icons always there."""
    assert {"icon.svg", "icon-192.png", "icon-512.png"} <= set(client.ASSETS)
    on_disk = {
        path.relative_to(client.APP_DIR).as_posix()
        for path in client.APP_DIR.rglob("*")
        if path.is_file() and path.suffix in client.CONTENT_TYPES and not path.name.startswith(".")
    }
    assert set(client.ASSETS) == on_disk
    async with running_daemon(tmp_path) as server:
        async with server.client() as http:
            for name in ["icon-192.png", "icon-512.png"]:
                got = await http.get(f"/app/{name}")
                assert got.status_code == 200 and got.content.startswith(b"\x89PNG\r\n\x1a\n")
                size = int.from_bytes(got.content[16:20], "big")
                assert f"icon-{size}.png" == name  # IHDR's width


# -- the account --------------------------------------------------------------------------------


async def test_me_says_who_the_token_is(tmp_path):
    async with running_daemon(tmp_path) as server:
        alice, token = await server.user("alice")
        await server.store.upsert_user("olga", is_operator=True)
        olga, operator = await server.user("olga")
        async with server.client(token) as http:
            me = (await http.get("/api/me")).json()
            assert me == {"user_id": alice.id, "login": "alice", "is_operator": False, "github_linked": False}
            await server.store.set_github_token(alice.id, server.daemon.secrets.encrypt("gho_x"))
            assert (await http.get("/api/me")).json()["github_linked"] is True
        async with server.client(operator) as http:
            assert (await http.get("/api/me")).json()["is_operator"] is True
        async with server.client() as anonymous:
            assert (await anonymous.get("/api/me")).status_code == 401


async def test_sign_out_revokes_only_that_token_and_closes_its_websockets_at_once(tmp_path):
    # The sweep re-checks tokens every 30 s: a close within seconds is the sign-out's own.
    async with running_daemon(tmp_path, ws_reauth_interval_s=30) as server:
        _, phone = await server.user("alice")
        _, laptop = await server.user("alice")
        async with server.ws(phone) as ws_phone, server.ws(laptop) as ws_laptop:
            for ws in (ws_phone, ws_laptop):
                await send_json(ws, {"type": "ping"})
                assert await recv_json(ws) == {"type": "pong"}
            async with server.client(phone) as http:
                out = await http.post("/api/auth/signout")
                assert (out.status_code, out.content) == (204, b"")
                assert (await http.get("/api/me")).status_code == 401
                assert (await http.post("/api/auth/signout")).status_code == 401
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws_phone, timeout=5)
            assert closed.value.reason.code == 4401
            await send_json(ws_laptop, {"type": "ping"})
            assert await recv_json(ws_laptop) == {"type": "pong"}
        async with server.client(laptop) as http:
            assert (await http.get("/api/me")).json()["login"] == "alice"
        async with server.ws(phone) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.reason.code == 4401


async def test_a_token_revoked_elsewhere_closes_its_websocket_at_the_sweep(tmp_path):
    """Another daemon on the same store revokes it: this one's sweep sees it."""
    async with running_daemon(tmp_path, ws_reauth_interval_s=0.2) as server:
        _, token = await server.user("alice")
        async with server.ws(token) as ws:
            await send_json(ws, {"type": "ping"})
            assert await recv_json(ws) == {"type": "pong"}
            assert await server.store.revoke_token(hash_token(token)) is True
            assert await server.store.revoke_token(hash_token(token)) is False
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await recv_json(ws)
            assert closed.value.reason.code == 4401


@pytest.fixture(params=["sqlite", "postgres"])
async def any_store(request, tmp_path):
    if request.param == "sqlite":
        store = await open_store(tmp_path / "data")
    else:
        store = await open_store(tmp_path, request.getfixturevalue("pg_dsn"))
    try:
        yield store
    finally:
        await store.aclose()


async def test_revoking_one_token_leaves_the_others(any_store):
    user = await any_store.upsert_user("alice")
    for name in ("phone", "laptop"):
        await any_store.add_token(user.id, hash_token(name))
    assert await any_store.revoke_token(hash_token("phone")) is True
    assert await any_store.revoke_token(hash_token("phone")) is False
    assert await any_store.revoke_token(hash_token("never issued")) is False
    assert await any_store.user_by_token_hash(hash_token("phone")) is None
    assert (await any_store.user_by_token_hash(hash_token("laptop"))).login == "alice"


async def test_client_config_needs_no_token(tmp_path):
    async with running_daemon(tmp_path, budget_max_usd=2.5, budget_cap_turns=90) as server:
        async with server.client() as http:
            config = (await http.get("/api/client-config")).json()
    assert config["github_sign_in"] is False
    free = {f"{kind}_usd_per_mtok": 0.0 for kind in ("input", "output", "cache_write", "cache_read")}
    assert config["models"] == [{"id": "scripted", "default": True, "price": free}]
    assert config["budget"]["defaults"] == {"max_turns": 60, "max_tokens": 3_000_000, "max_usd": 2.5}
    assert config["budget"]["caps"] == {"max_turns": 90, "max_tokens": 20_000_000, "max_usd": 50.0}
    github = dict(github_client_id="cid", github_client_secret="s", model="anthropic", anthropic_model="m1")
    m1 = {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 5.0}  # a model needs a price row
    async with running_daemon(tmp_path / "2", **github, models={"m1": m1}) as server:
        async with server.client() as http:
            config = (await http.get("/api/client-config")).json()
    assert config["github_sign_in"] is True
    assert [(m["id"], m["default"]) for m in config["models"]] == [("m1", True)]
    cache = {"cache_write_usd_per_mtok": 1.25, "cache_read_usd_per_mtok": 0.1}  # 1.25x and 0.1x input
    assert config["models"][0]["price"] == {**m1, **cache}


async def test_the_new_operations_are_in_the_openapi_document(tmp_path):
    async with running_daemon(tmp_path) as server:
        async with server.client() as http:
            paths = (await http.get("/openapi.json")).json()["paths"]
    for path, method in [
        ("/api/me", "get"),
        ("/api/auth/signout", "post"),
        ("/api/client-config", "get"),
        ("/api/repos", "get"),
        ("/api/tasks/{task_id}/diff", "get"),
    ]:
        assert method in paths[path], (path, method)
    assert not any(p in paths for p in ["/", "/sw.js", "/manifest.webmanifest", "/app/{name}"])
