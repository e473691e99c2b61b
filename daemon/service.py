"""The daemon: one root nursery owning the store, supervisor, HTTP server and control socket.

Shutdown runs in named phases (uvicorn's way): ``draining`` (stop admitting, let running tasks
finish within the grace period), ``cancelling`` (cancel what is left; those tasks go back to
``queued``), ``stopping`` (close the servers), then the store is closed last.
Signal handlers only set flags: the first SIGTERM/SIGINT asks for this orderly stop, a second
one cuts the grace period short. Under systemd (Type=notify) the phases are reported with
sd_notify: READY=1 once serving, STOPPING=1 when draining starts, WATCHDOG=1 while the loop runs.
"""

from __future__ import annotations

import functools
import gc
import ipaddress
import logging
import signal
import socket
import time
from typing import Any

import trio
from quart_trio import QuartTrio

from .agent.factory import build_runner
from .agent.loop import AgentRunner
from .agent.tools.task_sandbox import describe_sandbox
from .config import Settings
from .control_handlers import make_handlers
from .control_server import ControlServer
from .cpu_pin import loop_on_one_cpu
from .events import EventHub
from .gc_tuning import collect_young_periodically, tune_gc_for_serving
from .key_rotation import check_stored_secrets
from .maintenance import collect_periodically
from .metrics import Metrics
from .metrics_http import serve_metrics
from .notify.sender import Sender
from .rate_limit import task_create_limiter
from .retention import retain_periodically
from .sdnotify import Notifier, watchdog
from .secrets import SecretBox, check_cluster_key, load_secret_box
from .services import Broadcast, Services
from .store import Revoked, Store, is_sqlite, open_store
from .store.datadir import node_id
from .supervisor import Backoff, Supervisor, TaskRunner
from .supervisor.membership import LeaseSettings, NodeIdentity
from .web.app import WebState, create_app, hypercorn_config
from .web.listener import serve as serve_http

log = logging.getLogger(__name__)

HTTP_CLOSE_TIMEOUT_S = 10.0


