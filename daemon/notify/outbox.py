"""What the outbox holds and which events fill it, decided once for every backend (no I/O).

A store backend numbers and inserts a task's events; in the same transaction it asks
``plan_notifications`` what those events notify, and inserts one ``outbox`` row per matching
target (``notify_targets`` of the task's owner, and operator-wide ones, not disabled, listing
the kind) with one ``INSERT ... SELECT`` of its own. Nothing is planned, and nothing written,
for events that notify nobody.

Trust: ``error`` and ``question`` carry text the model influenced. They go out as JSON string
values only (never as headers, markup or URLs) and are capped at ``TEXT_CAP`` characters.
"""

from __future__ import annotations

import json
import secrets
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the store imports this module: no import of the store at run time
    from ..store.models import NewEvent, Task

# The kinds a target may ask for ('test' is sent only on request, to one target).
KINDS = ("task.succeeded", "task.failed", "task.cancelled", "task.waiting_input", "task.pr_opened")
TEST_KIND = "test"
# The event types that can make a notification (a quick test before any planning).
NOTIFYING_TYPES = frozenset({"task.finished", "task.status", "git.pr_opened"})
TEXT_CAP = 2000  # characters of a model-influenced text (error, question) in a payload

_dumps = json.JSONEncoder(separators=(",", ":")).encode


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class TargetKind(StrEnum):
    WEBHOOK = "webhook"
    NTFY = "ntfy"
    WEBPUSH = "webpush"


# The id prefix of each kind of target; a delivery id ends with its target's id after the prefix.
TARGET_PREFIX = {TargetKind.WEBHOOK: "wh_", TargetKind.NTFY: "nt_", TargetKind.WEBPUSH: "wp_"}


@dataclass(frozen=True)
class Target:
    """A row of ``notify_targets``: where notifications of ``events`` go. ``user_id`` None: an
    operator-wide webhook (every user's tasks). ``secret_enc``: the webhook signing secret, ntfy
    access token or push keys, encrypted with ``SecretBox``."""

    id: str
    user_id: int | None
    kind: str
    url: str
    secret_enc: bytes | None
    events: tuple[str, ...]
    created_at: float
    disabled_at: float | None = None

    def public(self) -> dict[str, Any]:
        """The target as the API and agentctl show it (never its secret)."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "kind": self.kind,
            "url": self.url,
            "events": list(self.events),
            "created_at": self.created_at,
            "disabled_at": self.disabled_at,
        }


@dataclass(frozen=True)
class Delivery:
    """A row of ``outbox``: one notification to one target. ``id`` is stable across attempts
    and redeliveries (receivers drop duplicates by it); ``payload`` is the JSON text planned."""

    id: str
    target_id: str
    user_id: int | None
    task_id: str | None
    kind: str
    payload: str
    status: str
    attempts: int
    next_at: float
    claimed_by: str | None
    claim_until: float | None
    last_error: str | None
    last_status: int | None
    created_at: float
    delivered_at: float | None
    pending_since: float

    def public(self) -> dict[str, Any]:
        """The delivery as the API and agentctl show it."""
        return {
            "id": self.id,
            "target_id": self.target_id,
            "task_id": self.task_id,
            "kind": self.kind,
            "status": self.status,
            "attempts": self.attempts,
            "next_at": self.next_at if self.status == DeliveryStatus.PENDING else None,
            "last_error": self.last_error,
            "last_status": self.last_status,
            "created_at": self.created_at,
            "delivered_at": self.delivered_at,
        }


@dataclass(frozen=True)
class Notification:
    """One notification planned for a task's owner; the store makes a delivery of it for each
    matching target, with id ``delivery_id(nonce, target_id)``."""

    kind: str
    task_id: str
    user_id: int
    nonce: str
    payload: str


def new_nonce() -> str:
    return secrets.token_hex(8)


def delivery_id(nonce: str, target_id: str) -> str:
    """The delivery's id as the store's SQL writes it: ``'dlv_' || nonce || substr(target, 4)``."""
    return f"dlv_{nonce}{target_id[3:]}"


def repo_name(repo_url: object) -> str:
    """The last part of a repository URL's path ("calc" of ".../me/calc.git", of
    "git@host:me/calc.git"), never its host or credentials; "repository" when there is none."""
    text = str(repo_url or "")
    path = urllib.parse.urlsplit(text).path if "://" in text else text
    name = path.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".git")
    return name or "repository"


def capped(text: str | None, cap: int = TEXT_CAP) -> str | None:
    """``text`` cut to ``cap`` characters (with a mark that it was cut)."""
    if text is None or len(text) <= cap:
        return text
    return text[: cap - 1] + "…"


def plan_notifications(task: Task, new: Sequence[NewEvent], now: float) -> list[Notification]:
    """The notifications the events ``new`` of ``task`` make (``task`` as it is after them).

    ``task.finished`` -> ``task.<status>``; ``task.status`` to ``waiting_input`` ->
    ``task.waiting_input`` (the question is the status's reason); ``git.pr_opened`` ->
    ``task.pr_opened``. Any other event makes none.
    """
    found: list[Notification] = []
    for item in new:
        if item.type not in NOTIFYING_TYPES:
            continue
        data = item.data
        pr_url = task.pr_url
        if item.type == "task.finished":
            kind = f"task.{data.get('status')}"
        elif item.type == "git.pr_opened":
            kind, pr_url = "task.pr_opened", data.get("url") or pr_url
        elif data.get("status") == "waiting_input":
            kind = "task.waiting_input"
        else:
            continue
        if kind not in KINDS:
            continue
        payload: dict[str, Any] = {"kind": kind, "task": task_summary(task, pr_url=pr_url)}
        if kind == "task.waiting_input":
            payload["question"] = capped(task.reason)
        payload["created_at"] = now
        found.append(Notification(kind, task.id, task.user_id, new_nonce(), _dumps(payload)))
    return found


def task_summary(task: Task, *, pr_url: str | None = None) -> dict[str, Any]:
    """What a notification says of its task (``url`` is added when sent, from ``public_url``)."""
    return {
        "id": task.id,
        "status": task.status.value,
        "repo_url": task.repo_url,
        "branch": task.branch,
        "pr_url": pr_url or task.pr_url,
        "error": capped(task.error or (task.reason if task.status.value == "failed" else None)),
        "cost_usd": round(task.usage.cost_usd, 6),
    }


def probe_payload(target: Target, now: float) -> str:
    """The payload of a test delivery to ``target``."""
    return _dumps({"kind": TEST_KIND, "task": None, "target_id": target.id, "created_at": now})


def render(delivery: Delivery, public_url: str | None) -> dict[str, Any]:
    """The body sent for ``delivery``: its payload with its id first and the task's link
    (``public_url`` + ``/#/task/ID``) when ``public_url`` is set. The same for every attempt."""
    payload = json.loads(delivery.payload)
    task = payload.get("task")
    if isinstance(task, dict):
        task["url"] = f"{public_url.rstrip('/')}/#/task/{task['id']}" if public_url else None
    return {"id": delivery.id, **payload}


def body_bytes(body: dict[str, Any]) -> bytes:
    """The JSON bytes of a rendered body (compact, UTF-8): what a webhook signs and sends."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
