"""The agent loop with the scripted model, real tools, real git and the real store."""

from __future__ import annotations

import pytest

from daemon.agent.tools import sandbox
from daemon.states import TaskStatus

from .agent_env import FIX_SCRIPT, agent_supervisor, ask_then_write, bare_repo, branch_file, text, tool_use
from .helpers import wait_status

pytestmark = pytest.mark.slow


async def run_task(store, hub, tmp_path, script, prompt="Fix add()", files=None, **settings):
    bare = bare_repo(tmp_path, files)
    async with agent_supervisor(store, hub, tmp_path, script=script, **settings) as sup:
        alice = await store.upsert_user("alice")
        task, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt=prompt)
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.WAITING_INPUT)
    return bare, await store.get_task(task.id), await store.read_events(task.id)


async def test_a_task_fixes_the_bug_and_pushes_a_branch(store, hub, tmp_path):
    bare, task, events = await run_task(store, hub, tmp_path, FIX_SCRIPT)
    assert task.status is TaskStatus.SUCCEEDED, task.error
    types = [e.type for e in events]
    assert types[:4] == ["task.created", "task.status", "task.status", "workspace.ready"]
    assert types.count("agent.tool_call") == 3 and types.count("agent.tool_result") == 3
    assert types[-3:] == ["git.pushed", "task.status", "task.finished"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    results = [e.data for e in events if e.type == "agent.tool_result"]
    assert "1 passed" in results[2]["output"] and not results[2]["is_error"]
    pushed = next(e.data for e in events if e.type == "git.pushed")
    assert pushed["files_changed"] == ["calc.py"]
    assert task.branch == pushed["branch"] and task.branch.startswith("agentd/")
    assert "return a + b" in branch_file(bare, task.branch, "calc.py")
    ready = next(e.data for e in events if e.type == "workspace.ready")
    assert task.diff == {
        "commit": pushed["commit"],
        "base": ready["commit"],  # what the counts start from: the commit first cloned
        "files": ["calc.py"],
        "files_total": 1,
        "lines_added": 1,
        "lines_removed": 1,
    }
    assert task.usage.input_tokens > 0 and task.usage.output_tokens > 0
    usage_events = [e for e in events if e.type == "agent.usage"]
    assert len(usage_events) == 4


async def test_a_whole_task_leaves_the_disk_to_worker_threads(
    store, hub, tmp_path, file_system_on_loop, monkeypatch
):
    """Clone, tools (the sandbox's first probe included), commit and push: nothing that writes
    or reads the disk runs on the event loop's thread (a rename there once waited 1.7 s for the
    journal behind 500 clones). Stats of known paths (resolving the workspace) are left out."""
    bare = bare_repo(tmp_path, None)
    monkeypatch.setattr(sandbox, "_probe", None)  # probed again in this task, as on a fresh start
    sandbox._system_binds.cache_clear()
    async with agent_supervisor(store, hub, tmp_path, script=FIX_SCRIPT) as sup:
        alice = await store.upsert_user("alice")
        with file_system_on_loop(stats=False) as on_loop:
            task, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt="Fix add()")
            await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    assert (await store.get_task(task.id)).status is TaskStatus.SUCCEEDED
    assert on_loop == []


async def test_conversation_is_persisted_with_all_tool_results_in_one_user_turn(store, hub, tmp_path):
    script = {
        "turns": [
            {
                "content": [
                    tool_use("a", "bash", command="echo one"),
                    tool_use("b", "bash", command="echo two"),
                ]
            },
            {"content": [text("done")]},
        ]
    }
    _, task, _ = await run_task(store, hub, tmp_path, script)
    turns = await store.list_messages(task.id)
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    results = turns[2]["content"]
    assert [(r["type"], r["tool_use_id"]) for r in results] == [("tool_result", "a"), ("tool_result", "b")]
    assert "one" in results[0]["content"] and "two" in results[1]["content"]
    assert task.reason == "no changes"


