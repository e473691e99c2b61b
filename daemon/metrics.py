"""Prometheus metrics of one daemon, in a registry of its own.

Not the process-global registry: tests run several daemons in one process, and each must count
only its own. Nothing here reads SQLite at scrape time: task counts by state come from a
snapshot that ``run`` refreshes every few seconds (or ``refresh`` on demand); everything else is
counted as it happens, from committed events (``hub.add_global_listener``), the store's write
hook and a loop-lag sampler.

Families (all prefixed ``agentd_``): ``tasks{status}``, ``supervisor_{running,queued,
waiting_retry,concurrency}``, ``admitting``, ``task_attempt_seconds{outcome}``,
``task_retries_total``, ``model_tokens_total{model,kind}``, ``model_cost_usd_total{model}``,
``ws_connections``, ``store_write_seconds`` (event append latency), ``event_loop_lag_seconds``,
``build_info``; plus the standard ``process_*``.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .states import TaskStatus
from .store import Event
from .thirdparty.prometheus import encoder_for

log = logging.getLogger(__name__)

DEFAULT_REFRESH_S = 5.0
LAG_INTERVAL_S = 0.5
USAGE_KINDS = ("input", "output", "cache_read", "cache_write")

# Attempts run from seconds to the max duration (an hour by default).
ATTEMPT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
# One group commit is ~0.1-10 ms; seconds mean the disk or the writer is in trouble.
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The metrics of one daemon: ``attach`` it to the store, hub and supervisor, ``run`` it.

    ``ws_connected`` is for the WebSocket server: ``inc()`` on accept and ``dec()`` on close
    (or ``with metrics.ws_connected.track_inprogress(): ...``).
    """

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        Info("agentd_build", "The running agentd.", registry=registry).info({"version": __version__})
        self.attempt_seconds = Histogram(
            "agentd_task_attempt_seconds",
            "Duration of task attempts, by how they ended (the status after running).",
            ["outcome"],
            buckets=ATTEMPT_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "agentd_task_retries", "Retries scheduled after a transient failure.", registry=registry
        )
        self.model_tokens = Counter(
            "agentd_model_tokens",
            "Model tokens used, by model and kind.",
            ["model", "kind"],
            registry=registry,
        )
        self.model_cost = Counter(
            "agentd_model_cost_usd", "Model cost in US dollars, by model.", ["model"], registry=registry
        )
        self.ws_connected = Gauge("agentd_ws_connections", "Open WebSocket connections.", registry=registry)
        self.store_write_seconds = TrioHistogram(
            "agentd_store_write_seconds",
            "Event append latency: round trip of one write through the store's single writer "
            "(queueing and group commit included); every write, events or not, takes this path.",
            WRITE_BUCKETS,
        )
        registry.register(self.store_write_seconds)
        self.loop_lag_seconds = Histogram(
            "agentd_event_loop_lag_seconds",
            f"How late the Trio loop woke a {LAG_INTERVAL_S:g} s sleep: time the loop was blocked.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        ProcessCollector(registry=registry)
        registry.register(_StateCollector(self))
        self.tasks_by_status: dict[str, int] = {status.value: 0 for status in TaskStatus}
        self.supervisor: Any = None
        self._store: Any = None
        self._running_since: dict[str, float] = {}  # task id -> ts of its task.status running

    def attach(self, store: Any, hub: Any, supervisor: Any = None) -> None:
        """Count from ``hub``'s committed events and ``store``'s writes; show ``supervisor``'s stats."""
        self._store = store
        self.supervisor = supervisor
        hub.add_global_listener(self.on_events)
        observe_writes = getattr(store, "observe_writes", None)  # a backend may not have one
        if observe_writes is not None:
            observe_writes(self.store_write_seconds.observe)

    async def refresh(self) -> None:
        """Take a new snapshot of task counts by status (one read on a reader thread).

        Cancellation: the old snapshot stays.
        """
        counts = await self._store.count_by_status()
        self.tasks_by_status = {status.value: counts.get(status.value, 0) for status in TaskStatus}

    async def run(
        self, refresh_s: float = DEFAULT_REFRESH_S, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Refresh the snapshot every ``refresh_s`` and sample loop lag, until cancelled.

        ``task_status.started()`` after the first snapshot, so the first scrape has real counts.
        Cancellation: both loops stop; counters keep their values.
        """
        await self._refresh_quietly()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._refresh_every, refresh_s)
            nursery.start_soon(self._sample_loop_lag)
            task_status.started()

    def on_events(self, events: list[Event]) -> None:
        """The hub's global listener: never raises (the hub's other listeners come after us)."""
        try:
            for event in events:
                self._count(event)
        except Exception:  # a malformed event must not cost the WebSocket its live feed
            log.exception("metrics: could not count events")

    def _count(self, event: Event) -> None:
        data = event.data
        if event.type == "task.status":
            status = data.get("status")
            started = self._running_since.pop(event.task_id, None)
            if started is not None:
                self.attempt_seconds.labels(outcome=str(status)).observe(max(0.0, event.ts - started))
            if status == TaskStatus.RUNNING:
                self._running_since[event.task_id] = event.ts
        elif event.type == "task.retry_scheduled":
            self.retries.inc()
        elif event.type == "agent.usage":
            model = str(data.get("model") or "unknown")
            for kind in USAGE_KINDS:
                tokens = data.get(f"{kind}_tokens") or 0
                if tokens > 0:
                    self.model_tokens.labels(model=model, kind=kind).inc(tokens)
            cost = data.get("cost_usd") or 0
            if cost > 0:
                self.model_cost.labels(model=model).inc(cost)

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # noqa: BLE001 - a stale gauge is better than a dead daemon
            log.warning("metrics: task counts not refreshed: %s", exc)

    async def _refresh_every(self, refresh_s: float) -> None:
        while True:
            await trio.sleep(refresh_s)
            await self._refresh_quietly()

    async def _sample_loop_lag(self) -> None:
        while True:
            start = trio.current_time()
            await trio.sleep(LAG_INTERVAL_S)
            self.loop_lag_seconds.observe(max(0.0, trio.current_time() - start - LAG_INTERVAL_S))


class TrioHistogram(Collector):
    """A histogram without labels observed on the Trio thread only: plain numbers, no lock.

    Every store write is observed, thousands a second under load; ``prometheus_client``'s
    ``Histogram`` takes a lock and walks its buckets for each, several times the cost.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = list(buckets)
        self._counts = [0] * (len(buckets) + 1)  # the last one: above every bound
        self._le = _bucket_labels(buckets)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    @property
    def count(self) -> int:
        """How many values were observed."""
        return sum(self._counts)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[Metric]:
        cumulative, total = [], 0
        for bound, count in zip(self._le, self._counts, strict=True):
            total += count
            cumulative.append((bound, total))
        yield HistogramMetricFamily(self._name, self._documentation, buckets=cumulative, sum_value=self._sum)


def _bucket_labels(bounds: tuple[float, ...]) -> list[str]:
    """The ``le`` label of each bucket, ``+Inf`` last, as prometheus_client's own ``Histogram``
    writes them (``1.0``, ``0.005``, ``1e+06``): read once from one that is never registered."""
    model = Histogram("bucket_labels", "", buckets=bounds, registry=None)
    return [
        sample.labels["le"]
        for family in model.collect()
        for sample in family.samples
        if sample.name.endswith("_bucket")
    ]


class _StateCollector(Collector):
    """Scrape-time gauges from memory only: the cached task counts and the supervisor's stats."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return self._families(None, {})

    def collect(self) -> Iterator[Metric]:
        supervisor = self._metrics.supervisor
        return self._families(
            supervisor.stats() if supervisor is not None else None, self._metrics.tasks_by_status
        )

    @staticmethod
    def _families(stats: dict[str, Any] | None, tasks: dict[str, int]) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "agentd_tasks", "Tasks by status (snapshot, refreshed every few s).", labels=["status"]
        )
        for status, count in sorted(tasks.items()):
            family.add_metric([status], count)
        yield family
        for key in ("running", "queued", "waiting_retry", "concurrency"):
            yield GaugeMetricFamily(
                f"agentd_supervisor_{key}",
                f"The supervisor's {key} (live).",
                value=stats[key] if stats else None,
            )
        yield GaugeMetricFamily(
            "agentd_admitting",
            "1 while admitting tasks, 0 while draining.",
            value=int(stats["admitting"]) if stats else None,
        )


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """``(body, content_type)`` for an HTTP response: Prometheus text format, or OpenMetrics
    when the scraper's ``Accept`` header asks for it."""
    encoder, content_type = encoder_for(accept or "")
    return encoder(registry), content_type