class Daemon:
    """Everything ``agentd serve`` runs. Attributes are set while ``serve`` runs; the front-ends
    get ``services`` and this object as their ``services.Runtime``."""

    def __init__(self, settings: Settings, *, runner: TaskRunner | None = None) -> None:
        self.settings = settings
        self.phase = "starting"
        self.started_at = time.time()
        self.store: Store | None = None
        self.hub: EventHub | None = None
        self.supervisor: Supervisor | None = None
        self.http_urls: list[str] = []
        self.metrics_urls: list[str] = []  # where /metrics is served when ``metrics_http`` is set
        self.metrics = Metrics()
        self.notifier = Notifier.from_environ()  # a no-op outside systemd
        self._runner = runner
        self._stop_requested = trio.Event()
        self.model_loaded = trio.Event()  # set once a provider loaded after serving is (Claude's)
        self._http_closing = trio.Event()
        self._http_done = trio.Event()
        self._grace_scope: trio.CancelScope | None = None
        self.secrets: SecretBox | None = None
        self.services: Services | None = None
        self.web: WebState | None = None
        self.app: QuartTrio | None = None

    @property
    def stop_requested(self) -> trio.Event:
        """Set at the first stop request (the WebSocket layer says goodbye then)."""
        return self._stop_requested

    @property
    def ready(self) -> bool:
        return self.phase == "serving" and self.supervisor is not None and self.supervisor.admitting

    def request_stop(self) -> None:
        """Ask for an orderly stop; asked twice, skip what is left of the grace period."""
        if self._stop_requested.is_set() and self._grace_scope is not None:
            self._grace_scope.cancel()
        self._stop_requested.set()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until a stop is requested; ``task_status.started(http_urls)`` once serving.

        Cancellation: everything stops at once; running tasks stay ``running`` in the store and
        are recovered at the next start, like after a crash. Use ``request_stop`` to drain.
        While serving on SQLite, this thread and the writer run on one CPU (``pin_loop_cpu``).
        """
        # Pinned only with SQLite, whose writer thread it is for (PostgreSQL has none).
        with loop_on_one_cpu(self.settings.pin_loop_cpu and is_sqlite(self.settings.store)):
            await self._serve(task_status=task_status)

    async def _serve(self, *, task_status: Any) -> None:
        settings = self.settings
        # A bad model setting or secret key stops us here, before anything is opened.
        self.secrets = load_secret_box(settings)
        runner = self._runner or build_runner(settings, github_token=self._github_token)
        node = NodeIdentity(
            id=node_id(settings.data_dir), name=settings.node_name or socket.gethostname(), http=settings.http
        )
        self.store = store = await open_store(settings.data_dir, settings.store, node_id=node.id)
        try:
            await check_cluster_key(store, self.secrets, settings, node.name)  # a shared store's keys
            await check_stored_secrets(store, self.secrets, settings, node.name)  # every store's
            self.hub = EventHub(store)
            revoked: Broadcast[Revoked] = Broadcast()  # here and, heard by the supervisor, elsewhere
            self.supervisor = supervisor = Supervisor(
                store,
                self.hub,
                runner,
                concurrency=settings.concurrency,
                user_concurrency=settings.user_concurrency,
                backoff=Backoff(settings.retry_base_s, settings.retry_cap_s, settings.max_attempts),
                max_duration_s=settings.max_task_duration_s,
                node=node,
                lease=LeaseSettings(settings.lease_timeout_s, settings.heartbeat_interval_s),
                on_revoked=revoked.announce,
            )
            self.metrics.attach(store, self.hub, supervisor)
            self.services = svc = Services(
                settings=settings,
                store=store,
                hub=self.hub,
                supervisor=supervisor,
                metrics=self.metrics,
                secrets=self.secrets,
                create_limiter=task_create_limiter(settings, store),
                revoked=revoked,
            )
            control = ControlServer(
                settings.control_socket_path, make_handlers(svc, self), group=settings.control_socket_group
            )
            async with trio.open_nursery() as services:
                if self.notifier.watchdog_interval_s is not None:
                    services.start_soon(watchdog, self.notifier, self.notifier.watchdog_interval_s)
                await services.start(self.metrics.run, settings.metrics_refresh_s)
                await services.start(supervisor.run)
                outbox = Sender(
                    store, settings, self.secrets, claimer=node.id, registry=self.metrics.registry
                )
                await services.start(outbox.run)
                self.http_urls = await services.start(self._serve_http, svc)
                if settings.metrics_http is not None:
                    self.metrics_urls = await services.start(
                        serve_metrics, settings.metrics_http, self.metrics
                    )
                await services.start(control.serve)
                services.start_soon(
                    collect_periodically,
                    store,
                    settings.data_dir / "workspaces",
                    settings.workspace_keep_days,
                )
                services.start_soon(
                    functools.partial(
                        retain_periodically,
                        store,
                        settings.retention_days,
                        settings.retention_interval_s,
                        metrics=self.metrics,
                    )
                )
                if settings.gc_young_interval_s:
                    services.start_soon(collect_young_periodically, settings.gc_young_interval_s)
                self.phase = "serving"
                if isinstance(runner, AgentRunner):
                    services.start_soon(self._warm_up, runner)
                    services.start_soon(
                        describe_sandbox, runner.settings.tools, runner.settings.workspace_root
                    )
                log.info("agentd serving on %s", ", ".join(self.http_urls))
                _say_where_metrics_are(settings, self.metrics_urls)
                self.notifier.notify(f"READY=1\nSTATUS=serving on {', '.join(self.http_urls)}")
                task_status.started(self.http_urls)
                await self._stop_requested.wait()

                self.phase = "draining"
                self.notifier.notify(f"STOPPING=1\nSTATUS=draining, up to {settings.grace_period_s:g} s")
                log.info("draining: no new tasks, waiting up to %ss", settings.grace_period_s)
                with trio.CancelScope() as self._grace_scope:
                    await supervisor.shutdown(settings.grace_period_s)
                self.phase = "cancelling"
                await supervisor.shutdown(0)
                self.phase = "stopping"
                self._http_closing.set()  # open HTTP requests finish, then the listener returns
                with trio.move_on_after(HTTP_CLOSE_TIMEOUT_S):
                    await self._http_done.wait()
                services.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()
            self.notifier.close()
            self.phase = "stopped"
            log.info("agentd stopped")

    async def _warm_up(self, runner: AgentRunner) -> None:
        """Build the model provider now, in the background (``factory.BuiltInBackground``)."""
        began = time.perf_counter()
        try:
            if not await runner.warm_up():
                return
        except Exception as exc:  # the first task that needs it fails with the same words
            log.error("%s", exc, exc_info=exc.__cause__ or exc)
            return
        log.info("model provider %s loaded in %.2f s", runner.provider.name, time.perf_counter() - began)
        self.model_loaded.set()

    async def _serve_http(self, services: Services, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """HTTP and ``/ws`` until ``_http_closing`` is set, then a graceful close of open requests."""
        config = hypercorn_config(self.settings)
        self.web = state = WebState.build(services)
        self.app = create_app(state, self)
        try:
            await serve_http(
                self.app, config, state, shutdown_trigger=self._http_closing.wait, task_status=task_status
            )
        finally:
            self._http_done.set()

    async def _github_token(self, user_id: int) -> str | None:
        """The user's GitHub token, decrypted for one git or API call; never stored in clear."""
        assert self.store is not None and self.secrets is not None
        encrypted = await self.store.github_token_enc(user_id)
        return self.secrets.decrypt(encrypted) if encrypted else None


