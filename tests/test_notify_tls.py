"""The outbox's HTTPS path for real: a TLS receiver on 127.0.0.x with a certificate for a made-up
name from a test CA (trustme), the name resolved by the test's DNS (trio's custom hostname
resolver, which ``git.addresses.check_url_address`` asks), the daemon trusting that CA.

It shows that the webhook, ntfy and Web Push channels (one code path: ``channels.send_pinned``)
connect to the address checked with the name in Host, SNI and the certificate check; that a
certificate that does not fit the name is refused before anything is sent, retried by the
outbox's policy and then failed with the reason on the delivery; that a DNS answer changing
after the check cannot move the connection; and that ``SSL_CERT_FILE`` is how an operator
makes the outbox trust a private CA.
"""

from __future__ import annotations

import json
import socket
import ssl
import types
from collections.abc import AsyncIterator

import httpx2
import pytest
import trio
import trustme
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import ec

from daemon.config import Settings
from daemon.errors import ConfigError
from daemon.notify.channels import Channel, Verdict
from daemon.notify.ntfy import NtfyChannel
from daemon.notify.outbox import Delivery, Target
from daemon.notify.sender import Sender
from daemon.notify.webhooks import WebhookChannel
from daemon.notify.webpush import WebPushChannel
from daemon.secrets import SecretBox
from daemon.usecases import notify as uc
from daemon.usecases.policy import Viewer
from tests.fakes.push_service import PushSubscription, decrypt_aes128gcm, unb64url
from tests.fakes.tls_receiver import ClearListener, Handshake, TLSReceiver
from tests.fakes.webhook_receiver import Received, WebhookReceiver
from tests.test_outbox import wait_delivery

NAME = "hooks.example.test"
SECRET = "whsec_tls"
NTFY_TOKEN = "tk_ntfy"
KINDS = ["webhook", "ntfy", "webpush"]
TASK_ID = "01kxyz0000000000000000abcd"
PAYLOAD = {
    "id": "dlv_tls",
    "kind": "task.succeeded",
    "task": {"id": TASK_ID, "status": "succeeded", "repo_url": "https://github.com/me/calc.git"},
}
PHONE = PushSubscription("tls", "", ec.generate_private_key(ec.SECP256R1()), b"0123456789abcdef")


class Dns(trio.abc.HostnameResolver):
    """The test's DNS: ``answers[name]`` in turn, one per question (the last one repeats);
    ``asked`` lists every name asked, in order."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str]] = {}
        self.asked: list[str] = []

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        self.asked.append(name)
        queue = self.answers.get(name)
        if not queue:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    async def getnameinfo(self, sockaddr, flags):
        raise NotImplementedError


@pytest.fixture
async def dns() -> AsyncIterator[Dns]:
    resolver = Dns()
    resolver.answers[NAME] = ["127.0.0.1"]
    trio.socket.set_custom_hostname_resolver(resolver)
    try:
        yield resolver
    finally:
        trio.socket.set_custom_hostname_resolver(None)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """The system's CAs and the test CA: how the daemon would trust a receiver's private CA."""
    context = httpx2.create_ssl_context()
    ca.configure_trust(context)
    return context


def settings(**overrides) -> Settings:
    return Settings(allow_private_remotes=True, **overrides)  # receivers are on 127.0.0.x


def delivery() -> Delivery:
    return Delivery(
        "dlv_tls", "wh_tls", 1, TASK_ID, PAYLOAD["kind"], json.dumps(PAYLOAD), "pending", 0, 0.0,
        None, None, None, None, 0.0, None, 0.0,
    )  # fmt: skip


def channel_for(kind: str, store, context: ssl.SSLContext | None) -> tuple[Channel, str]:
    """A channel of ``kind`` trusting ``context``'s CAs, and the secret of its target."""
    if kind == "webhook":
        return WebhookChannel(settings(), ssl_context=context), SECRET
    if kind == "ntfy":
        return NtfyChannel(settings(), ssl_context=context), NTFY_TOKEN
    box = SecretBox([Fernet.generate_key()])
    keys = json.dumps({"p256dh": PHONE.p256dh, "auth": PHONE.auth})
    return WebPushChannel(settings(), store, box, ssl_context=context), keys


