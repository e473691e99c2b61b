"""The outbox's sender: claims due deliveries, delivers them, retries, gives up, records.

One ``Sender`` runs in the daemon's nursery (``service.py``). It claims due deliveries for its
node (a claim lasts ``notify_claim_s``; of several daemons on one PostgreSQL store one claims
each row), delivers up to ``notify_concurrency`` at once through the channel of the target's
kind, and records each attempt: delivered; retried after an exponential backoff with jitter
(at least the receiver's ``Retry-After``); failed once ``notify_max_attempts`` attempts were
made or ``notify_max_age_s`` passed since it was first due (said in the log); a target the
receiver calls gone is disabled.

It wakes when this daemon commits an event that may notify (the store's listener), when a
test or redelivery is written (``store.on_outbox``), when a delivery ends, and at the next due
time (a retry, another daemon's rows, an expired claim): no polling loop.

At-least-once: a delivery in flight when the daemon dies keeps its claim until it expires (at
the next start this node frees its own claims at once) and is delivered again with the same id;
receivers drop duplicates by id.

``channels_for`` builds the channels, one per kind: a new channel is one line there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..config import Settings
from ..secrets import SecretBox
from ..store import Event, Store
from .channels import ERROR_CAP, Attempt, Channel, Verdict, trusted_cas
from .ntfy import NtfyChannel
from .outbox import NOTIFYING_TYPES, Delivery, DeliveryStatus, Target, capped, render
from .webhooks import WebhookChannel
from .webpush import WebPushChannel

log = logging.getLogger(__name__)

IDLE_CHECK_S = 60.0  # with nothing due, look again this often (other daemons' rows)
STORE_RETRY_S = 5.0  # after a failed store call
GAUGE_EVERY_S = 5.0  # how stale agentd_notify_pending may be


def channels_for(settings: Settings, store: Store, secrets: SecretBox) -> dict[str, Channel]:
    """Every channel the sender delivers through, by target kind; the trusted CAs are read
    once, for all of them (``ConfigError`` when they cannot be)."""
    cas = trusted_cas()
    channels: list[Channel] = [
        WebhookChannel(settings, now=store.now, ssl_context=cas),
        NtfyChannel(settings, now=store.now, ssl_context=cas),
        WebPushChannel(settings, store, secrets, ssl_context=cas),
    ]
    return {channel.kind: channel for channel in channels}


class OutboxMetrics:
    """``agentd_notify_deliveries_total{kind,verdict}`` (attempts by channel kind and how they
    went) and ``agentd_notify_pending`` (deliveries waiting, as of the sender's last idle)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.attempts = Counter(
            "agentd_notify_deliveries",
            "Outbox delivery attempts, by target kind and verdict (delivered, retry, gone, failed, gave_up).",
            ["kind", "verdict"],
            registry=registry,
        )
        self.pending = Gauge(
            "agentd_notify_pending", "Outbox deliveries waiting to be sent.", registry=registry
        )


