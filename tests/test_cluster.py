"""Several nodes (daemons) on one PostgreSQL, in one process: claims, caps, leases, remote events.

Each node is its own ``PostgresStore`` (its own pool and LISTEN connection, its own node id),
``EventHub`` and ``Supervisor`` on a fresh database of the test server, exactly as separate
processes would be; tests/test_cluster_processes.py runs them as real daemons. Time is trio's
MockClock and every store's ``now`` follows it, so leases expire without waiting.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from daemon.errors import InvalidTransition
from daemon.events import EventHub
from daemon.states import TaskStatus
from daemon.store import Claim, Transition
from daemon.supervisor import Backoff, RunResult, Supervisor
from daemon.supervisor.membership import LeaseSettings, NodeIdentity

from .conftest import fake_wall
from .helpers import submit, wait_status
from .runners import Hang, SucceedAfter

pytestmark = pytest.mark.usefixtures("pg_dsn")
LEASE = LeaseSettings(lease_s=6.0, heartbeat_s=1.0)


class Node:
    def __init__(self, store, hub: EventHub, supervisor: Supervisor, scope: trio.CancelScope):
        self.store, self.hub, self.supervisor, self.scope = store, hub, supervisor, scope

    def crash(self) -> None:
        """Stop at once, like SIGKILL: no shutdown, no more heartbeats."""
        self.scope.cancel()


@asynccontextmanager
async def cluster(dsn: str, runners: list, **kwargs) -> AsyncIterator[list[Node]]:
    """One node per runner, all started; crashed (not shut down) on exit."""
    from daemon.store.postgres import PostgresStore

    kwargs.setdefault("max_duration_s", math.inf)
    kwargs.setdefault("backoff", Backoff(base_s=1.0, cap_s=60.0, max_attempts=5))
    kwargs.setdefault("lease", LEASE)
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        for i, runner in enumerate(runners):
            store = await PostgresStore.open(dsn, node_id=f"n{i}")
            store.now = fake_wall
            hub = EventHub(store)
            supervisor = Supervisor(
                store,
                hub,
                runner,
                wall_clock=fake_wall,
                node=NodeIdentity(id=f"n{i}", name=f"node-{i}"),
                **kwargs,
            )
            scope = trio.CancelScope()

            async def run(supervisor=supervisor, scope=scope, task_status=trio.TASK_STATUS_IGNORED):
                with scope:
                    await supervisor.run(task_status=task_status)

            await nursery.start(run)
            nodes.append(Node(store, hub, supervisor, scope))
        try:
            yield nodes
        finally:
            for node in nodes:
                node.crash()
    with trio.CancelScope(shield=True):
        for node in nodes:
            await node.store.aclose()


async def user(node: Node, login: str):
    return await node.store.upsert_user(login)


async def running_on_node_0(nodes: list[Node], runners: list[Hang]):
    """A task of alice's, running on node 0 (node 1 drained meanwhile)."""
    nodes[1].supervisor.drain()
    alice = await user(nodes[0], "alice")
    task = await submit(nodes[0].supervisor, alice)
    await runners[0].wait_until(lambda: runners[0].active == 1)
    return task


async def running_events(store, task_id: str) -> list[dict]:
    return [
        e.data
        for e in await store.read_events(task_id)
        if e.type == "task.status" and e.data["status"] == "running"
    ]


async def test_every_task_runs_exactly_once_across_nodes(autojump_clock, pg_dsn):
    runners = [SucceedAfter(0.5) for _ in range(3)]
    async with cluster(pg_dsn, runners, concurrency=3) as nodes:
        alice = await user(nodes[0], "alice")
        tasks = [await submit(nodes[i % 3].supervisor, alice, f"t{i}") for i in range(45)]
        for task in tasks:
            await wait_status(nodes[0].hub, task.id, TaskStatus.SUCCEEDED)
        starts = [task_id for runner in runners for task_id, _ in runner.starts]
        assert sorted(starts) == sorted(t.id for t in tasks)  # each once, none twice
        assert all(runner.starts for runner in runners), "every node took a share"
        assert all(runner.max_active <= 3 for runner in runners)  # the per-node limit
        for task in tasks[:5]:
            (started,) = await running_events(nodes[1].store, task.id)
            assert started["node"] in {"n0", "n1", "n2"}
            assert (await nodes[2].store.get_task(task.id)).node_id == started["node"]


async def test_a_users_cap_holds_across_nodes(autojump_clock, pg_dsn):
    runners = [Hang(), Hang()]
    async with cluster(pg_dsn, runners, concurrency=5, user_concurrency=2) as nodes:
        alice, bob = await user(nodes[0], "alice"), await user(nodes[0], "bob")
        for i in range(6):
            await submit(nodes[i % 2].supervisor, alice, f"a{i}")
        bobs = [await submit(nodes[1].supervisor, bob, f"b{i}") for i in range(2)]
        await trio.sleep(10)  # many claim rounds on both nodes
        running = await nodes[0].store.list_tasks(statuses=[TaskStatus.RUNNING])
        owners = [task.user_id for _, task in running]
        assert owners.count(alice.id) == 2 and owners.count(bob.id) == 2
        assert {task.id for _, task in running} >= {b.id for b in bobs}
        for runner in runners:
            runner.release.set()
        await trio.sleep(10)
        counts = await nodes[0].store.count_by_status()
        assert counts.get("succeeded") == 8


