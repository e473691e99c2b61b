"""How git is held to the addresses ``addresses.resolve_remote`` checked, and what its failures
to reach them mean.

:func:`git_pin_config` gives curl the resolved addresses (``http.curloptResolve``) and turns off
redirects (which would reach a host never checked); :func:`ssh_pin_options` makes ssh connect to
the resolved address while it still checks the host key under the name. So a DNS answer that
changes between the check and the connection (DNS rebinding) changes nothing.
:func:`connection_error` turns git's words for a remote it could not reach into a clean error.
``addresses`` re-exports all three.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import TYPE_CHECKING

from daemon.errors import AgentdError, PermanentError, TransientError

if TYPE_CHECKING:
    from daemon.git.addresses import ResolvedRemote

__all__ = ["connection_error", "git_pin_config", "ssh_pin_options"]


def git_pin_config(resolved: ResolvedRemote) -> list[str]:
    """``-c`` arguments (to go before the git subcommand) that hold an http(s) git to what
    :func:`resolve_remote` checked: curl connects to the resolved addresses only, and does not
    follow redirects (a redirect's host was never checked). [] for ssh and local remotes.

    The settings are scoped to the remote's URL (``http.<url>.<key>``): git lets a URL-scoped
    setting beat a plain one whatever the order, so a plain setting could not undo them; at
    the same scope the command line comes last and wins, and the empty value first clears
    any resolve list set elsewhere.
    """
    remote = resolved.remote
    if remote.kind not in ("https", "http"):
        return []
    config: list[str] = []
    # Unscoped too: git ignores a URL-scoped setting whose URL it cannot normalise, and no
    # config level but the command line is read (GIT_CONFIG_NOSYSTEM, GIT_CONFIG_GLOBAL).
    for prefix in (f"http.{_config_scope(remote.url)}.", "http."):
        config += ["-c", f"{prefix}followRedirects=false"]
        if resolved.pinned and resolved.addresses:
            addresses = ",".join(f"[{a}]" if ":" in a else a for a in resolved.addresses)
            config += [
                "-c",
                f"{prefix}curloptResolve=",
                "-c",
                f"{prefix}curloptResolve={resolved.host}:{resolved.port}:{addresses}",
            ]
    return config


def ssh_pin_options(resolved: ResolvedRemote) -> list[str]:
    """ssh options (for ``GIT_SSH_COMMAND``) that make ssh connect to the first resolved
    address instead of resolving the name again, while it looks the host key up under the
    name (``[name]:port`` off port 22, as ssh itself writes it), so ``known_hosts`` entries
    keep working. ssh takes one address: the others are not tried. [] for anything else."""
    if resolved.remote.kind != "ssh" or not resolved.pinned or not resolved.addresses:
        return []
    alias = resolved.host if resolved.port in (None, 22) else f"[{resolved.host}]:{resolved.port}"
    return ["-o", f"HostKeyAlias={alias}", "-o", f"Hostname={resolved.addresses[0]}"]


# (pattern on git's lowercased stderr, reason); curl's and ssh's words for a failed connect.
_RESOLVE_FAILED = re.compile(
    r"could not resolve (host|hostname)\b"
    r"|temporary failure in name resolution|name or service not known"
)
_CONNECT_FAILED = [
    (r"connection refused", "connection refused"),
    (r"(failed to connect|connect to host).*timed out|connection timed out", "connection timed out"),
    (r"network is unreachable|no route to host", "no route to the host"),
    (r"failed to connect to|couldn't connect to server|connect to host", "could not connect"),
]
_REDIRECT = re.compile(r"returned error: (30[12378])\b")


def connection_error(stderr: str, host: str | None = None) -> AgentdError | None:
    """The clean error for a git that could not reach its remote, or None when ``stderr``
    says something else. TransientError ``repo_unreachable`` ("could not reach the repository
    (host): connection refused") or ``repo_unresolved``; PermanentError ``repo_redirect`` for
    a redirect that :func:`git_pin_config` kept git from following. git's own words are left
    out: they name addresses and proxies that mean nothing to the user."""
    text = stderr.lower()
    where = f" ({host.strip('[]')})" if host else ""
    if _RESOLVE_FAILED.search(text):
        return TransientError(f"could not resolve the repository host{where}", code="repo_unresolved")
    for pattern, reason in _CONNECT_FAILED:
        if re.search(pattern, text):
            return TransientError(f"could not reach the repository{where}: {reason}", code="repo_unreachable")
    if match := _REDIRECT.search(text):
        return PermanentError(
            f"the repository server{where} answered with a redirect (HTTP {match.group(1)}), "
            "which is not followed; use the repository's current URL",
            code="repo_redirect",
        )
    return None


def _config_scope(url: str) -> str:
    """The URL a ``http.<url>.<key>`` setting is scoped to: the remote's own, or, when it
    holds an ``=`` (which would end the key of ``-c key=value``), its scheme, host and port."""
    if "=" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"
