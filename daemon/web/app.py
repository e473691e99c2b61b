"""The HTTP application (Quart-Trio): health, readiness, metrics and the phone API.

``/ws`` is not a Quart route: ``listener.py`` hands its upgrades to ``ws.py`` on the socket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hypercorn.config import Config as HypercornConfig
from prometheus_client import Gauge
from quart import Response, jsonify, request
from quart_schema import QuartSchema
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIWebsocketConnection

from ..config import Settings
from ..metrics import render
from ..secrets import SecretBox, load_secret_box
from .admin import admin_blueprint
from .auth import Authenticator, RateLimiter
from .errors import register_error_handlers
from .fanout import Fanout
from .github_oauth import OAuthFlows, oauth_blueprint
from .routes import tasks_blueprint
from .session import CLOSE_GOING_AWAY, Session
from .ws import frame_text, sweep

if TYPE_CHECKING:
    from ..service import Daemon


@dataclass(eq=False)
class WebState:
    """What the routes share: the daemon's parts plus auth, limits and live fan-out."""

    settings: Settings
    store: Any
    supervisor: Any
    fanout: Fanout
    auth: Authenticator
    secrets: SecretBox
    oauth: OAuthFlows
    create_limiter: RateLimiter
    subscribe_limiter: RateLimiter
    sessions: dict[Session, Any] = field(default_factory=dict)  # each with its ws.Connection
    connections: Any = None  # the listener's http_limits.ConnectionCaps: open connections
    going_away: bool = False

    def close_all(self, code: int, reason: str) -> None:
        self.going_away = True
        for session in list(self.sessions):
            session.close(code, reason)


class _WebsocketConnection(TrioASGIWebsocketConnection):
    """Quart's connection minus the per-message ``websocket_sent`` signal (unused here).

    The signal costs an async dispatch per message sent on ``/admin/ws``.
    """

    async def send_data(self, send: Any, data: str | bytes) -> None:
        if isinstance(data, str):
            await send({"type": "websocket.send", "bytes": None, "text": data})
        else:
            await send({"type": "websocket.send", "bytes": data, "text": None})


def hypercorn_config(settings: Settings) -> HypercornConfig:
    """Hypercorn's settings: bind, and pings and a dead-peer timeout for ``/admin/ws``."""
    config = HypercornConfig()
    host, port = settings.http_host_port
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.graceful_timeout = 5.0
    config.websocket_ping_interval = settings.ws_ping_interval_s
    # A live peer answers each ping with a pong, so silence this long means it is gone.
    config.read_timeout = int(settings.ws_ping_interval_s + settings.ws_ping_timeout_s + 0.999)
    config.websocket_max_message_size = 64 * 1024
    config.errorlog = logging.getLogger("hypercorn.error")  # through our log setup and redaction
    return config


def create_app(daemon: "Daemon") -> QuartTrio:
    """The app for a serving daemon (``daemon.store``, ``.hub`` and ``.supervisor`` are set)."""
    settings = daemon.settings
    app = QuartTrio("agentd")
    app.asgi_websocket_class = _WebsocketConnection
    app.config["MAX_CONTENT_LENGTH"] = settings.http_max_body_bytes
    QuartSchema(
        app, openapi_path="/openapi.json", redoc_ui_path=None, scalar_ui_path=None,
        swagger_ui_path=None, info={"title": "agentd", "version": "1"},
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        security=[{"bearer": []}],
    )
    register_error_handlers(app)

    @app.get("/healthz")
    async def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    async def readyz():
        ready = daemon.ready
        body = {"status": "ready" if ready else daemon.phase, "admitting": ready}
        return jsonify(body), 200 if ready else 503

    if daemon.store is None or daemon.hub is None:
        return app  # not serving (a bare app for tests of the health routes)

    state = WebState(
        settings=settings, store=daemon.store, supervisor=daemon.supervisor,
        fanout=Fanout(daemon.hub, daemon.store, delta_interval_s=settings.ws_delta_interval_s,
                      frame=frame_text),
        auth=Authenticator(daemon.store), secrets=load_secret_box(settings),
        oauth=OAuthFlows(login_ttl_s=settings.oauth_login_ttl_s),
        create_limiter=RateLimiter(settings.rate_task_creates_per_min, settings.rate_task_creates_burst),
        subscribe_limiter=RateLimiter(settings.rate_subscribes_per_min, settings.rate_subscribes_burst),
    )
    app.extensions["agentd"] = state
    app.register_blueprint(tasks_blueprint(state))
    app.register_blueprint(oauth_blueprint(state))
    app.register_blueprint(admin_blueprint(state, daemon.stop_requested))  # /admin, operators only

    @app.get("/metrics")
    async def metrics():
        body, content_type = render(daemon.metrics.registry, request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    daemon.metrics.ws_connected.set_function(lambda: len(state.sessions))
    Gauge("agentd_ws_task_channels", "Tasks with at least one WebSocket subscriber",
          registry=daemon.metrics.registry).set_function(lambda: len(state.fanout.channels))

    @app.before_serving
    async def start_background() -> None:
        app.nursery.start_soon(state.fanout.run)
        app.nursery.start_soon(sweep, state)
        app.nursery.start_soon(_close_websockets_on_drain, daemon, state)

    return app


async def _close_websockets_on_drain(daemon: "Daemon", state: WebState) -> None:
    """At the first stop request, close every WebSocket with 1001 (going away)."""
    await daemon.stop_requested.wait()
    state.close_all(CLOSE_GOING_AWAY, "server draining")
