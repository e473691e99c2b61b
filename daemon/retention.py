"""Retention: what the store keeps of the past, and the room it gives back (issue 22).

A task that finished more than ``retention_days`` ago loses its history: its events but the
last, its conversation with the model, its tool calls and the inputs it took. Its row stays,
the summary a person looks back at (status, outcome, error, usage and cost, branch, pull
request, timestamps), marked ``compacted_at`` so that the API and the client say "history
removed" instead of showing an empty log. The last event stays because it carries the task's
seq on: a follow-up on a compacted task goes on after it, no seq is ever used twice. A task
that runs, waits or was followed up since is never touched (checked again at every batch).

Also removed once older than ``retention_days``: API tokens and share links revoked or expired,
and outbox deliveries that are over (delivered or failed); expired one-time values (sign-ins
never finished) whatever their age. ``retention_days = 0`` keeps everything but those.

Everything is deleted in batches of ``BATCH_ROWS`` rows, one short write transaction each, so
the store's one writer (SQLite) is never held long and a live task's events go on between two
batches; the longest batch is measured and reported. Then the room: on SQLite the freed pages
go back to the file system in steps of ``RECLAIM_PAGES`` (``store.sqlite_space``, incremental
vacuum); on PostgreSQL plain batched ``DELETE``\\s leave the room to autovacuum, which makes it
reusable without a lock (the files do not shrink; a ``VACUUM FULL`` would lock the tables).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

import trio
from prometheus_client import Counter, Gauge

from .maintenance import forget_expired
from .metrics import Metrics
from .store import Store

log = logging.getLogger(__name__)

DAY_S = 86400.0
#: Rows a batch deletes at most: a few ms of the writer (see the README's measurement).
BATCH_ROWS = 500
#: Pages a reclaim step gives back at most (1 MiB at SQLite's default 4 KiB page): about as
#: long a write as a batch of deletes.
RECLAIM_PAGES = 256
#: Tasks looked up at once.
TASKS_PER_ROUND = 100
#: The first periodic run, after a start.
START_DELAY_S = 60.0


@dataclass
class RetentionReport:
    """What one run removed and gave back."""

    retention_days: float
    tasks_compacted: int = 0
    #: Rows removed, by what they were: ``task_history``, ``api_tokens``, ``share_links``,
    #: ``one_time_values``, ``outbox_deliveries``.
    removed: dict[str, int] = field(default_factory=dict)
    bytes_reclaimed: int = 0
    batches: int = 0
    longest_batch_s: float = 0.0
    seconds: float = 0.0

    def public(self) -> dict[str, object]:
        shown = asdict(self)
        shown["longest_batch_s"] = round(self.longest_batch_s, 4)
        shown["seconds"] = round(self.seconds, 3)
        return shown


class _Run:
    """One run's counting: every write goes through ``batch``, which times it."""

    def __init__(self, report: RetentionReport) -> None:
        self.report = report

    async def batch(self, write: Callable[[], Awaitable[int | None]]) -> int | None:
        began = time.perf_counter()
        result = await write()
        self.report.batches += 1
        self.report.longest_batch_s = max(self.report.longest_batch_s, time.perf_counter() - began)
        return result

    def count(self, what: str, rows: int) -> None:
        self.report.removed[what] = self.report.removed.get(what, 0) + rows

    async def until_done(self, what: str, write: Callable[[], Awaitable[int]]) -> None:
        """Run ``write`` (one batch of ``BATCH_ROWS`` at most) until a batch falls short."""
        while True:
            removed = await self.batch(write) or 0
            self.count(what, removed)
            if removed < BATCH_ROWS:
                return