class PerUser(SucceedAfter):
    """Succeeds after a while; counts each user's attempts running at once on every node."""

    def __init__(self, shared: dict[int, list[int]], delay: float) -> None:
        super().__init__(delay)
        self.shared = shared  # user id -> [running now, most at once], one dict for all nodes

    async def run(self, ctx):
        counts = self.shared.setdefault(ctx.task.user_id, [0, 0])
        counts[0] += 1
        counts[1] = max(counts[1], counts[0])
        try:
            return await super().run(ctx)
        finally:
            counts[0] -= 1


async def test_three_nodes_claiming_at_once_never_run_a_user_over_the_cap(autojump_clock, pg_dsn):
    # Every node has room for more than the cap of any one user, and users queue at once.
    shared: dict[int, list[int]] = {}
    runners = [PerUser(shared, 0.5) for _ in range(3)]
    async with cluster(pg_dsn, runners, concurrency=4, user_concurrency=2) as nodes:
        users = [await user(nodes[0], f"user{i}") for i in range(4)]
        tasks = [await submit(nodes[i % 3].supervisor, users[i % 4], f"t{i}") for i in range(48)]
        for task in tasks:
            await wait_status(nodes[0].hub, task.id, TaskStatus.SUCCEEDED)
    # Each user reached the cap and none went over it.
    assert {user_id: most for user_id, (_, most) in shared.items()} == {u.id: 2 for u in users}
    starts = sorted(task_id for runner in runners for task_id, _ in runner.starts)
    assert starts == sorted(t.id for t in tasks)
    assert all(runner.starts for runner in runners)


async def test_a_dead_nodes_tasks_are_taken_over_after_its_lease(autojump_clock, pg_dsn):
    runners = [Hang(), SucceedAfter(0)]
    async with cluster(pg_dsn, runners, concurrency=2) as nodes:
        nodes[1].supervisor.drain()  # everything lands on node 0 first
        alice = await user(nodes[0], "alice")
        tasks = [await submit(nodes[0].supervisor, alice, f"t{i}") for i in range(2)]
        await runners[0].wait_until(lambda: runners[0].active == 2)
        nodes[1].supervisor.resume()
        crashed_at = trio.current_time()
        nodes[0].crash()
        for task in tasks:
            await wait_status(nodes[1].hub, task.id, TaskStatus.SUCCEEDED)
        assert trio.current_time() - crashed_at >= LEASE.lease_s
        for task in tasks:
            events = await nodes[1].store.read_events(task.id)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            statuses = [(e.data["status"], e.data.get("node")) for e in events if e.type == "task.status"]
            assert statuses == [
                ("queued", None),
                ("running", "n0"),
                ("queued", None),
                ("running", "n1"),
                ("succeeded", None),
            ], [e.data for e in events]
            assert "taken over from node n0" in [e.data.get("reason") for e in events], [
                e.data for e in events
            ]
            assert (await nodes[1].store.get_task(task.id)).attempt == 2
        lost = {n.id: n.state for n in await nodes[1].store.list_nodes()}
        assert lost["n0"] == "lost" and lost["n1"] == "up"


async def test_a_node_that_lost_its_lease_stops_and_records_nothing(autojump_clock, pg_dsn):
    runners = [Hang(), Hang()]
    async with cluster(pg_dsn, runners, concurrency=1) as nodes:
        task = await running_on_node_0(nodes, runners)
        held = await nodes[0].store.get_task(task.id)
        # Node 0 is found lost (say its heartbeats stopped reaching the database a while).
        await nodes[1].store._write(
            lambda conn: conn.execute("UPDATE nodes SET state = 'lost' WHERE id = 'n0'")
        )
        nodes[0].supervisor.drain()
        await runners[0].wait_until(lambda: runners[0].active == 0)  # fenced at its next beat
        assert runners[0].cancelled == [task.id]
        # It put the task back itself: a late outcome of that attempt is refused by the store.
        async for event in nodes[1].hub.follow(task.id, after=held.last_seq):
            if event.type == "task.status":
                assert event.data["status"] == "queued"
                break
        with pytest.raises(InvalidTransition, match="no longer holds"):
            await nodes[0].store.transition(Transition(task.id, TaskStatus.SUCCEEDED, claim=Claim.of(held)))
        events = await nodes[1].store.read_events(task.id)
        assert [e.data["status"] for e in events if e.type == "task.status"] == [
            "queued",
            "running",
            "queued",
        ]
        nodes[1].supervisor.resume()
        await runners[1].wait_until(lambda: runners[1].active == 1)
        for _ in range(10):  # it registers again once its tasks are back (mock seconds)
            node0 = {n.id: n for n in await nodes[1].store.list_nodes()}["n0"]
            if node0.state != "lost":
                break
            await trio.sleep(1)
        assert node0.state == "draining"  # registered again after fencing itself (and drained)
        runners[1].release.set()
        await wait_status(nodes[0].hub, task.id, TaskStatus.SUCCEEDED)