async def deliver(channel: Channel, kind: str, url: str, secret: str):
    return await channel.deliver(delivery(), Target("t_tls", 1, kind, url, None, (), 0.0), secret)


def check_request(kind: str, got: Received, port: int) -> None:
    """What each channel's receiver checks: the signature, the token, the VAPID audience and
    the message decrypted with the phone's keys."""
    assert got.method == "POST" and got.target == "/in"
    assert got.headers["host"] == f"{NAME}:{port}"
    if kind == "webhook":
        assert got.verified and got.headers["agentd-delivery"] == "dlv_tls"
    elif kind == "ntfy":
        assert got.headers["authorization"] == f"Bearer {NTFY_TOKEN}"
        assert got.headers["title"] == "Task succeeded: calc"
    else:
        token = got.headers["authorization"].split("t=", 1)[1].split(",", 1)[0]
        claims = json.loads(unb64url(token.split(".")[1]))
        assert claims["aud"] == f"https://{NAME}:{port}"  # the origin by name, not the address
        notification = json.loads(decrypt_aes128gcm(got.body, PHONE))
        assert notification["url"] == f"/#/task/{TASK_ID}"


@pytest.mark.parametrize("kind", KINDS)
async def test_https_delivery_goes_to_the_checked_address_under_its_name(kind, dns, ca, trusting, store):
    receiver = WebhookReceiver(secret=SECRET)
    tls = TLSReceiver(receiver, ca.issue_cert(NAME))
    channel, secret = channel_for(kind, store, trusting)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(tls.serve)
        attempt = await deliver(channel, kind, f"https://{NAME}:{port}/in", secret)
        assert attempt.verdict is Verdict.DELIVERED, attempt
        assert tls.handshakes == [Handshake(local="127.0.0.1", sni=NAME, ended=True)]
        (got,) = receiver.requests
        check_request(kind, got, port)
        assert dns.asked == [NAME]  # once, by the check; the connection used its answer
        await channel.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_dns_answer_that_changes_after_the_check_cannot_move_the_connection(
    kind, dns, ca, trusting, store
):
    """Each attempt asks once and connects where that answer pointed: 127.0.0.2 (where the
    same name's certificate also answers) is reached only by the attempt whose check saw it,
    and an answer that turns into the metadata address is refused without a connection."""
    dns.answers[NAME] = ["127.0.0.1", "127.0.0.2", "169.254.169.254"]
    receiver = WebhookReceiver(secret=SECRET)
    tls = TLSReceiver(receiver, ca.issue_cert(NAME), hosts=("127.0.0.1", "127.0.0.2"))
    channel, secret = channel_for(kind, store, trusting)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(tls.serve)
        url = f"https://{NAME}:{port}/in"
        for attempt_no, address in enumerate(["127.0.0.1", "127.0.0.2"], start=1):
            attempt = await deliver(channel, kind, url, secret)
            assert attempt.verdict is Verdict.DELIVERED, attempt
            assert len(dns.asked) == attempt_no
            assert [(s.local, s.sni) for s in tls.handshakes[attempt_no - 1 :]] == [(address, NAME)]
            check_request(kind, receiver.requests[-1], port)
        refused = await deliver(channel, kind, url, secret)
        assert refused.verdict is Verdict.FAILED and "cloud metadata address" in (refused.error or "")
        assert len(dns.asked) == 3 and len(tls.handshakes) == 2
        await channel.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("cert_for", "reason"),
    [
        (lambda ca: ca.issue_cert("other.example.test"), "Hostname mismatch"),
        (lambda ca: ca.issue_cert("127.0.0.1"), "Hostname mismatch"),  # the address is not the name
        (lambda ca: trustme.CA().issue_cert(NAME), "unable to get local issuer certificate"),
    ],
    ids=["another-name", "the-ip-only", "untrusted-ca"],
)
async def test_a_certificate_that_does_not_fit_is_refused_before_anything_is_sent(
    cert_for, reason, dns, ca, trusting
):
    receiver = WebhookReceiver(secret=SECRET)
    tls = TLSReceiver(receiver, cert_for(ca))
    channel = WebhookChannel(settings(), ssl_context=trusting)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(tls.serve)
        attempt = await deliver(channel, "webhook", f"https://{NAME}:{port}/in", SECRET)
        assert attempt.verdict is Verdict.RETRY and attempt.status_code is None
        assert attempt.error and attempt.error.startswith(
            f"refused the webhook URL's TLS certificate for {NAME}: {reason}"
        )
        assert ("sets SSL_CERT_FILE" in attempt.error) == (reason.startswith("unable"))  # the hint
        (shake,) = await tls.wait_handshakes(1)
        assert shake.sni == NAME and shake.error  # the client broke the handshake off
        assert receiver.requests == []
        await channel.aclose()
        nursery.cancel_scope.cancel()


