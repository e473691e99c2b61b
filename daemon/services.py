"""The parts of a serving daemon that the front-ends use, in one typed object.

``service.py`` builds one ``Services`` once the store is open and hands it to the HTTP app and
the control handlers; none of its parts is ever missing. What they need to know of the running
daemon itself (its phase, its addresses, whether it is stopping) comes through ``Runtime``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import trio

from .config import Settings
from .events import EventHub
from .metrics import Metrics
from .rate_limit import Limiter
from .secrets import SecretBox
from .store import Revoked, Store
from .supervisor import Supervisor

T = TypeVar("T")


class Broadcast(Generic[T]):
    """Something that just happened on this daemon, told at once to every listener (in the order
    they were added) on the Trio thread. A listener must not block and must not raise: the one
    announcing has done its part already (committed to the store), and a listener's error would
    come back to it."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[T], None]] = []

    def listen(self, listener: Callable[[T], None]) -> Callable[[], None]:
        """Call ``listener`` with each announcement from now on; returns what stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def announce(self, value: T) -> None:
        for listener in tuple(self._listeners):
            listener(value)


@dataclass(frozen=True, eq=False)
class Services:
    """Settings, store, event hub, supervisor, metrics, secrets and the per-user create limit
    (task creations and follow-ups share one bucket per user); ``revoked``: each share link,
    token or user cut off (``store.Revoked``) on this daemon, whichever front-end did it
    (``announce_revoked``), or on another daemon sharing the store (heard by the supervisor's
    ``remote_events``), so the web side closes what it opened with it at once."""

    settings: Settings
    store: Store
    hub: EventHub
    supervisor: Supervisor
    metrics: Metrics
    secrets: SecretBox
    create_limiter: Limiter  # in the store when other daemons share it (rate_limit)
    revoked: Broadcast[Revoked] = field(default_factory=Broadcast)

    async def announce_revoked(self, revoked: Revoked) -> None:
        """``revoked`` was just stored: close what it opened here (``revoked``) and on every
        other daemon sharing the store (``store.tell_revoked``). Cancellation while the store
        writes (the notice is sent anyway: a write is not abandoned); before it (the caller
        was cancelled between its own write and this): the others close at their next token
        re-check (``ws_reauth_interval_s``)."""
        self.revoked.announce(revoked)
        await self.store.tell_revoked(revoked)


class Runtime(Protocol):
    """The running daemon as the front-ends see it (``service.Daemon`` is one)."""

    @property
    def phase(self) -> str:
        """``starting``, ``serving``, ``draining``, ``cancelling``, ``stopping``, ``stopped``."""
        ...

    @property
    def started_at(self) -> float:
        """Wall-clock time the daemon started."""
        ...

    @property
    def http_urls(self) -> list[str]:
        """Where the HTTP port listens (empty before it does)."""
        ...

    @property
    def ready(self) -> bool:
        """Serving and admitting tasks."""
        ...

    @property
    def stop_requested(self) -> trio.Event:
        """Set at the first stop request."""
        ...