async def test_cancel_on_one_node_stops_the_attempt_on_another(autojump_clock, pg_dsn):
    runners = [Hang(), Hang()]
    async with cluster(pg_dsn, runners, concurrency=1) as nodes:
        task = await running_on_node_0(nodes, runners)
        assert (await nodes[1].supervisor.cancel(task.id)).status is TaskStatus.CANCELLED
        await runners[0].wait_until(lambda: runners[0].active == 0)
        await trio.sleep(5)
        events = await nodes[0].store.read_events(task.id)
        assert [e.data["status"] for e in events if e.type == "task.status"] == [
            "queued",
            "running",
            "cancelled",
        ]
        assert (await nodes[0].store.get_task(task.id)).status is TaskStatus.CANCELLED


async def test_a_follower_on_one_node_sees_a_task_on_another_live(autojump_clock, pg_dsn):
    class Chatty(SucceedAfter):
        async def run(self, ctx):
            self.enter(ctx)
            try:
                for i in range(30):
                    await ctx.emit("agent.text", {"text": f"step {i}"})
                    await trio.sleep(0.2)
                return RunResult()
            finally:
                self.leave()

    runners = [Chatty(), Hang()]
    async with cluster(pg_dsn, runners, concurrency=1) as nodes:
        nodes[1].supervisor.drain()
        alice = await user(nodes[1], "alice")
        nodes[0].supervisor.drain()
        task = await submit(nodes[1].supervisor, alice)
        seen = []

        async def follow():
            async for event in nodes[1].hub.follow(task.id):
                seen.append(event.seq)
                if event.type == "task.finished":
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.sleep(1)
            nodes[0].supervisor.resume()
        assert seen == list(range(1, len(seen) + 1)) and len(seen) >= 35
        assert (await nodes[1].store.get_task(task.id)).node_id == "n0"


async def test_a_node_restarting_puts_back_only_its_own_running_tasks(autojump_clock, pg_dsn):
    runners = [Hang(), Hang()]
    async with cluster(pg_dsn, runners, concurrency=1) as nodes:
        alice = await user(nodes[0], "alice")
        nodes[1].supervisor.drain()
        mine = await submit(nodes[0].supervisor, alice, "n0's")
        await runners[0].wait_until(lambda: runners[0].active == 1)
        nodes[0].supervisor.drain()
        nodes[1].supervisor.resume()
        theirs = await submit(nodes[1].supervisor, alice, "n1's")
        await runners[1].wait_until(lambda: runners[1].active == 1)
        nodes[0].crash()
        # Node 0 comes back at once (same id), before its lease ran out.
        async with cluster(pg_dsn, [SucceedAfter(0)], concurrency=1) as (again,):
            await wait_status(again.hub, mine.id, TaskStatus.SUCCEEDED)
            assert (await again.store.get_task(theirs.id)).status is TaskStatus.RUNNING
            reasons = [e.data.get("reason") for e in await again.store.read_events(mine.id)]
            assert "recovered after restart" in reasons, reasons
        runners[1].release.set()


async def test_attempts_ending_together_are_recorded_together_and_refilled_by_one_claim(
    autojump_clock, pg_dsn, monkeypatch
):
    # A round of attempts that end at once: their outcomes go in one write, and their slots
    # are filled by one claim once all are written (not a round for the first, then the rest).
    from daemon.store import postgres, postgres_claims

    rounds: list[int] = []
    claim = postgres_claims.PostgresDialect.claim_tasks

    def counting_claim(self, conn, node_id, limit, user_limit, now):
        round_ = claim(self, conn, node_id, limit, user_limit, now)
        if round_.tasks:
            rounds.append(len(round_.tasks))
        return round_

    batches: list[int] = []
    write = postgres.write_batch

    def counting_write(conn, items):
        batches.append(len(items))
        return write(conn, items)

    monkeypatch.setattr(postgres_claims.PostgresDialect, "claim_tasks", counting_claim)
    monkeypatch.setattr(postgres, "write_batch", counting_write)
    async with cluster(pg_dsn, [SucceedAfter(0.5)], concurrency=4) as (node,):
        node.supervisor.drain()
        alice = await user(node, "alice")
        tasks = [await submit(node.supervisor, alice, f"t{i}") for i in range(12)]
        node.supervisor.resume()
        for task in tasks:
            await wait_status(node.hub, task.id, TaskStatus.SUCCEEDED)
    assert rounds == [4, 4, 4]
    assert batches == [4, 4, 4]