async def test_no_changes_succeeds_without_pushing(store, hub, tmp_path):
    bare, task, events = await run_task(
        store, hub, tmp_path, {"turns": [{"content": [text("Nothing to do.")]}]}
    )
    assert task.status is TaskStatus.SUCCEEDED and task.reason == "no changes"
    assert "git.pushed" not in [e.type for e in events]
    assert task.branch is None


async def test_ask_user_waits_for_the_answer_then_goes_on(store, hub, tmp_path):
    script = ask_then_write("Tabs or spaces?")
    bare = bare_repo(tmp_path)
    async with agent_supervisor(store, hub, tmp_path, script=script) as sup:
        alice = await store.upsert_user("alice")
        task, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt="Pick a style")
        await wait_status(hub, task.id, TaskStatus.WAITING_INPUT)
        waiting = await store.get_task(task.id)
        assert waiting.reason == "Tabs or spaces?"
        await store.add_input(task.id, "spaces, please")
        await sup.requeue(task.id, reason="answered")
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED)
    events = await store.read_events(task.id)
    assert [e.data for e in events if e.type == "agent.question"] == [{"text": "Tabs or spaces?"}]
    turns = await store.list_messages(task.id)
    answer = turns[2]["content"][0]
    assert answer == {"type": "tool_result", "tool_use_id": "q0", "content": "spaces, please"}
    assert branch_file(bare, (await store.get_task(task.id)).branch, "style.txt") == "spaces\n"


async def test_a_task_budget_override_is_capped_and_enforced(store, hub, tmp_path):
    script = {"turns": [{"content": [tool_use(f"t{i}", "bash", command=f"echo {i}")]} for i in range(10)]}
    bare = bare_repo(tmp_path)
    async with agent_supervisor(store, hub, tmp_path, script=script) as sup:
        alice = await store.upsert_user("alice")
        task, _ = await sup.submit(
            user_id=alice.id, repo_url=str(bare), prompt="loop", budget={"max_turns": 3}
        )
        await wait_status(hub, task.id, TaskStatus.FAILED)
    task = await store.get_task(task.id)
    assert task.reason == "budget_exceeded:turns"
    assert task.error == "budget exceeded: 3 turns of 3"


async def test_the_same_call_again_and_again_is_stuck(store, hub, tmp_path):
    script = {"turns": [{"content": [tool_use(f"t{i}", "bash", command="ls")]} for i in range(10)]}
    _, task, events = await run_task(store, hub, tmp_path, script, prompt="spin")
    assert task.status is TaskStatus.FAILED and task.reason == "stuck"
    assert sum(1 for e in events if e.type == "agent.tool_call") == 3  # the 4th is refused


EDIT = "str_replace_based_edit_tool"
# An edit whose old_str is not in the file fails (is_error) the same way each time.
FAILING_EDIT = (EDIT, {"command": "str_replace", "path": "calc.py", "old_str": "nope", "new_str": "x"})
VIEW = (EDIT, {"command": "view", "path": "calc.py"})
MAKE, DIFF = ("bash", {"command": "make"}), ("bash", {"command": "git diff"})


@pytest.mark.parametrize(
    ("calls", "reason"),
    [
        ([MAKE, DIFF] * 5, "stuck_alternating"),
        ([FAILING_EDIT, VIEW, FAILING_EDIT, MAKE, FAILING_EDIT, VIEW, VIEW], "stuck_failing"),
    ],
)
async def test_going_round_in_circles_fails_with_its_own_reason(store, hub, tmp_path, calls, reason):
    script = {"turns": [{"content": [tool_use(f"t{i}", name, **x)]} for i, (name, x) in enumerate(calls)]}
    _, task, events = await run_task(store, hub, tmp_path, script, prompt="spin")
    assert task.status is TaskStatus.FAILED and task.reason == reason, task.error
    # Refused before the sixth call: five ran.
    assert sum(1 for e in events if e.type == "agent.tool_call") == 5


