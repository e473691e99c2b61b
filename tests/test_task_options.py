"""Per-task options, end to end on the real daemon over real HTTP (issue 19): the model, from the
operator's allowlist with its price row; a draft pull request; the pull request's title.

The daemon runs Claude through its own wiring (``build_runner``: the real anthropic SDK) against
the fake Messages API, pushes over smart HTTP to a local bare repository and opens the pull
request on the fake GitHub API. Runs on both store backends (tests/backends.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio

from control.client import CommandRefused, ControlClient
from daemon.agent.factory import build_runner
from daemon.config import Settings, load_settings
from daemon.errors import ConfigError
from daemon.store import schema, sqlite_queries

from .agent_env import CLAUDE_KEY, tool_use
from .fakes.anthropic_api import FakeAnthropicAPI, MessageReply, message
from .fakes.github_api import FakeGitHubAPI
from .fakes.phone import Server, running_daemon
from .github_env import daemon_on_github
from .helpers import finished_after
from .test_control_cli import AGENTCTL, ENV, TIMEOUT

pytestmark = pytest.mark.slow

TOKEN = "ghp_taskoptions0123456789"
# The operator's own price row for a model no built-in row knows, USD per million tokens.
HOUSE_ROW = {
    "input_usd_per_mtok": 1.0,
    "output_usd_per_mtok": 2.0,
    "cache_write_usd_per_mtok": 3.0,
    "cache_read_usd_per_mtok": 0.5,
}
MODELS = {
    "model": "anthropic",
    "anthropic_api_key": CLAUDE_KEY,
    "anthropic_model": "claude-sonnet-5-5",
    "allowed_models": ("claude-haiku-4-5", "house-model"),
    "models": {"house-model": HOUSE_ROW},
}
# What each fake reply says it used: round figures, so the cost is plain to check.
USAGE = {
    "input_tokens": 100_000,
    "output_tokens": 10_000,
    "cache_creation_input_tokens": 20_000,
    "cache_read_input_tokens": 50_000,
}
HOUSE_COST_PER_CALL = (100_000 * 1.0 + 10_000 * 2.0 + 20_000 * 3.0 + 50_000 * 0.5) / 1e6  # 0.205
FIX = tool_use(
    "toolu_fix",
    "str_replace_based_edit_tool",
    command="str_replace",
    path="calc.py",
    old_str="a - b",
    new_str="a + b",
)


def fixing() -> list[MessageReply]:
    """A task's replies: fix calc.py, then say so."""
    return [message(FIX, usage=USAGE), message("Fixed add().", usage=USAGE)]


@dataclass
class Rig:
    server: Server
    claude: FakeAnthropicAPI
    github: FakeGitHubAPI
    repo_url: str
    token: str  # alice's API token


@asynccontextmanager
async def rig(tmp_path: Path, *replies: MessageReply) -> AsyncIterator[Rig]:
    """A daemon allowing ``MODELS`` whose runner is the one ``build_runner`` makes (Claude through
    the SDK, each call on its task's model, priced from its row) against the fake Messages API
    serving ``replies``; alice signed in, with a GitHub token; a repository on the fake GitHub."""
    claude = FakeAnthropicAPI(*replies, api_key=CLAUDE_KEY)
    async with trio.open_nursery() as nursery:
        models = {**MODELS, "anthropic_base_url": await nursery.start(claude.serve)}
        provider = build_runner(Settings(data_dir=tmp_path / "unused", **models)).provider
        async with daemon_on_github(tmp_path, provider, TOKEN, **models) as gh:
            yield Rig(gh.server, claude, gh.github, gh.repo_url, gh.token)
        nursery.cancel_scope.cancel()


async def test_a_task_runs_on_its_model_at_its_price_and_opens_a_draft_pr_with_its_title(tmp_path):
    """Model X goes to the Messages API on every call, a follow-up's too; each call is priced
    from X's row (the operator's); the pull request is a draft with the task's title."""
    async with rig(tmp_path, *fixing(), message("Nothing more to change.", usage=USAGE)) as r:
        async with r.server.client(r.token) as http:
            created = await http.post(
                "/api/tasks",
                json={
                    "repo_url": r.repo_url,
                    "prompt": "Fix add()\n\nThe test says 1 + 1 is 0.",
                    "model": "house-model",
                    "draft": True,
                    "pr_title": "  Make add() add  ",
                },
            )
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]
            assert created.json() | {"model": "house-model", "draft": True, "pr_title": "Make add() add"} == (
                created.json()
            )
            assert await finished_after(r.server.daemon.hub, task_id) == "succeeded"
            shown = (await http.get(f"/api/tasks/{task_id}")).json()
            follow_up = await http.post(f"/api/tasks/{task_id}/messages", json={"text": "Anything else?"})
            assert follow_up.status_code in (200, 202), follow_up.text
            after = follow_up.json()["event"]["seq"]
            assert await finished_after(r.server.daemon.hub, task_id, after) == "succeeded"
            events = await r.server.store.read_events(task_id)

    assert (shown["model"], shown["draft"], shown["pr_title"]) == ("house-model", True, "Make add() add")
    assert [request.body["model"] for request in r.claude.requests] == ["house-model"] * 3
    spent = [event.data for event in events if event.type == "agent.usage"]
    assert [data["cost_usd"] for data in spent] == pytest.approx([HOUSE_COST_PER_CALL] * 3)
    assert shown["usage"]["cost_usd"] == pytest.approx(2 * HOUSE_COST_PER_CALL)
    (pr,) = r.github.pulls
    assert (pr["title"], pr["draft"], pr["head"]) == ("Make add() add", True, shown["branch"])
    (opened,) = [request for request in r.github.requests if request.path.endswith("/pulls")]
    assert opened.method == "POST"


