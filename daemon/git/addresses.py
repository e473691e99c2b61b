"""Which network addresses a repository URL may reach, and how git is held to the one checked.

A ``repo_url`` comes from a phone user, so a server that fetches it could be pointed at the
daemon's own host, its private network or a cloud metadata endpoint (server-side request
forgery). Addresses are checked twice:

- at parse time, without the network (:func:`check_literal_host`, called by ``parse_remote``):
  an IP literal in any form git, curl or ``getaddrinfo`` would accept (dotted, decimal
  ``2130706433``, octal ``0177.0.0.1``, hex ``0x7f.1``, short ``127.1``, IPv6 including
  IPv4-mapped ``::ffff:127.0.0.1``) and the ``localhost`` names;
- at clone and push time (:func:`resolve_remote`): every address the host name resolves to.

The address checked is the address used: :func:`git_pin_config` gives curl the resolved
addresses (``http.curloptResolve``) and turns off redirects (which would reach a host never
checked); :func:`ssh_pin_options` makes ssh connect to the resolved address while it still
checks the host key under the name. So a DNS answer that changes between the check and the
connection (DNS rebinding) changes nothing. Those two, and :func:`connection_error`, live in
``pinning`` and are re-exported here.

Refused unless the operator allows private remotes: loopback, private (RFC 1918),
carrier-grade NAT, link-local, unique-local, site-local, unspecified, multicast, and the
reserved ranges. The cloud metadata endpoints are refused always: no repository lives there.

Limits: behind an HTTP(S) proxy from the environment, or an ssh ``ProxyCommand``/``ProxyJump``
in the operator's ssh config, the proxy resolves and connects, so what it may reach is the
proxy's policy; the check here still sees the name as this host resolves it. An ssh remote is
held to its first address only (ssh takes one).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from daemon.errors import PermanentError, TransientError
from daemon.git.pinning import connection_error, git_pin_config, ssh_pin_options

if TYPE_CHECKING:
    from daemon.git.remote import Remote

__all__ = [
    "ResolvedRemote",
    "address_class",
    "addresses_of",
    "check_literal_host",
    "check_url_address",
    "connection_error",
    "git_pin_config",
    "ip_literal",
    "resolve_remote",
    "ssh_pin_options",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

RESOLVE_TIMEOUT = 30.0
ALLOW_HINT = "an operator can allow them with allow_private_remotes = true or AGENTD_ALLOW_PRIVATE_REMOTES=1"
METADATA = "cloud metadata"

# Instance metadata and platform endpoints (AWS, GCP, Azure, OpenStack: 169.254.169.254; AWS
# ECS credentials; Alibaba; Azure's wire server, a public address; AWS over IPv6). Refused even
# where private remotes are allowed.
_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "100.100.100.200",
        "168.63.129.16",
        "fd00:ec2::254",
    )
)

# Checked in order: the first network holding the address names its class.
_V4 = [
    (ipaddress.IPv4Network(net), cls)
    for net, cls in (
        ("0.0.0.0/8", "unspecified"),  # 0.0.0.0 reaches the local host on Linux
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # and 255.255.255.255
    )
]
_V6 = [
    (ipaddress.IPv6Network(net), cls)
    for net, cls in (
        ("::1/128", "loopback"),
        ("::/128", "unspecified"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("fc00::/7", "unique-local"),
        ("ff00::/8", "multicast"),
        ("64:ff9b:1::/48", "private"),  # local-use NAT64 (RFC 8215)
    )
]
# IPv6 ranges that carry an IPv4 address in their low 32 bits: IPv4-mapped, IPv4-compatible
# (deprecated, still routed by some stacks) and well-known NAT64.
_EMBEDS_V4 = [ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::/96", "64:ff9b::/96")]

_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog"})
# Names that mean this host whatever DNS says (RFC 6761, Debian's /etc/hosts).
_LOOPBACK_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "localhost6",
        "localhost6.localdomain6",
        "ip6-localhost",
        "ip6-loopback",
    }
)
# What inet_aton reads: one to four parts, each decimal, octal (0...) or hex (0x...).
_INET_ATON_SHAPE = re.compile(r"^[0-9a-fA-FxX.]+$")


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` denotes when it is an IP literal, else None (a name).

    IPv4 is read as ``inet_aton`` reads it, which is what curl's URL parser, ssh and
    ``getaddrinfo`` do: ``2130706433``, ``0177.0.0.1``, ``0x7f.1`` and ``127.1`` are all
    127.0.0.1. IPv6 may be bracketed; an IPv6 zone id (``%eth0``) raises PermanentError, as
    does a bracketed host that is not an IPv6 address.
    """
    bracketed = host.startswith("[") and host.endswith("]")
    bare = host[1:-1] if bracketed else host
    if "%" in bare and (bracketed or ":" in bare):
        raise PermanentError(
            "repository URL host has an IPv6 zone id, which is not supported", code="invalid_repo_url"
        )
    if ":" in bare or bracketed:
        try:
            return ipaddress.IPv6Address(bare)
        except ValueError:
            raise PermanentError("repository URL has an invalid host name", code="invalid_repo_url") from None
    if _INET_ATON_SHAPE.match(bare) and bare[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None  # e.g. 08.1 or 1.2.3.4.5: a (strange) name for DNS
    return None


def address_class(ip: IPAddress) -> str | None:
    """The class of address ``ip`` belongs to when it is refused (``"loopback"``,
    ``"private"``, ``"cloud metadata"``...), or None for a public address."""
    if ip in _METADATA:
        return METADATA
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            return address_class(inner)
        table: Sequence[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = _V6
    else:
        table = _V4
    for net, cls in table:
        if ip in net:
            return cls
    # Anything else outside the global unicast space: documentation, benchmarking, protocol
    # assignments, Teredo, discard...
    return None if ip.is_global else "reserved"


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4), if any."""
    for net in _EMBEDS_V4:
        if ip in net and int(ip) > 1:  # :: and ::1 are themselves
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour  # 2002::/16 tunnels to the IPv4 address inside


def check_literal_host(host: str, *, allow_private: bool) -> None:
    """Refuse, without the network, a host that is a loopback name or an IP literal of a
    refused class (PermanentError ``repo_address_refused``); names are left to
    :func:`resolve_remote`. ``host`` is as in the URL (IPv6 may be bracketed)."""
    bare = host.strip("[]").lower()
    if bare in _METADATA_NAMES:
        raise PermanentError(
            f"repository host {bare} is a cloud metadata name, which is never allowed as a repository",
            code="repo_address_refused",
        )
    if not allow_private and (bare in _LOOPBACK_NAMES or bare.endswith(".localhost")):
        raise _refused(f"repository host {bare} is a loopback name", "loopback")
    ip = ip_literal(host)
    if ip is not None:
        _check_address(ip, allow_private, f"repository host {bare} is", shown=_meaning(ip, bare))


@dataclass(frozen=True)
class ResolvedRemote:
    """A remote whose host was resolved and checked. ``addresses`` are every address it
    resolved to, in the resolver's order (the literal itself for an IP host, () for a local
    remote); ``pinned`` says whether git must be held to them (a name, not a literal)."""

    remote: Remote
    host: str | None  # without brackets
    port: int | None
    addresses: tuple[str, ...]
    pinned: bool


async def resolve_remote(
    remote: Remote, *, allow_private: bool, timeout: float = RESOLVE_TIMEOUT
) -> ResolvedRemote:
    """Resolve ``remote``'s host and check every address it resolves to.

    Raises PermanentError ``repo_address_refused`` when any address is of a refused class
    (one bad address is enough: curl and ssh try them all), naming the class and how the
    operator allows it; TransientError ``repo_unresolved`` when the name does not resolve or
    resolving takes longer than ``timeout`` seconds. Local remotes and IP literals need no
    lookup. A plain ``http://`` remote counts as allowed: ``parse_remote`` accepts one only
    where local remotes are allowed, which implies private addresses (as in ``run_git``). The
    lookup is ``trio.socket.getaddrinfo`` (so tests can install a resolver with
    ``trio.socket.set_custom_hostname_resolver``).

    Cancellation: the lookup's worker thread is abandoned (it ends on its own, its answer is
    dropped) and the cancellation propagates.
    """
    if remote.kind == "local" or remote.host is None:
        return ResolvedRemote(remote, None, None, (), pinned=False)
    host = remote.host.strip("[]")
    port = _port_of(remote)
    allow_private = allow_private or remote.kind == "http"
    check_literal_host(remote.host, allow_private=allow_private)
    literal = ip_literal(remote.host)
    if literal is not None:
        return ResolvedRemote(remote, host, port, (str(literal),), pinned=False)

    found = await _lookup(host, port, timeout, "repository", "repo_unresolved")
    for ip in found:
        _check_address(
            ip,
            allow_private,
            f"repository host {host} resolves to {ip}, which is",
            shown=_meaning(ip, str(ip)),
        )
    return ResolvedRemote(remote, host, port, tuple(str(ip) for ip in found), pinned=True)


async def addresses_of(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (``getaddrinfo``, in a worker thread), each once, in
    the resolver's order, without an IPv6 scope. Raises ``OSError`` (``gaierror``) or
    ``UnicodeError`` (IDNA refusing a label) as ``getaddrinfo`` does."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in found:
            found.append(ip)
    return found


async def _lookup(host: str, port: int, timeout: float, what: str, code: str) -> list[IPAddress]:
    """Every address ``host`` resolves to, each once, in the resolver's order; TransientError
    ``code`` ("could not resolve the {what} host (...)") when it does not resolve in time."""
    try:
        with trio.fail_after(timeout):
            found = await addresses_of(host, port)
    except trio.TooSlowError:
        raise TransientError(
            f"could not resolve the {what} host ({host}): timed out after {timeout:g} s", code=code
        ) from None
    except (OSError, UnicodeError) as exc:  # gaierror; IDNA refusing a label
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TransientError(f"could not resolve the {what} host ({host}): {reason}", code=code) from None
    if not found:
        raise TransientError(f"could not resolve the {what} host ({host}): no address", code=code)
    return found


async def check_url_address(
    url: str, *, allow_private: bool, what: str, timeout: float = RESOLVE_TIMEOUT
) -> tuple[str, ...]:
    """Check an ``https://`` URL a user gave for the daemon to call (a push endpoint, a
    webhook), by the rules of repository URLs: every address its host resolves to must be
    public unless ``allow_private`` (cloud metadata never). Returns those addresses.

    ``what`` names the URL in messages ("push endpoint"). PermanentError ``address_refused``
    for a refused address or name, ``invalid_url`` for a URL that is not https with a host
    (plain http is taken only where private addresses are allowed); TransientError
    ``unresolved`` when the host does not resolve (in ``timeout`` seconds).

    The check does not pin the connection: a name whose DNS answer changes between the check
    and the request (rebinding) is not caught here.

    Cancellation: as for :func:`resolve_remote`.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise PermanentError(f"the {what} is not a valid URL", code="invalid_url") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes or not parts.hostname or parts.username or parts.password:
        raise PermanentError(
            f"the {what} must be an https:// URL with a host and no credentials", code="invalid_url"
        )
    host = parts.hostname  # lowercased, without brackets
    subject = f"{what} host {host}"
    if host in _METADATA_NAMES:
        raise PermanentError(
            f"{subject} is a cloud metadata name, which is never allowed", code="address_refused"
        )
    if not allow_private and (host in _LOOPBACK_NAMES or host.endswith(".localhost")):
        raise _refused_url(f"{subject} is a loopback name", "loopback", what)
    literal = ip_literal(host if ":" not in host else f"[{host}]")
    found = [literal] if literal is not None else await _lookup(host, port, timeout, what, "unresolved")
    for ip in found:
        cls = address_class(ip)
        if cls == METADATA:
            raise PermanentError(
                f"{subject} is a cloud metadata address ({ip}), which is never allowed",
                code="address_refused",
            )
        if cls is not None and not allow_private:
            raise _refused_url(f"{subject} is or resolves to {ip}, {_article(cls)} {cls} address", cls, what)
    return tuple(str(ip) for ip in found)