async def test_a_tool_use_id_used_again_later_gets_its_stored_result_not_a_second_run(store, hub, tmp_path):
    """Tool calls are known by id for the whole task: a repeated id is answered from the store
    (as after a restart), even when the first call was made earlier in the same attempt."""
    script = {
        "turns": [
            {"content": [tool_use("same", "bash", command="echo run >> runs.txt; echo first")]},
            {"content": [tool_use("same", "bash", command="echo run >> runs.txt; echo second")]},
            {"content": [text("Done.")]},
        ]
    }
    _, task, events = await run_task(store, hub, tmp_path, script)
    assert task.status is TaskStatus.SUCCEEDED, task.error
    assert [e.type for e in events].count("agent.tool_call") == 1
    turns = await store.list_messages(task.id)
    assert [turns[i]["content"][0]["content"] for i in (2, 4)] == ["first\n", "first\n"]
    assert (tmp_path / "workspaces" / task.id / "runs.txt").read_text() == "run\n"


async def test_a_turns_text_and_usage_events_follow_each_other(store, hub, tmp_path):
    script = {"turns": [{"content": [text("One."), text("  "), text("Two.")]}]}
    _, task, events = await run_task(store, hub, tmp_path, script)
    turn = [e for e in events if e.type.startswith("agent.")]
    assert [(e.type, e.data.get("text")) for e in turn] == [
        ("agent.text", "One."),
        ("agent.text", "Two."),
        ("agent.usage", None),
    ]
    assert [e.seq for e in turn] == list(range(turn[0].seq, turn[0].seq + 3))
    assert turn[-1].data["stop_reason"] == "end_turn" and "input_tokens" in turn[-1].data


@pytest.mark.parametrize("stop_reason", ["max_tokens", "pause_turn"])
async def test_max_tokens_and_pause_turn_go_on(store, hub, tmp_path, stop_reason):
    script = {
        "turns": [
            {"content": [text("Half of my answer")], "stop_reason": stop_reason},
            {"content": [text("and the rest.")]},
        ]
    }
    _, task, _ = await run_task(store, hub, tmp_path, script)
    assert task.status is TaskStatus.SUCCEEDED
    turns = await store.list_messages(task.id)
    if stop_reason == "max_tokens":
        assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
        assert turns[2]["content"] == [text("Continue from where you stopped.")]
    else:
        assert [t["role"] for t in turns] == ["user", "assistant", "assistant"]


async def test_refusal_fails_with_its_reason(store, hub, tmp_path):
    script = {"turns": [{"content": [text("I can't help with that.")], "stop_reason": "refusal"}]}
    _, task, _ = await run_task(store, hub, tmp_path, script)
    assert task.status is TaskStatus.FAILED and task.reason == "refusal"
    assert task.error == "the model refused: I can't help with that."


async def test_an_interrupted_tool_call_is_reported_not_run_again(store, hub, tmp_path):
    """The state a SIGKILL leaves: the call was started, its result never stored."""
    bare = bare_repo(tmp_path)
    alice = await store.upsert_user("alice")
    task, _ = await store.create_task(user_id=alice.id, repo_url=str(bare), prompt="Touch a file")
    await store.append_message(task.id, "user", [text("Touch a file")])
    await store.append_message(
        task.id, "assistant", [tool_use("x", "bash", command="touch ran.txt")], stop_reason="tool_use"
    )
    await store.start_tool_call(task.id, "x", "bash", {"command": "touch ran.txt"})
    script = {
        "turns": [
            {"content": [text("(played before the crash)")]},
            {"content": [text("Understood; I will not retry it.")]},
        ]
    }
    async with agent_supervisor(store, hub, tmp_path, script=script):
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    turns = await store.list_messages(task.id)
    result = turns[2]["content"][0]
    assert result["tool_use_id"] == "x" and result["is_error"] is True
    assert "interrupted by a restart" in result["content"]
    workspace = tmp_path / "workspaces" / task.id
    assert not (workspace / "ran.txt").exists()
    assert (await store.get_task(task.id)).reason == "no changes"


