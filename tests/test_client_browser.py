"""The phone client at ``/`` in Debian's Chromium at phone sizes (390x844, 360x740), against the
real daemon in-process: a person signs in with a token, starts a task on a local bare
repository with the scripted model, watches it stream, answers its question, sees the diff and
the branch, sends a follow-up; the page never scrolls sideways, runs nothing it did not ship
and breaks no rule of its Content-Security-Policy.

Playwright's sync API runs in a worker thread (it has its own event loop) and reaches back into
the daemon's Trio loop with ``trio.from_thread``; every wait is an auto-waiting ``expect``.
"""

from __future__ import annotations

import json
import re
import subprocess

import trio

from daemon.states import TaskStatus

from .agent_env import text, tool_use
from .client_browser import (
    BROWSER_TEST,
    check_view,
    phone,
    run,
    screenshot_dir,
    scripted_runner,
    shown_seqs,
    sign_in,
)
from .fakes.git_http import make_bare_repo
from .fakes.phone import running_daemon
from .helpers import wait_status
from .test_admin_api import submit

EDITOR = "str_replace_based_edit_tool"
MINUS = "\u2212"  # as the page writes "lines removed"
pytestmark = BROWSER_TEST

HELLO = {
    "turns": [
        {
            "content": [
                text("Let me look at the repository first."),
                tool_use("look", "bash", command="ls && git log --oneline -3"),
            ]
        },
        {
            "content": [
                tool_use("ask", "ask_user", question="Shall I add a HELLO.md that greets its readers?")
            ]
        },
        {
            "content": [
                text("Adding HELLO.md."),
                tool_use(
                    "write",
                    EDITOR,
                    command="create",
                    path="HELLO.md",
                    file_text="# Hello\n\nHello, reader.\n",
                ),
            ]
        },
        {"content": [text("Added HELLO.md, a greeting for whoever reads this repository.")]},
        # The follow-up's turns; the first takes a moment, for the screenshot of a running task.
        {
            "content": [
                text("Pointing the README at HELLO.md, as you asked."),
                tool_use(
                    "point",
                    EDITOR,
                    command="str_replace",
                    path="README.md",
                    old_str="# hello\n",
                    new_str="# hello\n\nSay hello: HELLO.md\n",
                ),
            ],
            "delay_s": 2,
        },
        {"content": [text("Done: the README points to HELLO.md.")]},
    ]
}


async def test_a_person_starts_a_task_answers_it_sees_the_diff_and_follows_up(tmp_path):
    bare = make_bare_repo(tmp_path / "acme", "hello.git", branches={"main": {"README.md": "# hello\n"}})
    async with running_daemon(tmp_path, scripted_runner(tmp_path, HELLO)) as server:
        alice, token = await server.user("alice")
        with trio.fail_after(120):
            task_id = await trio.to_thread.run_sync(
                _start_answer_follow_up, server, token, str(bare), tmp_path
            )
        task = await server.store.get_task(task_id)
        assert task.status is TaskStatus.SUCCEEDED and task.attempt == 1  # the follow-up's fresh run
        assert (task.budget["max_usd"], task.budget["max_turns"]) == (2.5, 30)
        assert len(await server.store.list_tasks(user_id=alice.id)) == 3  # the form's, and two more
        pushed = subprocess.run(
            ["git", "-C", str(bare), "show", f"{task.branch}:README.md"], capture_output=True, text=True
        )
        assert pushed.stdout == "# hello\n\nSay hello: HELLO.md\n"


