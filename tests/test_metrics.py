"""/metrics: what a daemon counts, read back through prometheus_client's own parser."""

from __future__ import annotations

import logging

import httpx2
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from daemon import __version__
from daemon.config import load_settings
from daemon.errors import TransientError
from daemon.metrics import Metrics, render
from daemon.metrics_http import MAX_CONNECTIONS, REQUEST_TIMEOUT_S, serve_metrics
from daemon.service import Daemon, _say_where_metrics_are
from daemon.states import TaskStatus
from daemon.store import Event
from daemon.supervisor import RunContext, RunResult
from daemon.supervisor.runner import NoopRunner

from .daemon_process import short_socket_dir
from .helpers import running_supervisor, submit, wait_status

USAGE = {
    "input_tokens": 100,
    "output_tokens": 20,
    "cache_read_tokens": 1000,
    "cache_write_tokens": 0,
    "cost_usd": 0.25,
    "model": "claude-test",
}


def scrape(metrics: Metrics) -> tuple[dict[str, str], dict[tuple, float]]:
    """Family name -> type, and (sample name, labels) -> value, as a Prometheus server reads them."""
    body, content_type = render(metrics.registry)
    assert content_type.startswith("text/plain; version=0.0.4")
    types: dict[str, str] = {}
    samples: dict[tuple, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


class Working:
    """Takes 7 s and spends tokens; the first attempt of every task fails transiently."""

    async def run(self, ctx: RunContext) -> RunResult:
        await trio.sleep(7)
        await ctx.emit("agent.usage", USAGE)
        if ctx.task.attempt == 1:
            raise TransientError("overloaded")
        return RunResult()


async def test_tasks_attempts_retries_tokens_and_cost_are_counted(store, hub, alice, autojump_clock):
    metrics = Metrics()
    async with running_supervisor(store, hub, Working(), concurrency=2) as supervisor:
        metrics.attach(store, hub, supervisor)
        tasks = [await submit(supervisor, alice) for _ in range(3)]
        for task in tasks:
            await wait_status(hub, task.id, TaskStatus.SUCCEEDED)
        # The last attempt lets go of its slot just after its final event is published.
        await supervisor.wait_idle()
        await metrics.refresh()
        types, samples = scrape(metrics)

    assert types["agentd_tasks"] == "gauge"
    assert samples[("agentd_tasks", (("status", "succeeded"),))] == 3
    assert samples[("agentd_tasks", (("status", "queued"),))] == 0  # every status, zeros too
    assert types["agentd_task_attempt_seconds"] == "histogram"
    for outcome in ("waiting_retry", "succeeded"):  # each task: one failed attempt, one good one
        labels = (("outcome", outcome),)
        assert samples[("agentd_task_attempt_seconds_count", labels)] == 3
        assert samples[("agentd_task_attempt_seconds_sum", labels)] == pytest.approx(21)
        assert samples[("agentd_task_attempt_seconds_bucket", (("le", "5.0"), *labels))] == 0
        assert samples[("agentd_task_attempt_seconds_bucket", (("le", "15.0"), *labels))] == 3
    assert types["agentd_task_retries"] == "counter"
    assert samples[("agentd_task_retries_total", ())] == 3
    tokens = {
        labels[0][1]: value
        for (name, labels), value in samples.items()
        if name == "agentd_model_tokens_total" and labels[1] == ("model", "claude-test")
    }
    assert tokens == {"input": 600, "output": 120, "cache_read": 6000}
    assert samples[("agentd_model_cost_usd_total", (("model", "claude-test"),))] == pytest.approx(1.5)
    assert samples[("agentd_store_write_seconds_count", ())] > 0
    assert samples[("agentd_supervisor_concurrency", ())] == 2
    assert samples[("agentd_supervisor_running", ())] == 0
    assert samples[("agentd_admitting", ())] == 1
    assert samples[("agentd_build_info", (("version", __version__),))] == 1
    assert ("process_open_fds", ()) in samples


async def test_websocket_connections_are_a_gauge_the_web_server_moves():
    metrics = Metrics()
    metrics.ws_connected.inc()
    metrics.ws_connected.inc()
    metrics.ws_connected.dec()
    with metrics.ws_connected.track_inprogress():
        assert scrape(metrics)[1][("agentd_ws_connections", ())] == 2
    assert scrape(metrics)[1][("agentd_ws_connections", ())] == 1


async def test_each_daemon_counts_in_its_own_registry(store, hub):
    first, second = Metrics(), Metrics()
    first.attach(store, hub)
    first.retries.inc(5)
    assert scrape(first)[1][("agentd_task_retries_total", ())] == 5
    assert scrape(second)[1][("agentd_task_retries_total", ())] == 0


async def test_every_store_write_is_timed(store, hub):
    metrics = Metrics()
    metrics.attach(store, hub)
    await store.upsert_user("carol")
    await store.upsert_user("dave")
    assert scrape(metrics)[1][("agentd_store_write_seconds_count", ())] == 2


async def test_task_counts_come_from_a_snapshot_refreshed_in_the_background(
    store, hub, alice, autojump_clock
):
    metrics = Metrics()
    metrics.attach(store, hub)
    queued = ("agentd_tasks", (("status", "queued"),))
    async with trio.open_nursery() as nursery:
        await nursery.start(metrics.run, 5.0)
        assert trio.current_time() == 0
        await store.create_task(user_id=alice.id, repo_url="file:///repo", prompt="one")
        assert scrape(metrics)[1][queued] == 0  # a scrape never reads SQLite itself
        await trio.sleep(5.5)
        assert scrape(metrics)[1][queued] == 1
        nursery.cancel_scope.cancel()


async def test_event_loop_lag_is_how_late_a_sleep_wakes(store, hub, autojump_clock):
    metrics = Metrics()
    metrics.attach(store, hub)
    async with trio.open_nursery() as nursery:
        await nursery.start(metrics.run, 60.0)
        await trio.sleep(0.1)
        autojump_clock.jump(2.0)  # as if the loop had been blocked for 2 s
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    samples = scrape(metrics)[1]
    assert samples[("agentd_event_loop_lag_seconds_sum", ())] == pytest.approx(1.6)
    assert (
        samples[("agentd_event_loop_lag_seconds_bucket", (("le", "1.0"),))]
        == samples[("agentd_event_loop_lag_seconds_count", ())] - 1
    )


async def test_a_malformed_event_is_logged_not_raised(store, hub, caplog):
    metrics = Metrics()
    metrics.on_events([Event("t1", 1, 0.0, "agent.usage", {"input_tokens": "many"})])
    assert "could not count events" in caplog.text


def daemon_settings(tmp_path, **flags):
    """Settings of a daemon on loopback with its data under ``tmp_path``, plus ``flags``."""
    base = {
        "data_dir": tmp_path / "data",
        "http": "127.0.0.1:0",
        "control_socket": short_socket_dir() / "agentd.sock",
    }
    return load_settings(env={}, flags={**base, **flags})


async def test_the_daemon_wires_its_metrics(tmp_path):
    settings = daemon_settings(tmp_path, concurrency=3)
    daemon = Daemon(settings, runner=NoopRunner())
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        types, samples = scrape(daemon.metrics)
        daemon.request_stop()
    assert samples[("agentd_supervisor_concurrency", ())] == 3
    assert samples[("agentd_admitting", ())] == 1
    assert samples[("agentd_tasks", (("status", "running"),))] == 0
    assert types["agentd_event_loop_lag_seconds"] == "histogram"


async def test_metrics_http_serves_metrics_there_and_the_http_port_no_longer_does(tmp_path):
    settings = daemon_settings(tmp_path, pin_loop_cpu=False)
    settings = settings.model_copy(update={"metrics_http": "127.0.0.1:0"})
    daemon = Daemon(settings, runner=NoopRunner())
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        (url,) = daemon.metrics_urls
        base = url.removesuffix("/metrics")
        async with httpx2.AsyncClient(timeout=10) as http:
            scraped = await http.get(url)
            openmetrics = await http.get(url, headers={"Accept": "application/openmetrics-text"})
            elsewhere = await http.get(f"{base}/healthz")
            posted = await http.post(url, content=b"x")
            public = await http.get(f"{daemon.http_urls[0]}/metrics")
        garbage = await raw_exchange(base, b"NOT HTTP AT ALL\r\n\r\n")
        daemon.request_stop()
    assert scraped.status_code == 200 and scraped.headers["connection"] == "close"
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
    assert families["agentd_supervisor_concurrency"].samples[0].value == settings.concurrency
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert elsewhere.status_code == 404 and posted.status_code == 405 and posted.headers["allow"] == "GET"
    assert public.status_code == 404  # the HTTP port's /metrics is gone
    assert garbage.startswith(b"HTTP/1.1 400 ")


async def test_the_metrics_port_serves_a_few_scrapes_at_once_and_drops_silent_ones(autojump_clock):
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(serve_metrics, "127.0.0.1:0", Metrics())
        host, port = url.removeprefix("http://").removesuffix("/metrics").rsplit(":", 1)
        silent = [await trio.open_tcp_stream(host, int(port)) for _ in range(MAX_CONNECTIONS)]
        began = trio.current_time()
        answer = await raw_exchange(url.removesuffix("/metrics"), b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        # It waited, unaccepted, until the silent ones were dropped after REQUEST_TIMEOUT_S.
        assert trio.current_time() - began == REQUEST_TIMEOUT_S
        assert answer.startswith(b"HTTP/1.1 200 ") and b"agentd_build_info" in answer
        for stream in silent:
            assert await stream.receive_some(100) == b""  # closed, with nothing said
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def raw_exchange(base: str, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection to ``base``; everything read until the close."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        received = b""
        with trio.fail_after(60):
            while chunk := await stream.receive_some(4096):
                received += chunk
    return received


def test_the_http_port_on_a_public_address_warns_that_it_serves_metrics(caplog):
    caplog.set_level(logging.INFO, logger="daemon.service")
    for address, warned in (("0.0.0.0:8080", True), ("[::]:8080", True), ("127.0.0.1:8080", False)):
        caplog.clear()
        _say_where_metrics_are(load_settings(env={}, flags={"http": address}), [])
        assert ("set metrics_http" in caplog.text) is warned, address
    caplog.clear()
    _say_where_metrics_are(
        load_settings(env={}, flags={"http": "0.0.0.0:8080"}), ["http://127.0.0.1:9464/metrics"]
    )
    assert "metrics on http://127.0.0.1:9464/metrics" in caplog.text and "set metrics_http" not in caplog.text
