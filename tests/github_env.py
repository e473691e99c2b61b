"""The real daemon over real HTTP with its tasks' repository on a GitHub-like remote: real git
over smart HTTP (``GitHttpServer``: acme/calc, ``BUGGY_PROJECT`` on main) and the fake GitHub
API; alice signed in, her GitHub token stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from daemon.agent.loop import AgentRunner, AgentSettings
from daemon.agent.model import ModelProvider

from .agent_env import BUGGY_PROJECT, agent_settings
from .fakes.git_http import GitHttpServer, make_bare_repo
from .fakes.github_api import FakeGitHubAPI
from .fakes.phone import Server, running_daemon


@dataclass
class OnGitHub:
    server: Server
    github: FakeGitHubAPI
    repo_url: str  # acme/calc over smart HTTP: a task's repo_url
    bare: Path  # that repository's directory
    settings: AgentSettings  # the agent runner's
    token: str  # alice's API token


@asynccontextmanager
async def daemon_on_github(
    tmp_path: Path, provider: ModelProvider, github_token: str, **daemon_settings: Any
) -> AsyncIterator[OnGitHub]:
    """A daemon whose agent runner runs ``provider`` with ``github_token`` as every user's
    GitHub token (the one the git server and the fake API accept); ``daemon_settings``: more of
    the daemon's ``Settings``. On exit the daemon stops and the servers close."""
    served = tmp_path / "served"
    bare = make_bare_repo(served / "acme", "calc.git", branches={"main": BUGGY_PROJECT})
    git_server = GitHttpServer(served, username="x-access-token", token=github_token)
    github = FakeGitHubAPI(github_token, web_base="http://127.0.0.1")

    async def token_for(user_id: int) -> str:
        return github_token

    async with trio.open_nursery() as nursery:
        git_url = await nursery.start(git_server.serve)
        api_url = await nursery.start(github.serve)
        github_at = {"github_api": api_url, "github_web_host": "127.0.0.1"}
        # Workspaces where the daemon's own routes (a task's diff) look for them: in its data dir.
        settings = agent_settings(tmp_path / "data", **github_at)
        runner = AgentRunner(provider, settings, github_token=token_for)
        async with running_daemon(tmp_path, runner, **github_at, **daemon_settings) as server:
            alice, token = await server.user("alice")
            await server.store.set_github_token(alice.id, server.daemon.secrets.encrypt(github_token))
            yield OnGitHub(server, github, f"{git_url}/acme/calc.git", bare, settings, token)
        nursery.cancel_scope.cancel()