async def test_the_default_model_and_a_title_from_the_prompt(tmp_path):
    """Without options: the daemon's model at its built-in price, a ready (not draft) pull
    request titled with the prompt's first line that is not blank, trimmed."""
    async with rig(tmp_path, *fixing()) as r:
        async with r.server.client(r.token) as http:
            created = await http.post(
                "/api/tasks",
                json={"repo_url": r.repo_url, "prompt": "\n   Fix add(), please   \nIt subtracts."},
            )
            task_id = created.json()["id"]
            assert await finished_after(r.server.daemon.hub, task_id) == "succeeded"
            shown = (await http.get(f"/api/tasks/{task_id}")).json()

    assert (shown["model"], shown["draft"], shown["pr_title"]) == (
        "claude-sonnet-5-5",
        False,
        "Fix add(), please",
    )
    assert [request.body["model"] for request in r.claude.requests] == ["claude-sonnet-5-5"] * 2
    # Sonnet 5.5's built-in row: $2 / $10 per Mtok, cache writes 1.25x and reads 0.05x input.
    per_call = (100_000 * 2.0 + 10_000 * 10.0 + 20_000 * 2.5 + 50_000 * 0.1) / 1e6
    assert shown["usage"]["cost_usd"] == pytest.approx(2 * per_call)
    (pr,) = r.github.pulls
    assert (pr["title"], pr["draft"]) == ("Fix add(), please", False)


async def test_an_unlisted_model_or_a_bad_title_is_refused_naming_what_is_allowed(tmp_path):
    """The phone API answers 422 and the control socket refuses, naming the allowed models;
    nothing is created, and the model is never called."""
    async with rig(tmp_path) as r:
        async with r.server.client(r.token) as http:

            async def create(**options: Any):
                return await http.post("/api/tasks", json={"repo_url": r.repo_url, "prompt": "p", **options})

            refused = await create(model="claude-opus-4-1")
            assert refused.status_code == 422, refused.text
            said = refused.json()["error"]["message"]
            assert "'claude-opus-4-1' is not allowed" in said
            assert "claude-sonnet-5-5, claude-haiku-4-5, house-model" in said
            for bad in (
                {"pr_title": "two\nlines"},
                {"pr_title": "x" * 201},
                {"pr_title": "   "},
                {"draft": "yes"},
            ):
                answer = await create(**bad)
                assert answer.status_code == 422, (bad, answer.text)
            listed = (await http.get("/api/tasks")).json()["tasks"]
        async with await ControlClient.connect(r.server.daemon.settings.control_socket_path) as ctl:
            with pytest.raises(CommandRefused) as by_operator:
                await ctl.call("tasks.create", repo_url=r.repo_url, prompt="p", model="gpt-9")
    assert by_operator.value.code == "bad_arguments"
    assert "the allowed models are: claude-sonnet-5-5, claude-haiku-4-5, house-model" in str(
        by_operator.value
    )
    assert listed == [] and r.claude.requests == []


