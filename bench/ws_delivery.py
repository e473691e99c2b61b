"""WebSocket delivery and idle connections: agentd against a minimal ``websockets`` server.

    .venv/bin/python bench/ws_delivery.py [--scenario a,b,idle] [--systems agentd,websockets]
        [--seconds 15] [--tasks N --clients N (a smaller fan-out run)] [--json]

Scenarios (issue 8):
- ``a``, the phone's real pattern: 2,000 clients, 1,000 running tasks each emitting 10 events/s,
  task i followed by 2 clients when i is even, 1 when odd (1,500 followers); the other 500
  clients are connected on the task list (``subscribe_tasks``), receiving nothing meanwhile.
- ``b``: one task followed by 1,000 clients, 10 events/s.
- ``idle``: 15,000 authenticated idle connections (ping/pong once, no subscription); server
  RSS per connection = (RSS with them - RSS before) / connections.

Method. The server under test (``ws_agentd_server.py`` in this venv, ``ws_peer_server.py`` in
``bench/.venv-peers``) and the clients (``ws_clients.py``, several processes, in the peers' venv)
are separate processes on 127.0.0.1. Events are emitted inside the server process (agentd:
``RunContext.emit`` -> ``store.append_events``), each stamped with CLOCK_MONOTONIC just before;
clients compute ``receipt - stamp``. Server CPU is utime+stime from ``/proc/<pid>/stat`` over the
measured window (after a warm-up) divided by the messages the clients received in it (whenever
sent: a server that fell behind is still sending older events); "net" subtracts the
same server's CPU per emitted event with no client connected (agentd: the appends and the
runner loops; the peer: its emitter loops), times the events emitted in the window: what is
left is the delivery cost proper. The machine has
few cores: client CPU is reported too, since it competes with the server. For agentd,
``server_to_sockets`` is the server's own share of the latency: from the stamp to the committed
event reaching the hub, whose listeners run just before the fan-out writes it to the sockets.
``--systems websockets-pinned`` runs the peer on the one CPU agentd pins its loop to: what the
pinning alone does to the clients' latency on a machine this small.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, emit, machine
from ws_common import (
    Child,
    Histogram,
    busy_seconds,
    cpu_seconds,
    now,
    raise_fd_limit,
    rss_kib,
    sleep_until,
)

BENCH = ROOT / "bench"
PEERS_PY = BENCH / ".venv-peers" / "bin" / "python"
SERVERS = {
    "agentd": [sys.executable, str(BENCH / "ws_agentd_server.py")],
    "websockets": [str(PEERS_PY), str(BENCH / "ws_peer_server.py")],
    # The peer on one CPU, the one agentd's loop and writer are pinned to (daemon/cpu_pin.py):
    # what that pinning alone does to latency while the clients share the machine.
    "websockets-pinned": [
        "taskset",
        "-c",
        str(max(os.sched_getaffinity(0))),
        str(PEERS_PY),
        str(BENCH / "ws_peer_server.py"),
    ],
}


def start_server(system: str, tmp: Path, tasks: int, users: int) -> tuple[Child, dict[str, Any]]:
    server = Child(
        [*SERVERS[system], "--tasks", str(tasks), "--users", str(users)],
        stderr_path=tmp / f"{system}-server.err",
        cwd=ROOT,
    )
    try:
        info = server.expect(timeout=180)
    except Exception:
        server.stop(2)
        raise
    return server, info


def start_clients(
    url: str, conns: list[dict[str, Any]], procs: int, tmp: Path, label: str, connect_concurrency: int = 100
) -> list[Child]:
    """Split ``conns`` round-robin over ``procs`` client processes; wait until all are ready."""
    clients = []
    for p in range(procs):
        part = conns[p::procs]
        if not part:
            continue
        spec = tmp / f"{label}-clients-{p}.json"
        spec.write_text(json.dumps({"url": url, "conns": part, "connect_concurrency": connect_concurrency}))
        clients.append(
            Child(
                [str(PEERS_PY), str(BENCH / "ws_clients.py"), str(spec)],
                stderr_path=tmp / f"{label}-clients-{p}.err",
                cwd=ROOT,
            )
        )
    try:
        for client in clients:
            client.expect(timeout=300)
    except Exception:
        for client in clients:
            client.stop(2)
        raise
    return clients


def profile(pid: int, seconds: float, out_dir: Path | None, label: str) -> subprocess.Popen | None:
    """py-spy (from the peers' venv) on the server over the window: raw collapsed stacks."""
    if out_dir is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            str(PEERS_PY.parent / "py-spy"),
            "record",
            "--rate",
            "200",
            "-f",
            "raw",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "-o",
            str(out_dir / f"{label}.txt"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def follower_plan(scenario: str, info: dict[str, Any], params: dict[str, Any]) -> tuple[list[dict], int]:
    """The connections of a fan-out scenario, and the number of following subscriptions."""
    tokens, tasks = info["tokens"], info["tasks"]
    conns: list[dict[str, Any]] = []
    if scenario == "a":
        for i, (task_id, user, after) in enumerate(tasks[: params["tasks"]]):
            for _ in range(2 if i % 2 == 0 else 1):
                conns.append({"token": tokens[user], "subs": [[task_id, after]]})
        followers = len(conns)
        for j in range(max(0, params["clients"] - followers)):
            conns.append({"token": tokens[j % len(tokens)], "subs": [], "watch": True})
    else:
        task_id, user, after = tasks[0]
        conns = [{"token": tokens[user], "subs": [[task_id, after]]} for _ in range(params["clients"])]
        followers = len(conns)
    return conns, followers


def run_fanout(system: str, scenario: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    seconds, warmup, rate = params["seconds"], params["warmup"], params["rate"]
    server, info = start_server(system, tmp, params["tasks"], params["users"])
    label = f"{system}-{scenario}"
    try:
        conns, followers = follower_plan(scenario, info, params)
        began = now()
        clients = start_clients(info["url"], conns, params["client_procs"], tmp, label)
        connect_s = now() - began
        try:
            t0 = now() + 1.0
            w0, w1 = t0 + warmup, t0 + seconds
            server.send(
                {
                    "cmd": "emit",
                    "start": t0,
                    "seconds": seconds,
                    "tasks": params["tasks"],
                    "rate": rate,
                    "w0": w0,
                    "w1": w1,
                }
            )
            for client in clients:
                client.send({"w0": w0, "w1": w1, "until": w1 + params["drain"]})
            sleep_until(w0)
            spy = profile(server.pid, w1 - w0, params.get("profile"), label)
            cpu0 = cpu_seconds(server.pid)
            ccpu0 = sum(cpu_seconds(c.pid) for c in clients)
            busy0 = busy_seconds()
            sleep_until(w1)
            cpu1 = cpu_seconds(server.pid)
            ccpu1 = sum(cpu_seconds(c.pid) for c in clients)
            busy1 = busy_seconds()
            rss = rss_kib(server.pid)
            if spy is not None:
                spy.wait(timeout=seconds + 60)
            emitted = server.expect(timeout=seconds + 60)
            results = [client.expect(timeout=params["drain"] + 60) for client in clients]
        finally:
            for client in clients:
                client.stop(5)
        time.sleep(1.0)  # the server notices the clients left
        # The same emission with nobody connected: what appending and emitting alone costs.
        b_seconds = params["baseline_seconds"]
        t0 = now() + 0.5
        server.send(
            {
                "cmd": "emit",
                "start": t0,
                "seconds": b_seconds,
                "tasks": params["tasks"],
                "rate": rate,
                "w0": t0 + warmup,
                "w1": t0 + b_seconds,
            }
        )
        sleep_until(t0 + warmup)
        bcpu0 = cpu_seconds(server.pid)
        sleep_until(t0 + b_seconds)
        bcpu1 = cpu_seconds(server.pid)
        base = server.expect(timeout=b_seconds + 60)
    finally:
        server.stop(15)
    window = w1 - w0
    hist, hist_due = Histogram(), Histogram()
    for r in results:
        hist.merge(Histogram.from_json(r["hist"]))
        hist_due.merge(Histogram.from_json(r["hist_due"]))
    delivered = sum(r["in_window"] for r in results)  # events sent in the window, all received
    sent = sum(r["received_in_window"] for r in results)  # received in the window: CPU's share
    cpu = cpu1 - cpu0
    # The appending/emitting cost per event, alone, times the events emitted in our window (a
    # saturated server emits fewer than scheduled: scaling by time would over-subtract).
    baseline = (bcpu1 - bcpu0) / max(1, base["in_window"]) * emitted["in_window"]
    expected = round(followers * rate * window)
    return {
        "latency": hist.summary(),
        # From when each event was due: adds how late the server's emitting loop ran.
        "latency_from_due": hist_due.summary(),
        "delivered": delivered,
        "expected": expected,
        "window_s": round(window, 2),
        "connect_s": round(connect_s, 2),
        "server_cpu_s": round(cpu, 2),
        "server_cores": round(cpu / window, 2),
        "baseline_cpu_s": round(baseline, 2),
        "received_in_window": sent,
        "cpu_per_msg_us": round(cpu / sent * 1e6, 2) if sent else None,
        "net_cpu_per_msg_us": round((cpu - baseline) / sent * 1e6, 2) if sent else None,
        "client_cores": round((ccpu1 - ccpu0) / window, 2),
        "client_procs": len(results),
        # Everything else busy on the machine meanwhile (a shared VM: other people's work).
        "other_cores": round(max(0.0, (busy1 - busy0) - cpu - (ccpu1 - ccpu0)) / window, 2),
        "server_rss_mib": round(rss / 1024, 1),
        "resyncs": sum(r["resyncs"] for r in results),
        "errors": {k: v for r in results for k, v in r["errors"].items()},
        "closed": sum(r["closed"] for r in results),
        "emitted": emitted["emitted"],
        "emitted_in_window": emitted["in_window"],
        "scheduled_in_window": round(params["tasks"] * rate * window),
        "emit_late": emitted["late"],
        "server_loop_lag": emitted["lag"],
        **({"server_to_sockets": emitted["to_sockets"]} if "to_sockets" in emitted else {}),
    }


def run_idle(system: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    server, info = start_server(system, tmp, 0, params["users"])
    try:
        time.sleep(1.0)
        rss0 = rss_kib(server.pid)
        n = params["conns"]
        conns = [{"token": info["tokens"][i % len(info["tokens"])], "subs": []} for i in range(n)]
        began = now()
        clients = start_clients(
            info["url"],
            conns,
            params["client_procs"],
            tmp,
            f"{system}-idle",
            connect_concurrency=params["connect_concurrency"],
        )
        connect_s = now() - began
        try:
            time.sleep(2.0)
            rss1 = rss_kib(server.pid)
            cpu0, busy0, t0 = cpu_seconds(server.pid), busy_seconds(), now()
            time.sleep(params["hold_s"])
            idle_cpu = (cpu_seconds(server.pid) - cpu0) / (now() - t0)
            other = (busy_seconds() - busy0) / (now() - t0) - idle_cpu
            rss2 = rss_kib(server.pid)
            for client in clients:
                client.send({"until": now()})
            for client in clients:
                client.expect(timeout=60)
        finally:
            for client in clients:
                client.stop(5)
    finally:
        server.stop(30)
    held = max(rss1, rss2)
    return {
        "conns": n,
        "rss_before_mib": round(rss0 / 1024, 1),
        "rss_held_mib": round(held / 1024, 1),
        "per_conn_kib": round((held - rss0) / n, 1),
        "connect_s": round(connect_s, 1),
        "connects_per_s": round(n / connect_s),
        "idle_server_cores": round(idle_cpu, 3),
        "other_cores": round(max(0.0, other), 2),
    }


SIZES = {
    "full": {
        "a": {"tasks": 1000, "clients": 2000, "users": 100, "rate": 10, "client_procs": 2},
        "b": {"tasks": 1, "clients": 1000, "users": 1, "rate": 10, "client_procs": 2},
        "idle": {"conns": 15_000, "users": 100, "client_procs": 3, "connect_concurrency": 20, "hold_s": 5},
    },
    "smoke": {
        "a": {"tasks": 4, "clients": 8, "users": 2, "rate": 10, "client_procs": 1},
        "b": {"tasks": 1, "clients": 4, "users": 1, "rate": 10, "client_procs": 1},
        "idle": {"conns": 20, "users": 2, "client_procs": 2, "connect_concurrency": 10, "hold_s": 0.5},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="a,b,idle")
    parser.add_argument("--systems", default="agentd,websockets")
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--seconds", type=float, default=15.0, help="emission per fan-out run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--baseline-seconds", type=float, default=8.0)
    parser.add_argument("--conns", type=int, help="idle connections (default: the size's)")
    parser.add_argument("--tasks", type=int, help="fan-out scenarios: emitting tasks (default: the size's)")
    parser.add_argument("--clients", type=int, help="fan-out scenarios: clients (default: the size's)")
    parser.add_argument("--connect-concurrency", type=int, help="handshakes in flight per client process")
    parser.add_argument("--profile", type=Path, help="py-spy the servers over each window, into DIR")
    parser.add_argument(
        "--pinned-peer",
        action="store_true",
        help="scenario a also with the peer on the CPU agentd pins its loop to",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    raise_fd_limit(20_000)
    if not PEERS_PY.exists():
        raise SystemExit(
            f"{PEERS_PY} is missing: run bench/run_all.py once, or create it from bench/requirements.txt"
        )
    tmp = Path(tempfile.mkdtemp(prefix="ws-delivery-", dir="/tmp"))
    out: dict[str, Any] = {"machine": machine(), "logs": str(tmp)}
    for scenario in [s.strip() for s in args.scenario.split(",") if s.strip()]:
        params = dict(SIZES[args.size][scenario])
        params.update(
            seconds=args.seconds,
            warmup=min(args.warmup, args.seconds / 3),
            drain=1.0,
            baseline_seconds=max(args.baseline_seconds, 2 * min(args.warmup, args.seconds / 3)),
        )
        params["profile"] = args.profile
        if scenario != "idle" and args.tasks:
            params["tasks"] = args.tasks
        if scenario != "idle" and args.clients:
            params["clients"] = args.clients
        if scenario == "idle" and args.conns:
            params["conns"] = args.conns
        if scenario == "idle" and args.connect_concurrency:
            params["connect_concurrency"] = args.connect_concurrency
        out[scenario] = {"params": {k: v for k, v in params.items() if k != "profile"}}
        systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        if args.pinned_peer and scenario == "a" and "websockets-pinned" not in systems:
            systems.append("websockets-pinned")
        for system in systems:
            print(f"[{time.strftime('%H:%M:%S')}] ws {scenario}: {system} ...", file=sys.stderr, flush=True)
            if scenario == "idle":
                out[scenario][system] = run_idle(system, params, tmp)
            else:
                out[scenario][system] = run_fanout(system, scenario, params, tmp)
            print(f"  {json.dumps(out[scenario][system])}", file=sys.stderr, flush=True)
    emit(out, args.json)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
