"""The README rows for WebSocket delivery, idle connections and 500 concurrent agent tasks.

``run_all.py`` calls ``ws_suite(size, ...)`` like its other suites; it passes its own ``Row``,
``run_step`` and ``py`` so that this module needs nothing from it at import time. The steps are
``ws_delivery.py`` (agentd and the ``websockets`` peer side by side, in one process each) and
``agent_load.py``. ``--quick`` shortens the runs but keeps the issue's sizes, except for the
idle connections (3,000 instead of 15,000) and the agent tasks (200 instead of 500).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

FULL = {"seconds": 15, "conns": 15_000, "agent_tasks": 500}
QUICK = {"seconds": 8, "conns": 3_000, "agent_tasks": 200}


def _is_quick(size: dict[str, Any]) -> bool:
    return size.get("ws_quick", size.get("rounds", 3) == 1)


def _latency_row(
    Row: Any, title: str, target_ms: float, result: dict[str, Any] | None, peer_name: str = "`websockets`"
) -> Any:
    agentd, peer = (result or {}).get("agentd"), (result or {}).get("websockets")

    def cell(r: dict[str, Any] | None, who: str = "") -> str:
        if not r:
            return f"failed{who}"
        lat, due = r["latency"], r["latency_from_due"]
        share = r["delivered"] / r["expected"] * 100 if r["expected"] else 0
        extra = f"; {share:.0f}% delivered" if share < 99 else ""
        if r.get("server_to_sockets"):  # agentd: the server's own share, stamp to the sockets
            extra += f"; in the server p99 {r['server_to_sockets']['p99_ms']:.0f} ms"
        return (
            f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms (from due: p99 {due['p99_ms']:.0f} ms{extra}){who}"
        )

    met = None
    if agentd:
        # Met only if the server kept up: p99 counted from when each event was due, all delivered.
        met = (
            agentd["latency_from_due"]["p99_ms"] < target_ms
            and agentd["delivered"] >= 0.99 * agentd["expected"]
        )
    ratio = None
    if agentd and peer and agentd["latency_from_due"]["p99_ms"]:
        ratio = peer["latency_from_due"]["p99_ms"] / agentd["latency_from_due"]["p99_ms"]
    return Row(title, cell(agentd), cell(peer, f" ({peer_name})"), ratio, f"p99 < {target_ms:g} ms", met)


def _reference(row: Any) -> Any:
    """The row as a reference: what the pinning alone costs the clients on this machine (the
    peer pinned as agentd's loop is), no target of its own."""
    row.target, row.met = "—", None
    return row


NOISE_US = 1.0


def _cpu_row(Row: Any, title: str, result: dict[str, Any] | None) -> Any:
    agentd, peer = (result or {}).get("agentd"), (result or {}).get("websockets")

    def cell(r: dict[str, Any] | None, who: str = "") -> str:
        if not r or not r.get("delivered"):
            return f"failed{who}"
        net = r["net_cpu_per_msg_us"]
        # The net figure is a difference of two runs' CPU; under 1 µs it is their noise.
        shown = f"{net:.1f} µs net" if net >= NOISE_US else f"under {NOISE_US:.0f} µs net (within the noise)"
        return (
            f"{shown} ({r['cpu_per_msg_us']:.0f} µs with the "
            f"{'appends' if not who else 'emitter'}; server {r['server_cores']:.2f} cores){who}"
        )

    ok = bool(
        agentd
        and peer
        and agentd.get("delivered")
        and peer.get("delivered")
        and peer["net_cpu_per_msg_us"] > 0
    )
    ratio = (
        peer["net_cpu_per_msg_us"] / agentd["net_cpu_per_msg_us"]
        if ok and agentd["net_cpu_per_msg_us"] >= NOISE_US
        else None
    )
    met = agentd["net_cpu_per_msg_us"] <= 2 * peer["net_cpu_per_msg_us"] if ok else None
    return Row(title, cell(agentd), cell(peer, " (`websockets`)"), ratio, "≤ 2× peer", met)


def ws_suite(
    size: dict[str, Any],
    *,
    Row: Any,
    run_step: Callable[..., dict[str, Any] | None],
    py: Callable[..., list[str]],
) -> list[Any]:
    s = QUICK if _is_quick(size) else FULL
    delivery = run_step(
        "websocket delivery (a), (b), idle",
        py(
            "ws_delivery.py",
            "--scenario",
            "a,b,idle",
            "--seconds",
            s["seconds"],
            "--conns",
            s["conns"],
            "--pinned-peer",
        ),
    )
    a = (delivery or {}).get("a")
    b = (delivery or {}).get("b")
    rows = [
        _latency_row(
            Row, "WebSocket (a) 2,000 clients, 1,000 tasks × 10 ev/s: event-to-receipt p50 / p99", 50, a
        ),
        _reference(
            _latency_row(
                Row,
                "WebSocket (a), the peer on one CPU as agentd's loop and writer are (reference)",
                50,
                {"agentd": (a or {}).get("agentd"), "websockets": (a or {}).get("websockets-pinned")},
                "`websockets` pinned",
            )
        ),
        _latency_row(
            Row, "WebSocket (b) 1 task → 1,000 clients at 10 ev/s: event-to-receipt p50 / p99", 100, b
        ),
        _cpu_row(Row, "WebSocket server CPU per delivered message, (a)", a),
        _cpu_row(Row, "WebSocket server CPU per delivered message, (b)", b),
    ]
    idle = (delivery or {}).get("idle") or {}
    mine, theirs = idle.get("agentd"), idle.get("websockets")
    rows.append(
        Row(
            f"Idle WebSocket connections ({s['conns']:,}): server RSS per connection",
            f"{mine['per_conn_kib']:.1f} KiB ({mine['connects_per_s']} handshakes/s)" if mine else "failed",
            f"{theirs['per_conn_kib']:.1f} KiB ({theirs['connects_per_s']} handshakes/s, `websockets`)"
            if theirs
            else "failed (`websockets`)",
            theirs["per_conn_kib"] / mine["per_conn_kib"] if mine and theirs else None,
            "≤ 2× peer",
            mine["per_conn_kib"] <= 2 * theirs["per_conn_kib"] if mine and theirs else None,
        )
    )

    n = s["agent_tasks"]
    load = run_step(f"{n} concurrent agent tasks", py("agent_load.py", "--tasks", n))
    title = f"{n} concurrent agent tasks, fake model 1 s per turn"
    if load:
        lag, whole, ready = load["lag_conversation"], load["lag_overall"], load["all_workspaces_ready_s"]
        rows.append(
            Row(
                f"{title}, {load['turns']} turns, all waiting on the model: loop lag p50 / p99, RSS",
                f"{_ms(lag['p50_ms'])} / {_ms(lag['p99_ms'])} ms; RSS peak {load['rss_peak_mib']:.0f} MiB "
                f"(+{load['rss_per_task_kib']:.0f} KiB per task); {load['wall_s']:.0f} s for "
                f"{load['model_turns']:,} turns (ideal {load['turns']} s); "
                f"{load['daemon_cpu_ms_per_turn']:.1f} ms daemon CPU and "
                f"{load['store_writes_per_turn']:.1f} store writes per turn",
                target="lag p99 < 10 ms",
                met=_under_10_ms(lag["p99_ms"]),
            )
        )
        rows.append(
            Row(
                f"{title}, whole run (the {n} workspaces cloned at once, then the turns): loop lag p50 / p99",
                f"{_ms(whole['p50_ms'])} / {_ms(whole['p99_ms'])} ms; "
                + (
                    f"every workspace ready after {ready:.1f} s"
                    if ready is not None
                    else "not every workspace got ready"
                ),
                target="lag p99 < 10 ms",
                met=_under_10_ms(whole["p99_ms"]),
            )
        )
    else:
        rows.append(Row(f"{title}: loop lag p99, RSS", "failed", target="lag p99 < 10 ms"))
    return rows


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _under_10_ms(p99_ms: float | None) -> bool:
    """Met only with samples: a phase with none (it never began) proves nothing."""
    return p99_ms is not None and p99_ms < 10