async def test_a_receiver_without_tls_gets_no_request_in_clear(dns, trusting):
    listener = ClearListener()
    channel = WebhookChannel(settings(), ssl_context=trusting)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.serve)
        attempt = await deliver(channel, "webhook", f"https://{NAME}:{port}/in", SECRET)
        assert attempt.verdict is Verdict.RETRY
        assert attempt.error == "TLS with the webhook URL failed (WRONG_VERSION_NUMBER); nothing was sent"
        (hello,) = listener.received  # one connection, no second try in clear
        assert hello[0] == 0x16 and NAME.encode() in hello  # a TLS ClientHello naming the host
        assert b"POST" not in hello and b"dlv_tls" not in hello and SECRET.encode() not in hello
        await channel.aclose()
        nursery.cancel_scope.cancel()


async def test_a_refused_certificate_is_retried_by_the_policy_then_failed_with_the_reason(
    dns, ca, trusting, store, alice, autojump_clock
):
    svc = types.SimpleNamespace(
        settings=settings(notify_retry_base_s=10.0, notify_retry_cap_s=1000.0, notify_max_attempts=3),
        store=store,
        secrets=SecretBox([Fernet.generate_key()]),
    )
    receiver = WebhookReceiver(now=store.now)
    tls = TLSReceiver(receiver, ca.issue_cert("other.example.test"))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(tls.serve)
        made = await uc.add_webhook(svc, Viewer.of(alice), f"https://{NAME}:{port}/hook")
        queued = await uc.send_test(svc, Viewer.of(alice), made.target.id)
        asked_before = len(dns.asked)
        channel = WebhookChannel(svc.settings, now=store.now, ssl_context=trusting)
        sender = Sender(store, svc.settings, svc.secrets, claimer="node-a", channels={"webhook": channel})
        await nursery.start(sender.run)
        failed = await wait_delivery(store, queued.id, "failed")
        assert failed.attempts == 3 and failed.last_status is None
        assert failed.last_error == (
            f"gave up after 3 attempts: refused the webhook URL's TLS certificate for {NAME}: "
            f"Hostname mismatch, certificate is not valid for '{NAME}'; nothing was sent"
        )
        shakes = await tls.wait_handshakes(3)
        assert len(shakes) == 3 and all(s.error and s.sni == NAME for s in shakes)
        assert len(dns.asked) - asked_before == 3  # one question per attempt
        assert receiver.requests == []
        nursery.cancel_scope.cancel()


async def test_ssl_cert_file_is_how_an_operator_trusts_a_private_ca(dns, ca, tmp_path, monkeypatch):
    """The channels' default TLS context honours ``SSL_CERT_FILE`` (as the model's client does),
    though their client takes no proxy from the environment."""
    receiver = WebhookReceiver(secret=SECRET)
    tls = TLSReceiver(receiver, ca.issue_cert(NAME))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(tls.serve)
        url = f"https://{NAME}:{port}/in"
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        untrusting = WebhookChannel(settings())
        refused = await deliver(untrusting, "webhook", url, SECRET)
        assert refused.verdict is Verdict.RETRY and "unable to get local issuer" in (refused.error or "")
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        operator = WebhookChannel(settings())
        attempt = await deliver(operator, "webhook", url, SECRET)
        assert attempt.verdict is Verdict.DELIVERED, attempt
        assert receiver.requests[-1].verified
        await untrusting.aclose()
        await operator.aclose()
        nursery.cancel_scope.cancel()
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"TLS for notifications: cannot read the CAs in .*missing\.pem"):
        WebhookChannel(settings())  # made at the daemon's start: it refuses to start, naming it