def _start_answer_follow_up(server, token: str, repo: str, tmp_path) -> str:
    from playwright.sync_api import expect

    shots = screenshot_dir(tmp_path)
    with phone(tmp_path / "profile") as browser:
        page = browser.page
        sign_in(page, server.url, token)
        expect(page.locator("#tasks-empty")).to_be_visible()
        check_view(page, "empty task list")

        # A new task on the local repository.
        page.click("#v-list .bar a")
        expect(page.locator("#new-h")).to_be_focused()
        check_view(page, "new task form")
        page.fill("#repo-url", repo)
        page.fill("#prompt", "Add a HELLO.md that greets its readers")
        expect(page.locator("#model")).to_be_disabled()  # one model on offer: shown, not chosen
        page.fill("#max-usd", "2.5")
        page.fill("#max-turns", "30")
        page.click("#new-submit")

        # The task, live: the model's text (streamed first), the tool call on one line with its
        # output behind a tap, then the question with its answer box.
        expect(page.locator("#t-title")).to_have_text(re.compile(r"^…/acme/hello$"))  # ".git" trimmed
        events = page.locator("#t-events")
        expect(events).to_contain_text("Let me look at the repository first.")
        tool = events.locator(".ev-tool").first
        expect(tool.locator("summary")).to_have_text("$ ls && git log --oneline -3")
        expect(tool.locator("pre.out")).to_be_hidden()
        tool.locator("summary").click()
        expect(tool.locator("pre.out")).to_contain_text("README.md")
        question = events.locator(".ev-question")
        expect(question).to_contain_text("Shall I add a HELLO.md that greets its readers?")
        expect(page.locator("#t-status")).to_have_text("needs answer")
        expect(question.locator("#t-answer")).to_be_visible()
        expect(page.locator("#t-follow-form")).to_be_hidden()
        check_view(page, "a task asking a question")

        page.fill("#t-answer", "Yes, please.")
        page.click("#t-answer-form button")
        expect(events.locator(".ev-user")).to_contain_text("Yes, please.")
        # The next text came as it was written (live-only deltas), then as stored, once.
        expect(events.locator(".ev-text", has_text="Adding HELLO.md.")).to_have_count(1)
        streamed = [json.loads(f)["data"]["text"] for f in browser.frames if '"agent.text_delta"' in f]
        assert "Adding HELLO.md." in "".join(streamed)
        expect(page.locator("#t-status")).to_have_text("succeeded")

        # The diff: its file with its lines added and removed, the patch coloured by kind; the
        # branch pushed.
        expect(page.locator("#t-diff-sum")).to_have_text(f"1 file, +3 {MINUS}0")
        expect(page.locator("#t-files li")).to_have_text(re.compile(rf"HELLO\.md\s*\+3\s*{MINUS}0"))
        page.click("#t-patch-box summary")
        expect(page.locator("#t-patch .dl-add").first).to_have_text("+# Hello")
        expect(page.locator("#t-patch .dl-hunk").first).to_contain_text("@@")
        expect(page.locator("#t-patch .dl-file").first).to_contain_text("diff --git a/HELLO.md b/HELLO.md")
        expect(page.locator("#t-branch code")).to_have_text(re.compile(r"^agentd/.*add-a-hello-md"))
        expect(page.locator("#t-pr")).to_have_text("none")
        expect(page.locator("#t-usage")).to_contain_text("tokens · $0")
        check_view(page, "a finished task with its diff open")
        page.evaluate("document.getElementById('t-facts').scrollIntoView()")
        page.screenshot(path=str(shots / "task-finished.png"))

        # A follow-up: the task goes on in the same branch; while it runs, a screenshot.
        page.fill("#t-follow", "Point the README at it too.")
        page.click("#t-follow-form button")
        expect(page.locator("#t-status")).to_have_text("running")
        expect(events.locator(".ev-user").last).to_contain_text("Point the README at it too.")
        page.locator("#t-patch-box summary").click()  # closed, for the picture
        page.evaluate("scrollTo(0, document.scrollingElement.scrollHeight)")
        page.screenshot(path=str(shots / "task-running.png"), full_page=False)
        expect(events).to_contain_text("Done: the README points to HELLO.md.")
        expect(page.locator("#t-status")).to_have_text("succeeded")
        expect(page.locator("#t-diff-sum")).to_have_text(f"2 files, +5 {MINUS}0")
        expect(page.locator("#t-files li")).to_have_count(2)

        # Every stored event shown once, in order, none missing.
        task_id = page.evaluate("decodeURIComponent(location.hash.split('/')[2])")
        expect(page.locator("#t-id .tid")).to_have_attribute("title", task_id)
        last = run(server.store.get_task, task_id).last_seq
        expect(page.locator("#t-events [data-seq]").last).to_have_attribute("data-seq", str(last))
        assert shown_seqs(page) == list(range(1, last + 1))

        # Back to the list: the task with its status, repository, age and cost; tasks made
        # meanwhile come in by themselves, newest first.
        page.click("nav >> text=Tasks")
        row = page.locator(f'#tasks li[data-task-id="{task_id}"]')
        expect(row).to_contain_text("succeeded")
        gone = run(
            submit,
            server,
            token,
            repo_url=repo.replace("hello.git", "gone.git"),
            prompt="Fix the typo in the title",
        )
        expect(page.locator(f'#tasks li[data-task-id="{gone}"] .status')).to_have_text("failed")
        trio.from_thread.run_sync(server.daemon.supervisor.drain)
        waiting = run(submit, server, token, repo_url=repo, prompt="Add a CONTRIBUTING.md")
        expect(page.locator("#tasks li").first).to_have_attribute("data-task-id", waiting)
        expect(page.locator("#tasks li").first.locator(".status")).to_have_text("queued")
        expect(row.locator(".repo")).to_have_text(re.compile(r"^…/acme/hello$"))
        expect(row).to_contain_text("ago · $0")
        check_view(page, "the task list")
        page.screenshot(path=str(shots / "task-list.png"), full_page=False)
        browser.check_clean()
    return task_id


