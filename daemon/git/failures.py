"""What a failed git command means: retry later (network, server errors) or fail now
(credentials, missing repository, refused push, anything unrecognised), in words a user can act
on. Pure functions of git's (redacted) stderr; ``process.run_git`` raises what they return.
"""

from __future__ import annotations

import re

from daemon.errors import AgentdError, PermanentError, TransientError
from daemon.git.addresses import connection_error

__all__ = ["classify_git_error"]

_PERMANENT = [
    (
        (
            r"authentication failed|invalid username or password|bad credentials"
            r"|terminal prompts disabled|could not read (username|password)"
            r"|returned error: 401|\bhttp 401\b"
        ),
        "authentication failed (check the token)",
    ),
    (
        r"permission denied|returned error: 403|\bhttp 403\b|access denied|write access .* not granted",
        "permission denied",
    ),
    (
        (
            r"repository .*not found|does not appear to be a git repository|returned error: 404"
            r"|\bhttp 404\b|no such repository|not a git repository"
        ),
        "repository not found (or the credentials cannot see it)",
    ),
    (r"remote branch .* not found|couldn't find remote ref", "branch not found on the remote"),
    (r"protected branch|pre-receive hook declined|\[remote rejected\]", "the remote refused the push"),
    (r"\[rejected\]|non-fast-forward|fetch first", "the remote branch has other commits"),
    (r"host key verification failed", "ssh host key verification failed"),
]
# Failures to resolve or connect are told in words of their own (addresses.connection_error).
_TRANSIENT = [
    (
        (
            r"returned error: 5\d\d|\bhttp 5\d\d\b|internal server error|bad gateway"
            r"|service unavailable|gateway time-?out"
        ),
        "the server had an error",
    ),
    (
        (
            r"timed out|connection reset|broken pipe|early eof|unexpected disconnect"
            r"|remote end hung up|rpc failed|transfer closed|ssl_read|gnutls|tls connection"
        ),
        "the connection failed",
    ),
    (r"returned error: 429|too many requests", "the server is rate limiting"),
]


def classify_git_error(op: str, returncode: int, stderr: str, host: str | None = None) -> AgentdError:
    """Turn a failed git command into TransientError (network, 5xx: try again later) or
    PermanentError (credentials, missing repository, refused push, anything unrecognised, so
    that a misconfiguration fails fast with git's own words). ``stderr`` must be redacted.
    A remote that could not be resolved or reached (``host``: the remote's) is said in clean
    words, "could not reach the repository (host): connection refused", without git's."""
    text = stderr.lower()
    detail = _detail(stderr)
    # Permanent first: an auth failure over ssh also says "the remote end hung up".
    for pattern, reason in _PERMANENT:
        if re.search(pattern, text):
            return PermanentError(f"git {op} failed: {reason}{detail}", code="git_failed")
    unreachable = connection_error(stderr, host)
    if unreachable is not None:
        return unreachable
    for pattern, reason in _TRANSIENT:
        if re.search(pattern, text):
            return TransientError(f"git {op} failed: {reason}{detail}", code="git_unavailable")
    return PermanentError(f"git {op} failed (exit {returncode}){detail}", code="git_failed")


def _detail(stderr: str, limit: int = 600) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    # git's own verdict lines say more than progress output.
    wanted = [ln for ln in lines if re.match(r"(fatal|error|remote|ssh|! \[)", ln)] or lines[-3:]
    text = " | ".join(wanted[-4:])
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f": {text}" if text else ""
