"""The ``ntfy`` channel: one message POSTed to the user's topic URL (https://docs.ntfy.sh/publish/).

The body is the message text; ``Title``, ``Tags`` (emoji short codes), ``Priority`` and
``Click`` (the task in the web client, when ``public_url`` is set) are ntfy's headers; an
access token, when the topic needs one, goes as ``Authorization: Bearer``. Header values are
built from fixed words and the repository's name in ASCII only: text the model influenced (an
error, a question) goes in the body alone, as plain text. The URL is called by the address
rules of ``channels.send_pinned``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .channels import Attempt, OwnClientChannel
from .outbox import Delivery, Target, TargetKind, repo_name

WHAT = "ntfy topic URL"
MESSAGE_CAP = 1000  # characters of the message body
# kind -> (title, tags, priority)
_STYLE = {
    "task.succeeded": ("Task succeeded", "white_check_mark", "default"),
    "task.failed": ("Task failed", "x", "high"),
    "task.cancelled": ("Task cancelled", "no_entry_sign", "low"),
    "task.waiting_input": ("Task needs your answer", "question", "high"),
    "task.pr_opened": ("Pull request opened", "arrow_heading_up", "default"),
    "test": ("Test notification", "bell", "default"),
}
_NOT_HEADER_SAFE = re.compile(r"[^A-Za-z0-9._ -]")


def _repo_name(repo_url: object) -> str:
    """``outbox.repo_name`` cut to header-safe ASCII."""
    return _NOT_HEADER_SAFE.sub("", repo_name(repo_url))[:60] or "repository"


def message_for(payload: dict[str, Any]) -> tuple[dict[str, str], str]:
    """ntfy's headers and the message text for a rendered payload."""
    kind = str(payload.get("kind"))
    title, tags, priority = _STYLE.get(kind, ("agentd", "bell", "default"))
    task = payload.get("task") or {}
    headers = {"Tags": tags, "Priority": priority}
    if task:
        title = f"{title}: {_repo_name(task.get('repo_url'))}"
        if task.get("url"):
            headers["Click"] = str(task["url"])
    headers["Title"] = title
    if kind == "task.waiting_input":
        text = str(payload.get("question") or "")
    elif kind == "task.pr_opened":
        text = str(task.get("pr_url") or "")
    elif kind == "test":
        text = "Notifications from agentd reach this topic."
    else:
        text = str(task.get("error") or task.get("status") or "")
    if len(text) > MESSAGE_CAP:
        text = text[: MESSAGE_CAP - 1] + "…"
    return headers, text or title


class NtfyChannel(OwnClientChannel):
    kind = TargetKind.NTFY.value
    what = WHAT

    async def deliver(self, delivery: Delivery, target: Target, secret: str | None) -> Attempt:
        """POST the message to the topic (with the access token ``secret``, if any)."""
        headers, text = message_for(json.loads(delivery.payload))
        headers["Content-Type"] = "text/plain; charset=utf-8"
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        return await self._post(target.url, text.encode(), headers, self._now())
