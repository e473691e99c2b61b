"""The few exceptions agentd raises on purpose.

The supervisor decides what to do with a failed attempt from the exception's class alone:
``TransientError`` is retried with backoff, ``PermanentError`` fails the task at once.
Every message is written for the person who will read it (phone user or operator).
"""

from __future__ import annotations


class AgentdError(Exception):
    """Base of every deliberate agentd error; ``code`` is the stable machine-readable name."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class TransientError(AgentdError):
    """Something outside failed for now (network, 5xx, rate limit): try the attempt again later.

    ``retry_after`` (seconds), when the outside world said how long to wait, is a lower bound
    for the next delay.
    """

    code = "transient"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class PermanentError(AgentdError):
    """Trying again cannot help (bad credentials, repository not found, budget spent)."""

    code = "permanent"


class NotFound(AgentdError):
    code = "not_found"


class Forbidden(AgentdError):
    code = "forbidden"


class InvalidTransition(AgentdError):
    """A task state change that the state machine does not allow."""

    code = "invalid_transition"


class ConfigError(AgentdError):
    """Bad configuration; the message names the key and the problem."""

    code = "config"


class Conflict(AgentdError):
    """The request conflicts with one made before (an idempotency key used for another task)."""

    code = "conflict"


class RateLimited(AgentdError):
    """Too many requests of one kind from one user; ``retry_after``: whole seconds to wait."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadArguments(AgentdError):
    """A command's arguments are missing or malformed; the message names the argument."""

    code = "bad_arguments"