async def test_agentctl_create_sets_the_model_draft_and_title(tmp_path):
    async with rig(tmp_path, *fixing()) as r:
        socket = str(r.server.daemon.settings.control_socket_path)
        argv = ["--socket", socket, "create", r.repo_url, "Fix add()", "--model", "claude-haiku-4-5"]
        with trio.fail_after(TIMEOUT):
            done = await trio.run_process(
                [*AGENTCTL, *argv, "--draft", "--title", "Fix it"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=ENV,
            )
        assert done.returncode == 0, done.stderr
        task_id = done.stdout.decode().strip()
        assert await finished_after(r.server.daemon.hub, task_id) == "succeeded"
        task = await r.server.store.get_task(task_id)
    assert (task.model, task.draft, task.pr_title) == ("claude-haiku-4-5", True, "Fix it")
    assert {request.body["model"] for request in r.claude.requests} == {"claude-haiku-4-5"}
    assert [(pr["title"], pr["draft"]) for pr in r.github.pulls] == [("Fix it", True)]


async def test_the_client_config_offers_the_allowlist_with_prices(tmp_path):
    """GET /api/client-config (no token): the allowed models, the default first and marked,
    each with its price row: built in, or the operator's."""
    async with running_daemon(tmp_path, **MODELS) as server:
        async with server.client() as http:
            config = (await http.get("/api/client-config")).json()
    assert config["models"] == [
        {
            "id": "claude-sonnet-5-5",
            "default": True,
            "price": {
                "input_usd_per_mtok": 2.0,
                "output_usd_per_mtok": 10.0,
                "cache_write_usd_per_mtok": 2.5,
                "cache_read_usd_per_mtok": 0.1,
            },
        },
        {
            "id": "claude-haiku-4-5",
            "default": False,
            "price": {
                "input_usd_per_mtok": 1.0,
                "output_usd_per_mtok": 5.0,
                "cache_write_usd_per_mtok": 1.25,
                "cache_read_usd_per_mtok": 0.1,
            },
        },
        {"id": "house-model", "default": False, "price": HOUSE_ROW},
    ]


async def test_an_idempotency_key_replays_the_same_options_and_refuses_others(tmp_path):
    async with running_daemon(tmp_path, **MODELS) as server:
        _, token = await server.user("alice")
        async with server.client(token, headers={"Idempotency-Key": "k1"}) as http:

            async def create(**options: Any):
                body = {"repo_url": "file:///r", "prompt": "p", "model": "claude-haiku-4-5", **options}
                return await http.post("/api/tasks", json=body)

            first, again = await create(draft=True), await create(draft=True)
            other_model, other_draft = await create(model="house-model", draft=True), await create()
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
    assert other_model.status_code == other_draft.status_code == 409


async def test_the_scripted_model_allows_only_itself(tmp_path):
    async with running_daemon(tmp_path) as server:
        _, token = await server.user("alice")
        async with server.client(token) as http:
            config = (await http.get("/api/client-config")).json()
            created = await http.post(
                "/api/tasks", json={"repo_url": "file:///r", "prompt": "p", "model": "scripted"}
            )
            refused = await http.post(
                "/api/tasks", json={"repo_url": "file:///r", "prompt": "p", "model": "x"}
            )
    assert [(m["id"], m["default"]) for m in config["models"]] == [("scripted", True)]
    assert created.status_code == 201 and created.json()["model"] == "scripted"
    assert refused.status_code == 422 and "the allowed models are: scripted" in refused.text


async def test_the_options_are_stored_on_the_task(store, alice):
    """Both backends keep the options (schema v13); a task that names none has the defaults."""
    plain, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    chosen, _ = await store.create_task(
        user_id=alice.id, repo_url="file:///r", prompt="q", model="house-model", draft=True, pr_title="T"
    )
    assert (plain.model, plain.draft, plain.pr_title) == (None, False, None)
    for task in (chosen, await store.get_task(chosen.id)):
        assert (task.model, task.draft, task.pr_title) == ("house-model", True, "T")
    listed = {task.id: task for _, task in await store.list_tasks(user_id=alice.id)}
    assert (listed[chosen.id].draft, listed[plain.id].draft) == (True, False)


def test_a_model_without_a_price_row_is_a_config_error_at_start(tmp_path):
    config = tmp_path / "agentd.toml"
    config.write_text(
        'model = "anthropic"\nallowed_models = ["claude-haiku-4-5", "house-model"]\n'
        '[models."claude-haiku-4-5"]\ninput_usd_per_mtok = 0.5\noutput_usd_per_mtok = 2.5\n'
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(config_file=config, env={"ANTHROPIC_API_KEY": "k"})
    assert "allowed_models: model 'house-model' has no price row" in str(refused.value)
    assert '[models."house-model"]' in str(refused.value)
    config.write_text(
        config.read_text()
        + '[models."house-model"]\n'
        + "\n".join(f"{key} = {value}" for key, value in HOUSE_ROW.items())
    )
    settings = load_settings(config_file=config, env={"ANTHROPIC_API_KEY": "k"})
    prices = settings.model_prices()
    assert list(prices) == ["claude-sonnet-5-5", "claude-haiku-4-5", "house-model"]
    assert (prices["claude-haiku-4-5"].input, prices["claude-haiku-4-5"].cache_read) == (0.5, 0.05)
    assert json.loads(json.dumps(prices["house-model"].public())) == HOUSE_ROW


def test_a_task_made_before_v13_reads_with_no_options(tmp_path, monkeypatch):
    """SQLite: the columns v13 adds give a task already there no model (it runs on the daemon's
    default), no draft and no title of its own (its pull request is titled from its prompt)."""
    conn = apsw.Connection(str(tmp_path / "agentd.db"))
    before = [migration for migration in schema.MIGRATIONS if migration[0] < 13]
    with monkeypatch.context() as patched:
        patched.setattr(schema, "MIGRATIONS", before)
        patched.setattr(schema, "LATEST", before[-1][0])
        schema.migrate(conn)
    conn.execute("INSERT INTO users (login, created_at, updated_at) VALUES ('alice', 0, 0)")
    conn.execute(
        "INSERT INTO tasks (id, user_id, repo_url, prompt, status, created_at, updated_at) "
        "VALUES ('t1', 1, 'file:///r', 'p', 'queued', 0, 0)"
    )
    assert schema.migrate(conn) == before[-1][0]
    task = sqlite_queries.get_task(conn, "t1")
    assert task is not None and (task.model, task.draft, task.pr_title) == (None, False, None)
