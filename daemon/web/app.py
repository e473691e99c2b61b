"""The HTTP application (Quart-Trio): health, readiness, metrics and the phone API.

``/ws`` is not a Quart route: ``listener.py`` hands its upgrades to ``ws.py`` on the socket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from hypercorn.config import Config as HypercornConfig
from prometheus_client import Gauge
from quart import Response, jsonify, request
from quart.typing import ResponseReturnValue
from quart_schema import QuartSchema
from quart_trio import QuartTrio

from .. import __version__
from ..config import Settings
from ..metrics import render
from ..rate_limit import RateLimiter
from ..services import Runtime, Services
from ..store import Store
from . import admin, client, client_api, notify_routes, push_routes, share_routes
from .auth import Authenticator
from .errors import register_error_handlers
from .fanout import Fanout
from .github_oauth import OAuthFlows, oauth_blueprint
from .revocations import close_cut
from .routes import bp as tasks_blueprint
from .session import CLOSE_GOING_AWAY, Session
from .ws import frame_text
from .ws_sweeps import sweep


@dataclass(eq=False)
class WebState:
    """What the routes share: the daemon's services plus auth, limits and live fan-out."""

    services: Services
    fanout: Fanout
    auth: Authenticator
    oauth: OAuthFlows
    subscribe_limiter: RateLimiter
    sessions: dict[Session, Any] = field(default_factory=dict)  # each with its ws.Connection
    connections: Any = None  # the listener's http_limits.ConnectionCaps: open connections
    going_away: bool = False

    @classmethod
    def build(cls, services: Services) -> WebState:
        settings = services.settings
        state = cls(
            services=services,
            fanout=Fanout(
                services.hub, services.store, delta_interval_s=settings.ws_delta_interval_s, frame=frame_text
            ),
            auth=Authenticator(services.store),
            oauth=OAuthFlows(services.store, login_ttl_s=settings.oauth_login_ttl_s),
            subscribe_limiter=RateLimiter(settings.rate_subscribes_per_min, settings.rate_subscribes_burst),
        )
        # A share link, token or user revoked on any daemon sharing the store, by a route or by
        # agentctl, closes its /ws at once.
        services.revoked.listen(partial(close_cut, state.sessions))
        return state

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def store(self) -> Store:
        return self.services.store

    def close_all(self, code: int, reason: str) -> None:
        self.going_away = True
        for session in list(self.sessions):
            session.close(code, reason)


def hypercorn_config(settings: Settings) -> HypercornConfig:
    """Hypercorn's settings: bind and timeouts (it serves no WebSocket: ``/ws`` is ``ws.py``'s)."""
    config = HypercornConfig()
    host, port = settings.http_host_port
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.graceful_timeout = 5.0
    # A peer silent this long mid-request is gone (the same time ``/ws`` gives a silent peer).
    config.read_timeout = int(settings.ws_ping_interval_s + settings.ws_ping_timeout_s + 0.999)
    config.errorlog = logging.getLogger("hypercorn.error")  # through our log setup and redaction
    return config


def create_app(state: WebState, runtime: Runtime) -> QuartTrio:
    """The app serving ``state``'s services: health, readiness, metrics, the phone API, sign-in
    and the operator API; ``runtime`` says whether the daemon is ready and when it stops."""
    settings, daemon_metrics = state.settings, state.services.metrics
    app = QuartTrio("agentd")
    app.config["MAX_CONTENT_LENGTH"] = settings.http_max_body_bytes
    QuartSchema(
        app,
        openapi_path="/openapi.json",
        redoc_ui_path=None,
        scalar_ui_path=None,
        swagger_ui_path=None,
        info={"title": "agentd", "version": __version__},
        security_schemes={
            "bearer": {"type": "http", "scheme": "bearer"},
            # A share link's token (/api/shared/...): "Authorization: Share <token>".
            "share": {"type": "apiKey", "in_": "header", "name": "Authorization"},
        },
        security=[{"bearer": []}],
    )
    register_error_handlers(app)

    @app.get("/healthz")
    async def healthz() -> ResponseReturnValue:
        """Liveness.

        200 as long as the process answers HTTP.
        """
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> ResponseReturnValue:
        """Readiness.

        200 while serving and admitting tasks; 503 with the phase (draining...) otherwise.
        """
        ready = runtime.ready
        body = {"status": "ready" if ready else runtime.phase, "admitting": ready}
        return jsonify(body), 200 if ready else 503

    app.extensions["agentd"] = state  # what auth.web_state() gives the routes
    app.register_blueprint(tasks_blueprint)
    app.register_blueprint(oauth_blueprint(state))
    app.register_blueprint(admin.bp)  # /admin, operators only
    app.register_blueprint(client.bp)  # the web client: /, /app/..., /sw.js, /manifest.webmanifest
    app.register_blueprint(client_api.bp)  # /api/me, /api/auth/signout, /api/client-config, /api/repos
    app.register_blueprint(share_routes.bp)  # /api/tasks/{id}/shares, /api/shared/... (share links)
    app.register_blueprint(push_routes.bp)  # /api/push/key, /api/push/subscriptions (Web Push)
    app.register_blueprint(notify_routes.bp)  # /api/webhooks, /api/notify/ntfy, /api/deliveries

    if settings.metrics_http is None:  # else only there (``daemon/metrics_http.py``)

        @app.get("/metrics")
        async def metrics() -> ResponseReturnValue:
            """Prometheus metrics.

            The text exposition format, or OpenMetrics when the Accept header asks for it.
            Not served here when the daemon serves metrics on an address of their own.
            """
            body, content_type = render(daemon_metrics.registry, request.headers.get("Accept"))
            return Response(body, content_type=content_type)

    daemon_metrics.ws_connected.set_function(lambda: len(state.sessions))
    Gauge(
        "agentd_ws_task_channels",
        "Tasks with at least one WebSocket subscriber",
        registry=daemon_metrics.registry,
    ).set_function(lambda: len(state.fanout.channels))

    @app.before_serving
    async def start_background() -> None:
        app.nursery.start_soon(state.fanout.run)
        app.nursery.start_soon(sweep, state)
        app.nursery.start_soon(_close_websockets_on_drain, runtime, state)

    return app


async def _close_websockets_on_drain(runtime: Runtime, state: WebState) -> None:
    """At the first stop request, close every WebSocket with 1001 (going away)."""
    await runtime.stop_requested.wait()
    state.close_all(CLOSE_GOING_AWAY, "server draining")
