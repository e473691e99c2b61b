"""What the API refuses before anything is stored, through the real server over real HTTP.

Numbers: NaN, infinities and numbers beyond a float are not JSON, though Python's parser reads
them; every JSON body refuses them (400), and a budget must be finite and positive (422).
Text: prompts, follow-ups and base branches end up in commits and branches, so control
characters (but tab, newline and carriage return) and lone surrogates are refused (422) when
the task is created; what is accepted commits (the last test runs a whole task with it).
"""

from __future__ import annotations

import json
import subprocess

import httpx2
import pytest

from .agent_env import FIX_CALC_EDIT, bare_repo, text
from .daemon_process import DaemonProcess
from .fakes.phone import running_daemon

TASK = {"repo_url": "file:///repo", "prompt": "fix the bug"}
JSON = {"Content-Type": "application/json"}


def body(raw: str) -> dict:
    return {"content": raw.encode(), "headers": JSON}


def assert_error(response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["code"] == code, error
    for word in words:
        assert word in error["message"], error


@pytest.fixture
async def api(tmp_path):
    async with running_daemon(tmp_path) as server:
        server.daemon.supervisor.drain()  # accepted tasks stay queued: nothing runs here
        _, token = await server.user("alice")
        async with server.client(token) as http:
            yield server, http


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
async def test_a_non_finite_number_in_any_json_body_is_refused_at_parse_time(api, number):
    server, http = api
    created = await http.post(
        "/api/tasks",
        **body(f'{{"repo_url": "file:///repo", "prompt": "p", "budget": {{"max_usd": {number}}}}}'),
    )
    assert_error(created, 400, "bad_request", "finite")
    # Anywhere in a body, even where the route would ignore the value.
    nested = await http.post("/api/tasks", **body(f'{{"prompt": "p", "x": [{{"y": {number}}}]}}'))
    assert_error(nested, 400, "bad_request", "finite")
    async with server.client() as anonymous:
        token = await anonymous.post("/auth/token", **body(f'{{"code": {number}}}'))
        assert_error(token, 400, "bad_request", "finite")
    assert (await http.get("/api/tasks")).json()["tasks"] == []


async def test_a_follow_up_with_a_non_finite_number_is_refused(api):
    _, http = api
    task = (await http.post("/api/tasks", json=TASK)).json()
    answer = await http.post(f"/api/tasks/{task['id']}/messages", **body('{"text": "hi", "n": NaN}'))
    assert_error(answer, 400, "bad_request", "NaN")


@pytest.mark.parametrize(
    "budget",
    [{"max_usd": 1e300}, {"max_usd": 0}, {"max_turns": 2**63}, {"max_tokens": -1}, {"max_turns": 1.5}],
)
async def test_budget_numbers_must_be_finite_positive_and_storable(api, budget):
    _, http = api
    assert_error(
        await http.post("/api/tasks", json={**TASK, "budget": budget}), 422, "invalid_request", "budget"
    )


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\x9f"])
async def test_control_characters_in_a_prompt_are_refused(api, char):
    _, http = api
    refused = await http.post("/api/tasks", json={**TASK, "prompt": f"fix{char}it"})
    assert_error(refused, 422, "invalid_request", "prompt", f"U+{ord(char):04X}")
    branch = await http.post("/api/tasks", json={**TASK, "base_branch": f"ma{char}in"})
    assert_error(branch, 422, "invalid_request", "base_branch")
    assert (await http.get("/api/tasks")).json()["tasks"] == []


async def test_a_lone_surrogate_is_refused_though_it_is_valid_json(api):
    _, http = api
    refused = await http.post(
        "/api/tasks", **body('{"repo_url": "file:///repo", "prompt": "fix \\ud800 it"}')
    )
    assert_error(refused, 422, "invalid_request", "prompt")  # pydantic's words, or ours


async def test_control_characters_in_a_follow_up_are_refused(api):
    _, http = api
    task = (await http.post("/api/tasks", json=TASK)).json()
    for text_ in ("answer\x00", "\x1b[31mred", "\\ud83d alone"):
        raw = json.dumps({"text": text_}).replace("\\\\ud83d", "\\ud83d")
        refused = await http.post(f"/api/tasks/{task['id']}/messages", **body(raw))
        assert_error(refused, 422, "invalid_request", "text")
    accepted = await http.post(
        f"/api/tasks/{task['id']}/messages", json={"text": "tabs\tnew\nlines\r\nand 🙂 are fine"}
    )
    assert accepted.status_code == 202, accepted.text


PROMPT = "Fix add()\tplease\r\nit subtracts 🙂 (café, 日本語, zero\u200dwidth)\n\n- keep tests"


@pytest.mark.slow
def test_an_accepted_prompt_commits_and_pushes(tmp_path):
    bare = bare_repo(tmp_path)
    script = {
        "turns": [
            {"content": [FIX_CALC_EDIT]},
            {"content": [text("Fixed.\tDone\r\nwith 🙂")]},
        ]
    }
    with DaemonProcess(tmp_path / "data", script=script) as daemon:
        added = daemon.agentctl("user-add", "alice")
        assert added.returncode == 0, added.stderr
        headers = {"Authorization": f"Bearer {added.stdout.strip()}"}
        created = httpx2.post(
            f"{daemon.url}/api/tasks", headers=headers, json={"repo_url": str(bare), "prompt": PROMPT}
        )
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        tail = daemon.agentctl("--json", "tail", task_id, timeout=120)
        assert tail.returncode == 0, tail.stderr
        task = httpx2.get(f"{daemon.url}/api/tasks/{task_id}", headers=headers).json()
    assert task["status"] == "succeeded", task
    message = subprocess.run(
        ["git", "log", "-1", "--format=%B", task["branch"]],
        cwd=bare,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "it subtracts 🙂 (café, 日本語, zero\u200dwidth)" in message
