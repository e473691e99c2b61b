"""The parts of a serving daemon that the front-ends use, in one typed object.

``service.py`` builds one ``Services`` once the store is open and hands it to the HTTP app and
the control handlers; none of its parts is ever missing. What they need to know of the running
daemon itself (its phase, its addresses, whether it is stopping) comes through ``Runtime``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from .config import Settings
from .events import EventHub
from .metrics import Metrics
from .rate_limit import Limiter
from .secrets import SecretBox
from .store import Store
from .supervisor import Supervisor


@dataclass(frozen=True, eq=False)
class Services:
    """Settings, store, event hub, supervisor, metrics, secrets and the per-user create limit
    (task creations and follow-ups share one bucket per user)."""

    settings: Settings
    store: Store
    hub: EventHub
    supervisor: Supervisor
    metrics: Metrics
    secrets: SecretBox
    create_limiter: Limiter  # in the store when other daemons share it (rate_limit)


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