# What a hostile repository or model might put in front of the person: markup and scripts that
# would set window.__pwned if anything parsed them.
PAYLOAD = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
HOSTILE_FILE = "<img src=x onerror=window.__pwned=3>.md"
HOSTILE = {
    "turns": [
        {
            "content": [
                text("Here: " + PAYLOAD),
                tool_use("echo", "bash", command="printf '%s\\n' '<script>window.__pwned=4</script>'"),
            ]
        },
        {
            "content": [
                tool_use("make", EDITOR, command="create", path=HOSTILE_FILE, file_text=PAYLOAD + "\n")
            ]
        },
        {"content": [text("Done " + PAYLOAD)]},
    ]
}


async def test_markup_from_prompts_models_tools_and_files_shows_as_text_and_runs_nothing(tmp_path):
    bare = make_bare_repo(tmp_path / "acme", "site.git", branches={"main": {"README.md": "# site\n"}})
    async with running_daemon(tmp_path, scripted_runner(tmp_path, HOSTILE)) as server:
        _, token = await server.user("alice")
        task_id = await submit(server, token, repo_url=str(bare), prompt="Show " + PAYLOAD)
        with trio.fail_after(60):
            await wait_status(server.daemon.hub, task_id, TaskStatus.SUCCEEDED)
            # A pull request "URL" that is a script: shown as text, never a link.
            await server.store.update_task(task_id, pr_url="javascript:window.__pwned=5")
            await trio.to_thread.run_sync(_look_at_hostile_task, server, token, task_id, tmp_path)


def _look_at_hostile_task(server, token: str, task_id: str, tmp_path) -> None:
    from playwright.sync_api import expect

    with phone(tmp_path / "profile") as browser:
        page = browser.page
        sign_in(page, server.url, token)
        expect(page.locator(f'#tasks li[data-task-id="{task_id}"] .prompt-line')).to_have_text(
            "Show " + PAYLOAD
        )
        page.goto(f"{server.url}/#/task/{task_id}")
        events = page.locator("#t-events")
        expect(page.locator("#t-prompt")).to_have_text("Show " + PAYLOAD)
        expect(events.locator(".ev-text").first).to_contain_text("Here: " + PAYLOAD)
        expect(events).to_contain_text("Done " + PAYLOAD)
        for summary in events.locator("summary").all():
            summary.click()
        expect(events.locator("pre.out").first).to_have_text("<script>window.__pwned=4</script>")
        expect(events.locator(".tool-line").last).to_have_text("create " + HOSTILE_FILE)
        expect(page.locator("#t-files .fname")).to_have_text(HOSTILE_FILE)
        page.click("#t-patch-box summary")
        expect(page.locator("#t-patch .dl-add").last).to_have_text("+" + PAYLOAD)
        expect(page.locator("#t-pr")).to_have_text("javascript:window.__pwned=5")
        assert page.locator("#t-pr a").count() == 0
        page.click("#t-pr")  # a click on it goes nowhere
        check_view(page, "a task full of markup")

        assert page.evaluate("window.__pwned") is None
        assert page.locator("#main img, #main script, #main iframe").count() == 0
        browser.check_clean()