def _refused_url(what_is: str, cls: str, what: str) -> PermanentError:
    hint = "an operator can allow them with allow_private_remotes = true"
    return PermanentError(
        f"{what_is}; {what}s on {cls} addresses are refused on this server ({hint})", code="address_refused"
    )


def _meaning(ip: IPAddress, written: str) -> str | None:
    """What a literal means when its text does not say it: the dotted form of a decimal,
    octal or short IPv4 literal, the IPv4 address inside an IPv6 one."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        return str(inner) if inner is not None else None
    return str(ip) if str(ip) != written else None


def _check_address(ip: IPAddress, allow_private: bool, subject: str, *, shown: str | None) -> None:
    cls = address_class(ip)
    if cls is None or (allow_private and cls != METADATA):
        return
    shown = f" ({shown})" if shown else ""
    if cls == METADATA:
        raise PermanentError(
            f"{subject} a cloud metadata address{shown}, which is never allowed as a repository",
            code="repo_address_refused",
        )
    raise _refused(f"{subject} {_article(cls)} {cls} address{shown}", cls)


def _refused(what: str, cls: str) -> PermanentError:
    return PermanentError(
        f"{what}; repositories on {cls} addresses are refused on this server ({ALLOW_HINT})",
        code="repo_address_refused",
    )


def _article(word: str) -> str:
    return "an" if word[0] in "aeio" or word == "unspecified" else "a"


def _port_of(remote: Remote) -> int:
    default = {"https": 443, "http": 80, "ssh": 22}[remote.kind]
    if "://" not in remote.url:  # scp-like ssh: no port in the URL
        return default
    try:
        return urllib.parse.urlsplit(remote.url).port or default
    except ValueError:  # parse_remote refused these already
        return default