def _say_where_metrics_are(settings: Settings, urls: list[str]) -> None:
    """Log where ``/metrics`` is served, and warn when that is the HTTP port on an address
    others may reach: scrapers and their metrics belong on a private one (``metrics_http``)."""
    if urls:
        log.info("metrics on %s", ", ".join(urls))
        return
    host, _ = settings.http_host_port
    try:
        private = ipaddress.ip_address(host).is_loopback
    except ValueError:
        private = host == "localhost"
    if not private:
        log.warning(
            "/metrics is served on %s with the other routes, to whoever reaches that port: set "
            "metrics_http (AGENTD_METRICS_HTTP) to a private HOST:PORT to serve it there instead",
            settings.http,
        )


async def watch_signals(daemon: Daemon) -> None:
    """Turn SIGTERM/SIGINT into ``request_stop`` calls, and nothing more."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            daemon.request_stop()


async def run_daemon(daemon: Daemon) -> None:
    """Serve with signal handling; returns after an orderly stop. Once serving, the garbage
    collector is tuned for it (``tune_gc_for_serving``) and enabled, if it was not."""
    async with trio.open_nursery() as nursery:

        async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await daemon.serve(task_status=task_status)
            nursery.cancel_scope.cancel()  # stopped: no more signals to watch

        nursery.start_soon(watch_signals, daemon)
        await nursery.start(serve)
        tune_gc_for_serving()
        gc.enable()  # ``agentd serve`` starts with it off (``cli``): nothing built before is garbage
        nursery.start_soon(tune_gc_once_loaded, daemon)


async def tune_gc_once_loaded(daemon: Daemon) -> None:
    """Once the model provider is loaded (after serving), put what its import built out of the
    collector's way too, if no task runs yet: what a running task holds would be frozen with it,
    never collected. Cancellation: nothing done."""
    await daemon.model_loaded.wait()
    if daemon.supervisor is not None and daemon.supervisor.stats()["running"] == 0:
        tune_gc_for_serving()
