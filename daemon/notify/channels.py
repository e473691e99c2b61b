"""What a notification channel is, and the one way the outbox's channels speak HTTP.

A channel (``webhook``, ``ntfy``, ``webpush``) turns one delivery into one request and says
how it went with an ``Attempt``: ``DELIVERED``; ``RETRY`` (later, with backoff, or after the
receiver's ``Retry-After``); ``GONE`` (the target is gone for good: it is disabled); ``FAILED``
(no retry helps). The sender (``sender.channels_for``) holds one channel per kind.

``post_to_target`` is how every channel sends: ``send_pinned`` under the operator's address rule
(``allow_private``) and the ``notify_timeout_s`` deadline; ``OwnClientChannel`` is the part of
a channel that owns its HTTP client (``webhook``, ``ntfy``).

``send_pinned``: a user-given URL is called by the repository URL address rules
(``git.addresses.check_url_address``: https only unless private addresses are allowed, no
private or loopback address unless the operator allows them, cloud metadata never) and on the
address that was checked: the request goes to that IP, with the name in ``Host`` and in TLS
(SNI and certificate check), so a DNS answer that changes after the check changes nothing.
Redirects are not followed; the response is read up to ``RESPONSE_CAP`` bytes. A certificate
must chain to a CA of the system's store, or of ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when the
operator sets them (``http_client``); one that does not fit is an error that names why
(``unreachable``), retried like any network error, and the request is never sent without TLS.
"""

from __future__ import annotations

import email.utils
import os
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import httpx2
import trio

from ..config import Settings
from ..errors import ConfigError, PermanentError, TransientError
from ..git.addresses import check_url_address
from .outbox import Delivery, Target

RESPONSE_CAP = 64 * 1024  # bytes of a receiver's answer read (the rest is dropped)
ERROR_CAP = 300  # characters of an error kept on the delivery
# OpenSSL's verify codes of a chain that ends at a CA not trusted here (X509_V_ERR_...: unable to
# get the issuer, locally or at all; self-signed leaf; self-signed root in the chain).
_UNKNOWN_ISSUER = frozenset({2, 18, 19, 20})
_UNKNOWN_ISSUER_HINT = " (to trust a private CA, an operator sets SSL_CERT_FILE to a CA bundle that holds it)"


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GONE = "gone"
    FAILED = "failed"


@dataclass(frozen=True)
class Attempt:
    """How one attempt went; ``retry_after_s``: the receiver's wish (``Retry-After``)."""

    verdict: Verdict
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


class Channel(Protocol):
    """One kind of target. ``deliver`` never raises for what the receiver or the network
    does: the ``Attempt`` says it. Cancellation: the request is abandoned (the receiver may
    have it: the outbox is at-least-once, receivers drop duplicates by delivery id)."""

    kind: str

    async def deliver(self, delivery: Delivery, target: Target, secret: str | None) -> Attempt: ...

    async def aclose(self) -> None: ...


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """``Retry-After`` in seconds (delta or HTTP date), None when absent or unreadable."""
    value = headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def verdict_for(status: int, headers: Mapping[str, str], now: float) -> Attempt:
    """A receiver's HTTP answer as a verdict: 2xx delivered; 408, 425, 429 and 5xx retried
    (honouring ``Retry-After``); a redirect (not followed) and other 4xx failed."""
    if 200 <= status < 300:
        return Attempt(Verdict.DELIVERED, status_code=status)
    if status in (408, 425, 429) or status >= 500:
        return Attempt(
            Verdict.RETRY,
            status_code=status,
            error=f"the receiver answered HTTP {status}",
            retry_after_s=retry_after(headers, now),
        )
    if 300 <= status < 400:
        return Attempt(Verdict.FAILED, status_code=status, error=f"redirect (HTTP {status}) not followed")
    return Attempt(Verdict.FAILED, status_code=status, error=f"the receiver refused it (HTTP {status})")


def trusted_cas() -> ssl.SSLContext:
    """The default TLS context of the outbox: ``SSL_CERT_FILE`` or else ``SSL_CERT_DIR`` when
    set (as for the model's API), else the system's CA store. ``ConfigError`` naming the file
    when it cannot be read (the daemon then refuses to start: the channels are made then)."""
    try:
        return httpx2.create_ssl_context()
    except (OSError, ssl.SSLError) as exc:
        named = os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR")
        raise ConfigError(f"config: TLS for notifications: cannot read the CAs in {named}: {exc}") from None


