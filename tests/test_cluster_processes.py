"""Real ``agentd serve`` processes on one PostgreSQL: exactly once, takeover after SIGKILL, live
events across nodes. The server is the test session's own (tests/pg.py), one database per test.

Waiting for other OS processes uses bounded real-time polls of the database (each test has a
deadline); nothing is timed.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio
from cryptography.fernet import Fernet
from trio_websocket import open_websocket_url

from daemon.states import TaskStatus
from daemon.store.postgres import PostgresStore
from daemon.tokens import hash_token, new_token

from .agent_env import bare_repo, text, tool_use
from .daemon_process import DaemonProcess

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("pg_dsn")]

QUICK_LEASE = "lease_timeout_s = 3.0\nheartbeat_interval_s = 0.5\n"


def start_nodes(
    stack: ExitStack, tmp_path: Path, dsn: str, script: dict, count: int, concurrency: int
) -> list[DaemonProcess]:
    config = tmp_path / "agentd.toml"
    config.write_text(QUICK_LEASE)
    key = Fernet.generate_key().decode()  # the same on every node, as a cluster needs
    nodes = []
    for i in range(count):
        daemon = DaemonProcess(
            tmp_path / f"node{i}",
            script=script,
            extra_env={
                "AGENTD_STORE": dsn,
                "AGENTD_CONCURRENCY": str(concurrency),
                "AGENTD_NODE_NAME": f"node{i}",
                "AGENTD_SECRET_KEYS": key,
            },
            args=["--config", str(config)],
        )
        nodes.append(stack.enter_context(daemon))
    return nodes


async def in_store(dsn: str, fn):
    store = await PostgresStore.open(dsn)
    try:
        return await fn(store)
    finally:
        await store.aclose()


def create_tasks(dsn: str, repo: Path, count: int, *, token: str | None = None) -> list[str]:
    async def create(store):
        user = await store.upsert_user("alice")
        if token is not None:
            await store.add_token(user.id, hash_token(token))
        ids = []
        for i in range(count):
            task, _ = await store.create_task(user_id=user.id, repo_url=str(repo), prompt=f"task {i}")
            ids.append(task.id)
        return ids

    return trio.run(in_store, dsn, create)


def wait_until_finished(dsn: str, task_ids: list[str], deadline_s: float) -> dict[str, dict]:
    """Poll (bounded) until every task is final; then each task and its events."""

    async def poll(store):
        end = time.monotonic() + deadline_s
        while True:
            tasks = {t: await store.get_task(t) for t in task_ids}
            if all(task.status.is_terminal for task in tasks.values()):
                return {
                    t: {"task": task, "events": await store.read_events(t, 0, 10_000)}
                    for t, task in tasks.items()
                }
            assert time.monotonic() < end, {t.status.value for t in tasks.values()}
            await trio.sleep(0.2)

    return trio.run(in_store, dsn, poll)


def node_ids(nodes: list[DaemonProcess]) -> list[str]:
    return [(node.data_dir / "node-id").read_text().strip() for node in nodes]


def test_three_daemons_run_300_tasks_each_exactly_once(tmp_path, pg_dsn):
    repo = bare_repo(tmp_path)
    script = {"turns": [{"content": [text("Nothing to change.")]}]}
    with ExitStack() as stack:
        nodes = start_nodes(stack, tmp_path, pg_dsn, script, count=3, concurrency=4)
        ids = node_ids(nodes)
        task_ids = create_tasks(pg_dsn, repo, 300)
        done = wait_until_finished(pg_dsn, task_ids, deadline_s=240)

        status = json.loads(nodes[0].agentctl("--json", "status").stdout)
        listed = {n["id"]: n for n in status["nodes"]}
        assert set(listed) == set(ids)
        assert all(n["state"] == "up" and n["heartbeat_age_s"] < 3 for n in listed.values())
        assert {n["name"] for n in listed.values()} == {"node0", "node1", "node2"}
        shown = json.loads(nodes[2].agentctl("--json", "tasks").stdout)
        assert shown and all(row["node"] in ids for row in shown)
        for node in nodes:
            assert node.stop() == 0

    ran_on: dict[str, int] = {}
    for task_id, found in done.items():
        task, events = found["task"], found["events"]
        assert task.status.value == "succeeded", (task_id, task.error)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        started = [e.data for e in events if e.type == "task.status" and e.data["status"] == "running"]
        assert len(started) == 1 and task.attempt == 1, (task_id, started)  # exactly once
        ran_on[started[0]["node"]] = ran_on.get(started[0]["node"], 0) + 1
    assert set(ran_on) == set(ids), ran_on  # every node took a share
    nodes_after = trio.run(in_store, pg_dsn, lambda store: store.list_nodes())
    assert {n.state for n in nodes_after} == {"stopped"}


def test_sigkill_one_node_mid_run_its_tasks_finish_on_the_others(tmp_path, pg_dsn):
    repo = bare_repo(tmp_path)
    script = {
        "turns": [
            {"content": [tool_use("slow", "bash", command="sleep 4")]},
            {
                "content": [
                    tool_use(
                        "note",
                        "str_replace_based_edit_tool",
                        command="create",
                        path="NOTE.md",
                        file_text="done\n",
                    )
                ]
            },
            {"content": [text("Wrote NOTE.md.")]},
        ]
    }
    with ExitStack() as stack:
        nodes = start_nodes(stack, tmp_path, pg_dsn, script, count=3, concurrency=2)
        ids = node_ids(nodes)
        task_ids = create_tasks(pg_dsn, repo, 9)

        async def victims(store):  # wait (bounded) until node 0 is in the tool call of two
            for _ in range(300):
                running = await store.list_tasks(statuses=[TaskStatus.RUNNING])
                mine = [t.id for _, t in running if t.node_id == ids[0]]
                sleeping = [
                    t for t in mine if "agent.tool_call" in [e.type for e in await store.read_events(t)]
                ]
                if len(sleeping) == 2:
                    return sleeping
                await trio.sleep(0.1)
            raise AssertionError("node 0 never ran two tasks")

        killed = trio.run(in_store, pg_dsn, victims)
        nodes[0].proc.kill()
        nodes[0].proc.wait(30)
        done = wait_until_finished(pg_dsn, task_ids, deadline_s=120)
        status = json.loads(nodes[1].agentctl("--json", "status").stdout)
        assert {n["id"]: n["state"] for n in status["nodes"]}[ids[0]] == "lost"

    for task_id, found in done.items():
        task, events = found["task"], found["events"]
        assert task.status.value == "succeeded", (task_id, task.error)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        runs = [e.data["node"] for e in events if e.type == "task.status" and e.data["status"] == "running"]
        pushed = [e.data["branch"] for e in events if e.type == "git.pushed"]
        assert len(pushed) == 1
        if task_id in killed:
            assert runs[0] == ids[0] and runs[-1] in ids[1:] and task.attempt == 2
            assert "workspace.reset" in [e.type for e in events]
            # A branch of its own for the new run: never one that mixes the two.
            assert pushed[0].endswith("-a2") and task.branch == pushed[0]
        else:
            assert len(runs) == 1 and not pushed[0].endswith("-a2")


def test_a_websocket_on_one_node_follows_a_task_running_on_another(tmp_path, pg_dsn):
    repo = bare_repo(tmp_path)
    script = {
        "turns": [
            *({"content": [tool_use(f"s{i}", "bash", command="sleep 0.3")]} for i in range(4)),
            {"content": [text("Slept a little.")]},
        ]
    }
    token = new_token()
    with ExitStack() as stack:
        runner, watcher = start_nodes(stack, tmp_path, pg_dsn, script, count=2, concurrency=2)
        assert watcher.agentctl("drain").returncode == 0  # nothing runs on the watching node
        (task_id,) = create_tasks(pg_dsn, repo, 1, token=token)

        async def follow() -> list[dict]:
            seen = []
            ws_url = watcher.url.replace("http://", "ws://") + "/ws"
            async with open_websocket_url(ws_url, extra_headers=[("Authorization", f"Bearer {token}")]) as ws:
                await ws.send_message(json.dumps({"type": "subscribe", "task_id": task_id, "after": 0}))
                with trio.fail_after(60):
                    while True:
                        message = json.loads(await ws.get_message())
                        if message.get("type") == "event" and message.get("seq") is not None:
                            seen.append(message)
                            if message["event"] == "task.finished":
                                return seen

        seen = trio.run(follow)
    seqs = [m["seq"] for m in seen]
    assert seqs == list(range(1, len(seqs) + 1))  # from seq 1 to the end, no gap, no duplicate
    runs = [
        m["data"]["node"] for m in seen if m["event"] == "task.status" and m["data"]["status"] == "running"
    ]
    assert runs == [node_ids([runner])[0]]
    assert [m["event"] for m in seen].count("agent.tool_call") == 4


def test_a_daemon_with_another_secret_key_refuses_to_join_and_says_why(tmp_path, pg_dsn):
    key, other = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with ExitStack() as stack:
        first = DaemonProcess(
            tmp_path / "node0", extra_env={"AGENTD_STORE": pg_dsn, "AGENTD_SECRET_KEYS": key}
        )
        stack.enter_context(first)
        second = DaemonProcess(
            tmp_path / "node1", extra_env={"AGENTD_STORE": pg_dsn, "AGENTD_SECRET_KEYS": other}
        )
        with pytest.raises(AssertionError, match="did not start"):
            second.start()
        assert second.proc is not None and second.proc.wait(30) == 2
        assert second.log[-1].startswith(
            "agentd: this node's secret key differs from the one the cluster's data was encrypted with: copy"
        )
        assert other not in "".join(second.log) and key not in "".join(second.log)
        # With the cluster's key it joins.
        same = DaemonProcess(
            tmp_path / "node2", extra_env={"AGENTD_STORE": pg_dsn, "AGENTD_SECRET_KEYS": key}
        )
        stack.enter_context(same)
        assert same.stop() == 0
        assert first.stop() == 0
