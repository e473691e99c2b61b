"""The lifecycle shared by the fakes that run ``http.server`` in a thread on 127.0.0.1.

A fake subclasses ``ThreadedHTTPFake`` and names its request handler class; each handler sees
the fake as ``self.owner``. Threads suit these fakes: their clients are git subprocesses and
blocking HTTP, and ``serve`` still lets a Trio test start and stop them in a nursery.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import trio


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps test output quiet and sends GET and POST to ``_handle``."""

    def log_message(self, format, *args):
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        raise NotImplementedError


class ThreadedHTTPFake:
    handler_class: type[BaseHTTPRequestHandler]
    _httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        handler = type("Handler", (self.handler_class,), {"owner": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started(url)`` once listening.

        Cancellation: the server thread is shut down before this returns.
        """
        url = self.start()
        try:
            task_status.started(url)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.stop)