def http_client(timeout_s: float, ssl_context: ssl.SSLContext | None = None) -> httpx2.AsyncClient:
    """The outbox's HTTP client: no redirects, no proxy from the environment, no connection
    kept (each request goes to the address just checked; see ``send_pinned``).

    ``ssl_context``: the CAs an https receiver's certificate must chain to; by default
    ``trusted_cas()`` (``trust_env=False`` alone would also drop ``SSL_CERT_FILE``).
    """
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(timeout_s),
        verify=ssl_context if ssl_context is not None else trusted_cas(),
        follow_redirects=False,
        trust_env=False,
        limits=httpx2.Limits(max_keepalive_connections=0),
    )


def unreachable(exc: httpx2.HTTPError, what: str, host: str) -> str:
    """Why a request could not be made, for the delivery log: a TLS failure says what was wrong
    (the certificate refused for ``host``, and why; a handshake that failed), else the error's
    kind. A failure while connecting (the TLS handshake included) means no byte of the request
    was written: the message says so."""
    unsent = "; nothing was sent" if isinstance(exc, httpx2.ConnectError) else ""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            hint = _UNKNOWN_ISSUER_HINT if cause.verify_code in _UNKNOWN_ISSUER else ""
            message = str(cause.verify_message).rstrip(".")
            return f"refused the {what}'s TLS certificate for {host}: {message}{unsent}{hint}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS with the {what} failed ({cause.reason or cause}){unsent}"
        cause = cause.__cause__ or cause.__context__
    return f"could not reach the {what}: {type(exc).__name__}"


async def send_pinned(
    client: httpx2.AsyncClient,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    allow_private: bool,
    what: str,
    now: float,
    deadline_s: float,
) -> Attempt:
    """POST ``content`` to ``url`` on the address checked for it; the verdict of the answer.

    Refused addresses and bad URLs are ``FAILED``; a name that does not resolve, a network
    error or a timeout (``deadline_s`` for the whole exchange) ``RETRY``.
    Cancellation: the request is abandoned.
    """
    try:
        addresses = await check_url_address(url, allow_private=allow_private, what=what)
    except TransientError as exc:
        return Attempt(Verdict.RETRY, error=exc.message)
    except PermanentError as exc:
        return Attempt(Verdict.FAILED, error=exc.message)
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    address = addresses[0]
    netloc = f"[{address}]" if ":" in address else address
    if parts.port is not None:
        netloc += f":{parts.port}"
    pinned = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = host if parts.port is None else f"{parts.netloc.rsplit('@', 1)[-1]}"
    request = client.build_request(
        "POST",
        pinned,
        content=content,
        headers={**headers, "Host": host_header},
        extensions={"sni_hostname": host},
    )
    with trio.move_on_after(deadline_s) as scope:
        try:
            response = await client.send(request, stream=True)
        except httpx2.HTTPError as exc:
            return Attempt(Verdict.RETRY, error=unreachable(exc, what, host))
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= RESPONSE_CAP:
                    break
        except httpx2.HTTPError:
            pass  # the answer's status is what counts; a body cut short changes nothing
        finally:
            await response.aclose()
        return verdict_for(response.status_code, response.headers, now)
    assert scope.cancelled_caught
    return Attempt(Verdict.RETRY, error=f"the {what} did not answer within {deadline_s:g} s")


def allow_private(settings: Settings) -> bool:
    """Whether user-given notification URLs may reach private addresses (the repository rule)."""
    return settings.allow_private_remotes or settings.allow_local_remotes


async def post_to_target(
    client: httpx2.AsyncClient,
    settings: Settings,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    what: str,
    now: float,
) -> Attempt:
    """``send_pinned`` as every channel calls it: private addresses as ``allow_private`` says,
    the whole exchange within ``notify_timeout_s``. Cancellation: the request is abandoned."""
    return await send_pinned(
        client,
        url,
        content=content,
        headers=headers,
        allow_private=allow_private(settings),
        what=what,
        now=now,
        deadline_s=settings.notify_timeout_s,
    )


class OwnClientChannel:
    """A channel's HTTP client, made with the channel (a CA file that cannot be read stops the
    daemon's start: ``trusted_cas``) and closed by ``aclose``; ``_post`` sends by
    ``post_to_target``, the URL named ``what`` in errors."""

    what: str

    def __init__(
        self,
        settings: Settings,
        *,
        now: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context``: the CAs trusted for https receivers (``http_client``)."""
        self._settings = settings
        self._now = now
        self._http: httpx2.AsyncClient = http_client(settings.notify_timeout_s, ssl_context)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, url: str, content: bytes, headers: Mapping[str, str], now: float) -> Attempt:
        return await post_to_target(
            self._http, self._settings, url, content=content, headers=headers, what=self.what, now=now
        )