async def run_retention(
    store: Store, retention_days: float, *, metrics: Metrics | None = None
) -> RetentionReport:
    """Remove what is older than ``retention_days`` (see the module's docstring), give the
    room back, log one line and count it in ``metrics``; the report.

    Cancellation: stops between two batches; each batch has committed or not. A task left
    half compacted (some events gone, not marked) is still due and finished by the next run.
    """
    began = time.perf_counter()
    run = _Run(RetentionReport(retention_days))
    if retention_days > 0:
        cutoff = store.now() - retention_days * DAY_S
        await _compact_tasks(store, run, cutoff)
        await run.until_done("api_tokens", lambda: store.delete_dead_tokens(cutoff, BATCH_ROWS))
        await run.until_done("share_links", lambda: store.delete_dead_share_links(cutoff, BATCH_ROWS))
        await run.until_done("outbox_deliveries", lambda: store.delete_old_deliveries(cutoff, BATCH_ROWS))
    run.count("one_time_values", await run.batch(lambda: forget_expired(store)) or 0)
    if await store.reclaimable_bytes():
        while reclaimed := await run.batch(lambda: store.reclaim_space(RECLAIM_PAGES)):
            run.report.bytes_reclaimed += reclaimed
        await store.settle_space()
    report = run.report
    report.seconds = time.perf_counter() - began
    log.info(
        "retention: %d tasks compacted, %d rows removed (%s), %d bytes given back, "
        "%d batches, the longest %.1f ms",
        report.tasks_compacted,
        sum(report.removed.values()),
        ", ".join(f"{what} {rows}" for what, rows in report.removed.items() if rows) or "nothing",
        report.bytes_reclaimed,
        report.batches,
        report.longest_batch_s * 1000,
    )
    if metrics is not None:
        retention_metrics(metrics).observe(report)
    return report


async def _compact_tasks(store: Store, run: _Run, cutoff: float) -> None:
    """Compact every finished task due at ``cutoff``, a batch at a time."""
    seen: set[str] = set()  # each task once a run, whatever the clocks of other nodes say
    while True:
        found = await store.tasks_due_for_compaction(cutoff, TASKS_PER_ROUND)
        due = [task_id for task_id in found if task_id not in seen]
        if not due:
            return
        for task_id in due:
            seen.add(task_id)
            if await _compact_task(store, run, task_id, cutoff):
                run.report.tasks_compacted += 1


async def _compact_task(store: Store, run: _Run, task_id: str, cutoff: float) -> bool:
    """One task's history, in batches; False when it went back to work meanwhile."""
    while True:
        removed = await run.batch(lambda: store.delete_task_details(task_id, cutoff, BATCH_ROWS))
        if removed is None:
            return False
        run.count("task_history", removed)
        if removed < BATCH_ROWS:
            break
    removed = await run.batch(lambda: store.finish_compaction(task_id, cutoff))
    if removed is None:
        return False
    run.count("task_history", removed)
    return True


async def retain_periodically(
    store: Store, retention_days: float, interval_s: float, *, metrics: Metrics | None = None
) -> None:
    """``run_retention`` every ``interval_s`` until cancelled, the first time ``START_DELAY_S``
    (or ``interval_s``, if shorter) after the start, which has work of its own (recovery,
    tasks resuming); a failed run is logged and the next one tries again. Cancellation: as
    ``run_retention``'s."""
    await trio.sleep(min(START_DELAY_S, interval_s))
    while True:
        try:
            await run_retention(store, retention_days, metrics=metrics)
        except Exception as exc:  # a store hiccup must not stop the daemon
            log.warning("retention failed: %s", exc, exc_info=exc)
        await trio.sleep(interval_s)


class RetentionMetrics:
    """``agentd_retention_rows_removed_total{kind}``, ``agentd_retention_bytes_reclaimed_total``,
    ``agentd_retention_longest_batch_seconds`` (of the last run), on a daemon's registry."""

    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.rows = Counter(
            "agentd_retention_rows_removed", "Rows retention removed, by kind.", ["kind"], registry=registry
        )
        self.bytes = Counter(
            "agentd_retention_bytes_reclaimed",
            "Bytes of the store given back to the file system.",
            registry=registry,
        )
        self.longest = Gauge(
            "agentd_retention_longest_batch_seconds",
            "The longest delete batch of the last retention run.",
            registry=registry,
        )

    def observe(self, report: RetentionReport) -> None:
        for kind, rows in report.removed.items():
            self.rows.labels(kind).inc(rows)
        self.bytes.inc(report.bytes_reclaimed)
        self.longest.set(report.longest_batch_s)


_METRICS: weakref.WeakKeyDictionary[Metrics, RetentionMetrics] = weakref.WeakKeyDictionary()


def retention_metrics(metrics: Metrics) -> RetentionMetrics:
    """The retention families of ``metrics``' registry (made at the first call)."""
    found = _METRICS.get(metrics)
    if found is None:
        found = _METRICS[metrics] = RetentionMetrics(metrics)
    return found
