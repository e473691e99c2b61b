"""prometheus_client's choice of exposition format for a scraper's ``Accept`` header.

Touches ``prometheus_client.exposition.choose_encoder`` of prometheus-client 0.26.0 (pinned in
``pyproject.toml``): ``choose_encoder(accept_header) -> (encoder, content_type)`` with
``encoder(registry) -> bytes``. It is what the library's own exporters (``make_asgi_app``,
``make_wsgi_app``, ``MetricsHandler``) negotiate with, but it is not in the module's
``__all__`` and was renamed once (``choose_formatter`` before 0.14). Why no public API: the
public exporters are whole apps or servers, while ``/metrics`` is one route of the daemon's own
app; choosing between the public ``generate_latest`` functions here would mean parsing
``Accept`` (versions, escaping schemes) as the library does. ``tests/test_thirdparty_contracts.py``
checks it: the gate for upgrading prometheus-client.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

__all__ = ["encoder_for"]


def encoder_for(accept: str) -> tuple[Callable[[Collector], bytes], str]:
    """``(encoder, content_type)`` for a scrape asking for ``accept`` (``""``: none given):
    OpenMetrics when the scraper asks for it, else the Prometheus text format."""
    return choose_encoder(accept)
