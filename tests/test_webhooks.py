"""Webhooks end to end: the signature scheme, the phone routes (one user's webhooks are another's
404), the address rules with the connection pinned to the address checked, a real daemon killed
with SIGKILL between the commit and the delivery, and agentctl's webhook and delivery commands."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx2
import pytest
import trio

from daemon.config import Settings
from daemon.notify.channels import Verdict
from daemon.notify.outbox import Delivery
from daemon.notify.signing import sign, verify_signature
from daemon.notify.webhooks import WebhookChannel
from tests.agent_env import bare_repo, text
from tests.daemon_process import DaemonProcess
from tests.fakes.phone import running_daemon
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.test_api_tasks import undescribed

SCRIPT = {"turns": [{"content": [text("Nothing to change.")]}]}


def test_the_readme_verification_snippet_accepts_a_signed_body_and_nothing_else():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Notifications and webhooks", 1)[1]
    snippet = section.split("```python", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(snippet, scope)
    body, now = b'{"id":"dlv_1","kind":"test"}', int(time.time())
    assert scope["verify"]("whsec_k", sign("whsec_k", body, now), body)
    assert not scope["verify"]("whsec_k", sign("whsec_k", body, now - 301), body)
    assert not scope["verify"]("whsec_k", sign("whsec_other", body, now), body)


def test_signature_scheme():
    body = b'{"id":"dlv_1"}'
    header = sign("whsec_s", body, 1_800_000_000)
    assert header.startswith("t=1800000000,v1=")
    assert verify_signature("whsec_s", header, body, now=1_800_000_100)
    assert not verify_signature("whsec_s", header, body + b" ", now=1_800_000_100)  # tampered
    assert not verify_signature("whsec_other", header, body, now=1_800_000_100)
    assert not verify_signature("whsec_s", header, body, now=1_800_000_301)  # replayed too late
    assert not verify_signature("whsec_s", None, body, now=1_800_000_000)
    rolled = f"{header},v1={'0' * 64}"
    assert verify_signature("whsec_s", rolled, body, now=1_800_000_000)


async def test_phone_routes_and_another_users_404(tmp_path):
    async with trio.open_nursery() as nursery:
        receiver = WebhookReceiver()
        url = await nursery.start(receiver.serve)
        async with running_daemon(tmp_path) as server:
            _, alice = await server.user("alice")
            _, bob = await server.user("bob")
            async with server.client(alice) as http, server.client(bob) as other:
                made = await http.post("/api/webhooks", json={"url": f"{url}/a", "events": ["task.failed"]})
                assert made.status_code == 201, made.text
                hook = made.json()
                receiver.secret = hook["secret"]
                listed = (await http.get("/api/webhooks")).json()["webhooks"]
                assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
                tested = await http.post(f"/api/webhooks/{hook['id']}/test")
                assert tested.status_code == 202 and tested.json()["kind"] == "test"
                (got,) = await receiver.wait_for(1)
                assert got.verified and got.headers["agentd-event"] == "test"
                assert json.loads(got.body)["id"] == tested.json()["id"]
                for method, path in (
                    ("DELETE", f"/api/webhooks/{hook['id']}"),
                    ("POST", f"/api/webhooks/{hook['id']}/test"),
                    ("POST", f"/api/deliveries/{tested.json()['id']}/redeliver"),
                ):
                    assert (await other.request(method, path)).status_code == 404, path
                assert (await other.get("/api/webhooks")).json() == {"webhooks": []}
                assert (await other.get("/api/deliveries")).json() == {"deliveries": []}
                assert (await other.get(f"/api/deliveries?target={hook['id']}")).status_code == 404
                # The store's write after the answer has no event to wait on: look until it is there.
                while (await http.get("/api/deliveries?status=delivered")).json()["deliveries"] == []:  # noqa: ASYNC110
                    await trio.sleep(0.02)
                metrics = (await http.get("/metrics")).text
                assert 'agentd_notify_deliveries_total{kind="webhook",verdict="delivered"} 1.0' in metrics
                assert "agentd_notify_pending" in metrics
                ntfy = await http.put("/api/notify/ntfy", json={"url": f"{url}/topic", "token": "tk_x"})
                assert ntfy.status_code == 200 and ntfy.json()["id"].startswith("nt_")
                assert (await http.delete(f"/api/webhooks/{hook['id']}")).status_code == 204
                assert (await http.get("/api/webhooks")).json() == {"webhooks": []}
                spec = (await http.get("/openapi.json")).json()
        nursery.cancel_scope.cancel()
    for path in (
        "/api/webhooks",
        "/api/webhooks/{target_id}",
        "/api/webhooks/{target_id}/test",
        "/api/notify/ntfy",
        "/api/deliveries",
    ):
        assert path in spec["paths"], path
    assert [
        m
        for m in undescribed(spec)
        if "webhook" in m.lower() or "deliver" in m.lower() or "ntfy" in m.lower()
    ] == []


async def test_private_addresses_refused_unless_the_operator_allows_them(tmp_path):
    async with running_daemon(tmp_path, allow_local_remotes=False, allow_private_remotes=False) as server:
        _, token = await server.user("alice")
        async with server.client(token) as http:
            for url in (
                "https://127.0.0.1/hook",
                "https://10.0.0.8/hook",
                "https://169.254.169.254/",
                "http://example.com/",
            ):
                refused = await http.post("/api/webhooks", json={"url": url})
                assert refused.status_code == 422, (url, refused.text)
            assert (
                "allow_private_remotes"
                in (await http.post("/api/webhooks", json={"url": "https://192.168.1.2/"})).text
            )
            assert (
                await http.put("/api/notify/ntfy", json={"url": "https://127.0.0.1/t"})
            ).status_code == 422


async def test_the_request_goes_to_the_address_checked(monkeypatch):
    """A name is resolved and checked once; the connection goes to that address, with the name
    in Host: an answer that changes afterwards (DNS rebinding) is never used."""
    answers = ["127.0.0.1", "169.254.169.254"]

    class Resolver(trio.abc.HostnameResolver):
        async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
            address = answers.pop(0)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

        async def getnameinfo(self, sockaddr, flags):
            raise NotImplementedError

    trio.socket.set_custom_hostname_resolver(Resolver())
    try:
        async with trio.open_nursery() as nursery:
            receiver = WebhookReceiver(secret="whsec_k")
            url = await nursery.start(receiver.serve)
            port = url.rsplit(":", 1)[1]
            channel = WebhookChannel(Settings(allow_private_remotes=True))
            delivery = Delivery("dlv_x", "wh_x", 1, None, "test", '{"id":"dlv_x"}', "pending", 0, 0.0,
                                None, None, None, None, 0.0, None, 0.0)  # fmt: skip
            target = type("T", (), {"url": f"http://hooks.example:{port}/in"})()
            attempt = await channel.deliver(delivery, target, "whsec_k")
            assert attempt.verdict is Verdict.DELIVERED, attempt
            (got,) = receiver.requests
            assert got.headers["host"] == f"hooks.example:{port}" and got.target == "/in" and got.verified
            assert answers == ["169.254.169.254"]  # asked once
            await channel.aclose()
            nursery.cancel_scope.cancel()
    finally:
        trio.socket.set_custom_hostname_resolver(None)


def ok(result) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def _agentctl(daemon: DaemonProcess, *args: str) -> str:
    return ok(await trio.to_thread.run_sync(lambda: daemon.agentctl(*args)))


@pytest.mark.slow
async def test_sigkill_between_commit_and_delivery_then_restart_delivers_once_per_id(tmp_path, backend):
    bare = bare_repo(tmp_path)
    hold = trio.Event()
    receiver = WebhookReceiver(hold=hold)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(receiver.serve)
        daemon = DaemonProcess(tmp_path / "data", script=SCRIPT)
        await trio.to_thread.run_sync(daemon.start)
        try:
            token = (await _agentctl(daemon, "user-add", "alice")).strip()
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx2.AsyncClient(base_url=daemon.url, headers=headers) as http:
                made = await http.post(
                    "/api/webhooks", json={"url": f"{url}/hook", "events": ["task.succeeded"]}
                )
                receiver.secret = made.json()["secret"]
                created = await http.post("/api/tasks", json={"repo_url": str(bare), "prompt": "Look around"})
                assert created.status_code == 201, created.text
            with trio.fail_after(60):
                await receiver.wait_for(1)  # committed, claimed and sent: the answer is held back
            daemon.proc.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(daemon.proc.wait)
        finally:
            daemon.kill()
        hold.set()  # the receiver answers the dead connection: it has the delivery, the daemon never heard
        again = DaemonProcess(tmp_path / "data", script=SCRIPT)
        again.socket = daemon.socket
        await trio.to_thread.run_sync(again.start)
        try:
            with trio.fail_after(60):
                await receiver.wait_for(2)
            (first,) = {r.headers["agentd-delivery"] for r in receiver.requests}
            assert await trio.to_thread.run_sync(again.wait_for_log, f"delivery {first} delivered")
            assert "sent again" in "".join(again.log)
        finally:
            again.kill()
        nursery.cancel_scope.cancel()
    ids = {r.headers["agentd-delivery"] for r in receiver.requests}
    assert len(ids) == 1 and receiver.accepted == list(ids)
    assert all(r.verified for r in receiver.requests) and len(receiver.requests) == 2
    assert {json.loads(r.body)["kind"] for r in receiver.requests} == {"task.succeeded"}


@pytest.mark.slow
async def test_agentctl_webhooks_failed_deliveries_and_redeliver(tmp_path, backend):
    config = tmp_path / "agentd.toml"
    config.write_text("notify_retry_base_s = 0.05\nnotify_retry_cap_s = 0.2\nnotify_max_attempts = 3\n")
    receiver = WebhookReceiver(answers=[500, 503, 500])
    async with trio.open_nursery() as nursery:
        url = await nursery.start(receiver.serve)
        daemon = DaemonProcess(tmp_path / "data", script=SCRIPT, args=["--config", str(config)])
        await trio.to_thread.run_sync(daemon.start)
        try:
            added = await trio.to_thread.run_sync(lambda: daemon.agentctl("webhook-add", f"{url}/ops"))
            secret = ok(added).strip()
            assert secret.startswith("whsec_") and "shown only once" in added.stderr
            receiver.secret = secret
            (hook,) = json.loads(await _agentctl(daemon, "--json", "webhooks"))
            assert hook["user_id"] is None and "secret" not in hook
            sent = json.loads(await _agentctl(daemon, "--json", "webhook-test", hook["id"]))
            assert await trio.to_thread.run_sync(daemon.wait_for_log, f"delivery {sent['id']} (test to")
            (failed,) = json.loads(await _agentctl(daemon, "--json", "deliveries", "--status", "failed"))
            assert failed["id"] == sent["id"] and failed["attempts"] == 3 and failed["last_status"] == 500
            assert "gave up after 3 attempts" in failed["last_error"]
            assert sent["id"] in await _agentctl(daemon, "deliveries", "--target", hook["id"])
            assert "failed" in "".join(daemon.log) and sent["id"] in "".join(daemon.log)
            again = json.loads(await _agentctl(daemon, "--json", "redeliver", sent["id"]))
            assert again["id"] == sent["id"] and again["status"] == "pending"
            assert await trio.to_thread.run_sync(daemon.wait_for_log, f"delivery {sent['id']} delivered")
            assert receiver.accepted == [sent["id"]] and all(r.verified for r in receiver.requests)
            await _agentctl(daemon, "webhook-remove", hook["id"])
            assert json.loads(await _agentctl(daemon, "--json", "webhooks")) == []
        finally:
            daemon.kill()
        nursery.cancel_scope.cancel()