class Sender:
    """Delivers the outbox; see the module docstring. ``run`` it in a nursery."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        secrets: SecretBox,
        *,
        claimer: str,
        channels: dict[str, Channel] | None = None,
        registry: CollectorRegistry | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.secrets = secrets
        self.claimer = claimer
        self.channels = channels if channels is not None else channels_for(settings, store, secrets)
        self.metrics = OutboxMetrics(registry)
        self._rng = rng or random.Random()
        self._wakeup = trio.Event()
        self._in_flight = 0
        self._gauge_due = -math.inf

    def wake(self) -> None:
        """Look for due deliveries now (callable from the Trio thread only)."""
        self._wakeup.set()

    def on_events(self, events: list[Event]) -> None:
        """The store's listener: committed events that may have written deliveries wake us."""
        for event in events:
            if event.type in NOTIFYING_TYPES:
                self._wakeup.set()
                return

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled; ``task_status.started()`` once this node's old claims are
        freed and the sender listens for new deliveries.

        Cancellation: deliveries in flight are abandoned (their claims expire; they are sent
        again, same id); the channels are closed.
        """
        self.store.on_outbox = self.wake
        self.store.add_listener(self.on_events)
        freed = await self.store.release_claims(self.claimer)
        if freed:
            log.info("outbox: %d deliveries in flight at the last stop will be sent again", freed)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                await self._loop(nursery)
        finally:
            with trio.CancelScope(shield=True):
                for channel in self.channels.values():
                    await channel.aclose()

    async def _loop(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                await self._round(nursery)
            except Exception:  # the store is away (PostgreSQL restarting...): the daemon goes on
                log.exception("outbox: the sender could not reach the store; trying again")
                with trio.move_on_after(STORE_RETRY_S):
                    await self._wakeup.wait()

    async def _round(self, nursery: trio.Nursery) -> None:
        """Claim what is due and start delivering it, or wait for a reason to look again."""
        concurrency = self.settings.notify_concurrency
        self._wakeup = trio.Event()  # before the claim: a wake meanwhile is not lost
        free = concurrency - self._in_flight
        claimed: list[Delivery] = []
        if free > 0:
            claimed = await self.store.claim_deliveries(
                self.claimer, claim_s=self.settings.notify_claim_s, limit=free
            )
        if claimed:
            targets = await self.store.targets_by_ids(sorted({d.target_id for d in claimed}))
            for delivery in claimed:
                self._in_flight += 1
                nursery.start_soon(self._deliver_one, delivery, targets.get(delivery.target_id))
            if len(claimed) == free:
                await self._wakeup.wait()  # a slot frees (or more is committed)
            return
        if free <= 0:
            await self._wakeup.wait()
            return
        await self._idle()

    async def _idle(self) -> None:
        """Sleep until the next due delivery, a wake, or ``IDLE_CHECK_S``."""
        due = await self.store.next_delivery_due()
        if trio.current_time() >= self._gauge_due:  # a count, not on every idle of a busy sender
            self._gauge_due = trio.current_time() + GAUGE_EVERY_S
            self.metrics.pending.set(await self.store.count_pending_deliveries())
        wait = IDLE_CHECK_S if due is None else min(IDLE_CHECK_S, due - self.store.now())
        if wait > 0:
            with trio.move_on_after(wait):
                await self._wakeup.wait()

    async def _deliver_one(self, delivery: Delivery, target: Target | None) -> None:
        try:
            await self._attempt(delivery, target)
        except Exception:  # its claim runs out and it is sent again; the others go on
            log.exception("outbox: delivery %s could not be recorded", delivery.id)
        finally:
            self._in_flight -= 1
            self._wakeup.set()

    async def _attempt(self, delivery: Delivery, target: Target | None) -> None:
        if target is None or target.disabled_at is not None:
            await self._record(delivery, "removed", Attempt(Verdict.FAILED, error="the target was removed"))
            return
        channel = self.channels.get(target.kind)
        if channel is None:
            await self._record(
                delivery,
                target.kind,
                Attempt(Verdict.FAILED, error=f"no {target.kind} channel on this daemon"),
            )
            return
        try:
            secret = self.secrets.decrypt(target.secret_enc) if target.secret_enc else None
        except Exception as exc:  # noqa: BLE001 - a key rotated away: said on the delivery
            await self._record(
                delivery, target.kind, Attempt(Verdict.FAILED, error=f"unreadable secret: {exc}")
            )
            return
        body = render(delivery, self.settings.public_url)
        rendered = dataclasses.replace(
            delivery, payload=json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        )
        try:
            attempt = await channel.deliver(rendered, target, secret)
        except Exception as exc:  # a channel's bug must not stop the sender; retried with backoff
            log.exception("outbox: %s channel failed on delivery %s", target.kind, delivery.id)
            attempt = Attempt(Verdict.RETRY, error=f"internal error: {type(exc).__name__}")
        await self._record(delivery, target.kind, attempt)
        if attempt.verdict is Verdict.GONE:
            await self.store.disable_target(target.id, attempt.error or "the receiver says it is gone")
            log.info("outbox: target %s disabled: %s", target.id, attempt.error)

    async def _record(self, delivery: Delivery, kind: str, attempt: Attempt) -> None:
        """Write the attempt's result; a retry gets its next time or, past the limits, fails."""
        error = capped(attempt.error, ERROR_CAP)
        verdict = attempt.verdict.value
        if attempt.verdict is Verdict.DELIVERED:
            await self.store.record_attempt(
                delivery.id, DeliveryStatus.DELIVERED, status_code=attempt.status_code
            )
            log.info(
                "outbox: delivery %s delivered (%s to %s, attempt %d)",
                delivery.id,
                delivery.kind,
                delivery.target_id,
                delivery.attempts + 1,
                extra={"task_id": delivery.task_id},
            )
        elif attempt.verdict is Verdict.RETRY and not self._exhausted(delivery):
            delay = self.backoff_s(delivery.attempts + 1, attempt.retry_after_s)
            await self.store.record_attempt(
                delivery.id,
                DeliveryStatus.PENDING,
                next_at=self.store.now() + delay,
                error=error,
                status_code=attempt.status_code,
            )
        else:
            if attempt.verdict is Verdict.RETRY:
                verdict = "gave_up"
                error = capped(f"gave up after {delivery.attempts + 1} attempts: {error}", ERROR_CAP)
            await self.store.record_attempt(
                delivery.id, DeliveryStatus.FAILED, error=error, status_code=attempt.status_code
            )
            log.warning(
                "outbox: delivery %s (%s to %s) failed: %s",
                delivery.id,
                delivery.kind,
                delivery.target_id,
                error,
                extra={"task_id": delivery.task_id},
            )
        self.metrics.attempts.labels(kind=kind, verdict=verdict).inc()

    def _exhausted(self, delivery: Delivery) -> bool:
        made = delivery.attempts + 1
        too_old = self.store.now() - delivery.pending_since >= self.settings.notify_max_age_s
        return made >= self.settings.notify_max_attempts or too_old

    def backoff_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """The delay after failed attempt ``attempt`` (1-based): uniform in [c/2, c] with
        c = min(cap, base * 2^(attempt-1)) (so each retry waits at least as long as the one
        before), and never less than ``retry_after_s`` (capped too)."""
        settings = self.settings
        ceiling = min(settings.notify_retry_cap_s, settings.notify_retry_base_s * 2 ** max(0, attempt - 1))
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, settings.notify_retry_cap_s))
        return delay
