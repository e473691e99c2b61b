"""Which repository URLs agentd will hand to git, and what they point at.

``repo_url`` comes from a phone user, and git treats some URL shapes as commands
(``ext::sh -c ...``) or options (``-uploadpack=...``), so every URL is checked here before any
git process sees it. A host that is a loopback name or a private, loopback or link-local IP
literal (in any of the forms git accepts) is refused here too, unless allowed; names are
resolved and checked at clone and push time (``daemon/git/addresses.py``). Nothing here touches
the network or the disk.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from daemon.errors import PermanentError
from daemon.git.addresses import check_literal_host

__all__ = ["GitHubRepo", "Remote", "parse_remote", "redact"]

Kind = Literal["https", "http", "ssh", "local"]

# git's "<transport>::<address>" syntax runs a remote helper (ext:: runs a shell command).
_HELPER_SYNTAX = re.compile(r"^[A-Za-z0-9+.\-]+::")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# scp-like ssh: [user@]host:path, recognised by git only when the colon comes before any slash.
_SCP_LIKE = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9._~\-]+)@)?(?P<host>[^/:@\[\]]+|\[[0-9A-Fa-f:.]+\]):(?P<path>.+)$"
)
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?$|^\[[0-9A-Fa-f:.]+\]$")
_USERINFO_IN_TEXT = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s]+@")


class GitHubRepo(NamedTuple):
    owner: str
    name: str


@dataclass(frozen=True)
class Remote:
    """A validated remote. ``url`` is what git is given (local paths become file:// URLs so that
    ``--depth`` works); it never carries credentials, so it is safe to log and to store."""

    kind: Kind
    url: str
    host: str | None  # lower-cased; None for local remotes
    path: str  # path on the host ("owner/repo.git") or the local absolute path

    def github(self, web_host: str = "github.com") -> GitHubRepo | None:
        """``(owner, name)`` when this remote is a repository on the GitHub instance whose web
        host is ``web_host`` (github.com, or a GitHub Enterprise host), else None."""
        # http only exists where local remotes are allowed (tests, self-hosted mirrors).
        if self.kind not in ("https", "http", "ssh") or self.host != web_host.lower():
            return None
        path = self.path.strip("/")
        if path.endswith(".git"):
            path = path[: -len(".git")]
        parts = path.split("/")
        if len(parts) != 2 or not all(parts):
            return None
        return GitHubRepo(parts[0], parts[1])


def parse_remote(repo_url: str, allow_local: bool, *, allow_private: bool = False) -> Remote:
    """Validate ``repo_url`` and say what it points at, or raise PermanentError saying why not.

    Accepted: ``https://host/...``; ssh as ``ssh://[user@]host[:port]/path`` or
    ``[user@]host:path``; and, only with ``allow_local``, local paths, ``file://`` URLs and
    plain ``http://`` (the fake servers of tests and demos listen on 127.0.0.1 without TLS,
    and a token must not cross a real network in clear text).
    Refused: remote-helper syntax (``ext::``, ``fd::``, ...), anything starting with ``-``,
    credentials inside the URL, control characters, other schemes; and (PermanentError
    ``repo_address_refused``) a host that is ``localhost`` or an IP literal of a refused class
    (loopback, private, link-local, unique-local...: see ``daemon/git/addresses.py``), unless
    ``allow_private`` or ``allow_local`` (the fakes of tests listen on 127.0.0.1) is set.
    """
    private_ok = allow_local or allow_private
    if not isinstance(repo_url, str) or not repo_url.strip():
        raise PermanentError("repository URL is empty", code="invalid_repo_url")
    url = repo_url.strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url) or " " in url:
        raise PermanentError("repository URL contains spaces or control characters", code="invalid_repo_url")
    if url.startswith("-"):
        raise PermanentError(
            "repository URL must not start with '-' (git would read it as an option)",
            code="invalid_repo_url",
        )
    if _HELPER_SYNTAX.match(url):
        transport = url.split("::", 1)[0]
        raise PermanentError(
            f"repository URL uses git's '{transport}::' remote-helper syntax, which is not allowed",
            code="invalid_repo_url",
        )

    scheme_match = _SCHEME.match(url)
    if scheme_match:
        try:
            return _parse_url(url, scheme_match.group(1).lower(), allow_local, private_ok)
        except ValueError:  # urlsplit: a bracketed host that is no IP address, a bad port
            raise PermanentError("repository URL has an invalid host name", code="invalid_repo_url") from None

    scp = _SCP_LIKE.match(url)
    if scp and "/" not in url.split(":", 1)[0]:
        host, path = scp.group("host"), scp.group("path")
        _check_host(host, private_ok)
        if path.startswith("-"):
            raise PermanentError("repository path must not start with '-'", code="invalid_repo_url")
        return Remote(kind="ssh", url=url, host=host.lower(), path=path)

    return _local(Path(url), allow_local)


# A '%' that is not an escape, or an escaped control character: git cannot normalise such a
# URL, and then ignores every http.<url>.* setting, the address pins included.
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})|%[01][0-9A-Fa-f]|%7[Ff]")


def _parse_url(url: str, scheme: str, allow_local: bool, private_ok: bool) -> Remote:
    if _BAD_ESCAPE.search(url):
        raise PermanentError(
            "repository URL has a '%' that is not a valid escape, or an escaped control character",
            code="invalid_repo_url",
        )
    parts = urllib.parse.urlsplit(url)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise PermanentError(
                "file:// URLs must name a local path (file:///path)", code="invalid_repo_url"
            )
        return _local(Path(urllib.parse.unquote(parts.path)), allow_local)
    if scheme in ("ssh", "git+ssh", "ssh+git"):
        if parts.password is not None:
            raise _credentials_error()
        host = parts.hostname or ""
        _check_host(_as_written(host, parts.netloc), private_ok)
        if (parts.username or "").startswith("-") or parts.path.lstrip("/").startswith("-"):
            raise PermanentError("repository URL parts must not start with '-'", code="invalid_repo_url")
        if not parts.path.strip("/"):
            raise PermanentError("repository URL has no repository path", code="invalid_repo_url")
        return Remote(kind="ssh", url=url, host=host.lower(), path=parts.path.lstrip("/"))
    if scheme in ("https", "http"):
        if scheme == "http" and not allow_local:
            raise PermanentError(
                "plain http:// repository URLs are not allowed; use https://",
                code="invalid_repo_url",
            )
        if "@" in parts.netloc:
            raise _credentials_error()
        host = parts.hostname or ""
        _check_host(_as_written(host, parts.netloc), private_ok)
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise PermanentError("repository URL has an invalid port", code="invalid_repo_url")
        if not parts.path.strip("/"):
            raise PermanentError("repository URL has no repository path", code="invalid_repo_url")
        if parts.query or parts.fragment:
            raise PermanentError("repository URL must not have a query or fragment", code="invalid_repo_url")
        return Remote(
            kind="http" if scheme == "http" else "https",
            url=url,
            host=host.lower(),
            path=parts.path.lstrip("/"),
        )
    raise PermanentError(
        f"repository URL scheme '{scheme}://' is not supported (use https:// or ssh)",
        code="invalid_repo_url",
    )


def _as_written(host: str, netloc: str) -> str:
    # urlsplit drops the brackets of [::1] and of an IPvFuture [v1.x]: put them back, so that
    # a bracketed host is checked as an IPv6 address and nothing else.
    return f"[{host}]" if ":" in host or "[" in netloc else host


def _local(path: Path, allow_local: bool) -> Remote:
    if not allow_local:
        raise PermanentError(
            "local repository paths are not allowed on this server "
            "(set AGENTD_ALLOW_LOCAL_REMOTES=1 to allow them)",
            code="invalid_repo_url",
        )
    absolute = path.expanduser().absolute()
    return Remote(kind="local", url=absolute.as_uri(), host=None, path=str(absolute))


def _check_host(host: str, private_ok: bool) -> None:
    if "%" in host and host.startswith("["):  # an IPv6 zone id: check_literal_host says so
        check_literal_host(host, allow_private=private_ok)
    if not host or not _HOST.match(host):
        raise PermanentError("repository URL has an invalid host name", code="invalid_repo_url")
    check_literal_host(host, allow_private=private_ok)


def _credentials_error() -> PermanentError:
    # The URL itself is left out of the message: it holds the secret.
    return PermanentError(
        "repository URL must not contain credentials; give the token separately",
        code="invalid_repo_url",
    )


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` with every secret, and any ``user:password@`` in URLs, replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _USERINFO_IN_TEXT.sub(r"\1***@", text)