async def test_a_message_that_arrives_as_the_attempt_ends_is_not_stranded(store, hub, tmp_path):
    """The agent has looked at its inbox for the last time; then the user writes."""
    script = {
        "turns": [
            {"content": [text("All done.")]},
            {
                "content": [
                    tool_use(
                        "w",
                        "str_replace_based_edit_tool",
                        command="create",
                        path="more.txt",
                        file_text="more\n",
                    )
                ]
            },
            {"content": [text("Added more.txt as asked.")]},
        ]
    }
    bare = bare_repo(tmp_path)
    from daemon.agent.loop import _Next, _Session

    original = _Session._after_assistant
    sent = []

    async def late_message(self, last):
        step = await original(self, last)
        if step is _Next.DONE and not sent:
            sent.append(await self.store.add_input(self.task.id, "also add more.txt"))
        return step

    _Session._after_assistant = late_message
    try:
        async with agent_supervisor(store, hub, tmp_path, script=script) as sup:
            alice = await store.upsert_user("alice")
            task, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt="Do the thing")
            await wait_status(hub, task.id, TaskStatus.SUCCEEDED)  # the first, "no changes" end
            follow = hub.follow(task.id)
            statuses = []
            async for event in follow:
                if event.type == "task.status":
                    statuses.append(event.data["status"])
                    if statuses.count("succeeded") == 2:
                        break
            await follow.aclose()
    finally:
        _Session._after_assistant = original
    assert statuses == ["queued", "running", "succeeded", "queued", "running", "succeeded"]
    task = await store.get_task(task.id)
    assert branch_file(bare, task.branch, "more.txt") == "more\n"


async def test_a_message_sent_mid_turn_reaches_the_next_turn_and_quiet_turns_skip_the_inbox(
    store, hub, tmp_path, monkeypatch
):
    script = {
        "turns": [
            {"content": [tool_use("a", "bash", command="echo one")]},
            {"content": [tool_use("b", "bash", command="echo two")]},
            {"content": [text("done")]},
        ]
    }
    from daemon.agent.loop import _Session

    original_run_tool, original_take = _Session._run_tool, store.take_inputs
    takes: list[list[str]] = []

    async def run_tool_and_hear_from_the_user(self, block):
        if block["id"] == "a":
            await self.store.add_input(self.task.id, "also this")
        return await original_run_tool(self, block)

    async def counted_take(task_id):
        takes.append(await original_take(task_id))
        return takes[-1]

    monkeypatch.setattr(_Session, "_run_tool", run_tool_and_hear_from_the_user)
    monkeypatch.setattr(store, "take_inputs", counted_take)
    _, task, _ = await run_task(store, hub, tmp_path, script)
    assert task.status is TaskStatus.SUCCEEDED, task.error
    # At the start (the attempt cannot know), and once after the message: not every turn.
    assert takes == [[], ["also this"]]
    turns = await store.list_messages(task.id)
    assert turns[2]["content"][-1] == {"type": "text", "text": "also this"}


async def test_a_push_of_thousands_of_files_names_the_first_thousand(store, hub, tmp_path):
    """The agent decides how many files a push has: the event stays small."""
    script = {
        "turns": [
            {
                "content": [
                    tool_use(
                        "a", "bash", command="mkdir gen && for i in $(seq 1005); do echo $i > gen/f$i; done"
                    )
                ]
            },
            {"content": [text("Generated.")]},
        ]
    }
    _, task, events = await run_task(store, hub, tmp_path, script)
    assert task.status is TaskStatus.SUCCEEDED, task.error
    (pushed,) = [e.data for e in events if e.type == "git.pushed"]
    assert len(pushed["files_changed"]) == 1000 and pushed["files_total"] == 1005
    assert task.diff["files_total"] == 1005 and len(task.diff["files"]) == 1000
