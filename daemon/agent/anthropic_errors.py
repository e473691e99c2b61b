"""The Messages API's errors as agentd's: ``TransientError`` (try again later, with the wait
the API asked for) or ``PermanentError`` (with the API's own words); ``PromptTooLong`` for a
prompt over the window, and whether a 400 refuses mode "api"'s context management."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping

import anthropic

from daemon.agent.context_window import PromptTooLong
from daemon.errors import PermanentError, TransientError

__all__ = ["PROMPT_TOO_LONG", "refuses_context_management", "retry_after_of", "status_error"]

# Words of a 400 ``invalid_request_error`` that refuses mode "api" itself: an unknown beta ("Unexpected
# value(s) `compact-2026-01-12` for the `anthropic-beta` header..."), the field unknown without
# its beta ("context_management: Extra inputs are not permitted"), or an edit the model lacks.
_REFUSAL_WORDS = ("anthropic-beta", "context_management", "context management", "compact", "clear_tool_uses")

# How the API's 400 for a prompt over the context window begins ("prompt is too long: 208973
# tokens > 200000 maximum").
PROMPT_TOO_LONG = "prompt is too long"

# Error types that mean "the API had a problem", whatever the HTTP status they came with
# (an SSE ``error`` event arrives inside a 200 response).
_TRANSIENT_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})


def status_error(
    err: anthropic.APIStatusError, redact: Callable[[str], str]
) -> TransientError | PermanentError:
    """agentd's error for an API status error (see ``anthropic_provider``); ``redact`` cleans its message."""
    status = err.status_code
    error_type = err.type or _body_error_type(err.body) or "error"
    detail = err.api_message or _short(err.body) or "no details given"
    # Below 400: an SSE error event inside a 200 response.
    where = f"{status} {error_type}" if status >= 400 else f"{error_type} during the response stream"
    message = redact(f"anthropic: {where}: {detail}")
    transient = (
        status in (408, 409, 429) or status >= 500 or (status < 400 and error_type in _TRANSIENT_TYPES)
    )
    if transient:
        return TransientError(message, retry_after=retry_after_of(err.response.headers))
    if status == 400 and detail.lower().startswith(PROMPT_TOO_LONG):
        return PromptTooLong(message)  # the agent loop compacts and asks again
    return PermanentError(message)


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait per ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date)."""
    try:
        return max(0.0, float(headers["retry-after-ms"]) / 1000)
    except (KeyError, TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def refuses_context_management(err: anthropic.APIStatusError) -> bool:
    """Whether a 400 refuses the context-management betas or edits (not the prompt, nor anything
    else the request holds)."""
    if err.status_code != 400 or (err.type or _body_error_type(err.body)) != "invalid_request_error":
        return False
    detail = (err.api_message or "").lower()
    return not detail.startswith(PROMPT_TOO_LONG) and any(word in detail for word in _REFUSAL_WORDS)


def _body_error_type(body: object) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        value = body["error"].get("type")
        return value if isinstance(value, str) else None
    return None


def _short(body: object, limit: int = 200) -> str:
    text = body if isinstance(body, str) else "" if body is None else repr(body)
    return text if len(text) <= limit else text[:limit] + "..."
