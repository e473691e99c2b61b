"""What each control-socket command does (design §3, §7), on top of the daemon's parts."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from . import __version__
from .errors import AgentdError, NotFound
from .maintenance import collect_workspaces
from .states import TaskStatus
from .store import Task
from .tokens import hash_token, new_token

if TYPE_CHECKING:
    from .service import Daemon

TOKEN_TTL_S = 365 * 24 * 3600


class BadArguments(AgentdError):
    code = "bad_arguments"


MAX_INT = 2**63 - 1  # what the store can hold; beyond it SQLite cannot even compare


def _int_arg(args: dict[str, Any], name: str, default: int, *, low: int, high: int = MAX_INT) -> int:
    """``args[name]`` as a whole number in [low, high] (a number or its digits); ``default``
    when it is missing, empty or 0; anything else is ``BadArguments`` naming the argument."""
    value = args.get(name)
    if value is None or value == "" or value == 0:
        return default
    if not isinstance(value, bool) and isinstance(value, (int, str)):
        try:
            number = int(value)
        except ValueError:
            pass
        else:
            if low <= number <= high:
                return number
    raise BadArguments(f"{name} must be a whole number from {low} to {high}, got {value!r}")


def _str_arg(args: dict[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is None or isinstance(value, str):
        return value
    raise BadArguments(f"{name} must be a string, got {value!r}")


def _task_row(task: Task) -> dict[str, Any]:
    return task.public()


def make_handlers(daemon: "Daemon") -> dict[str, Callable[..., Any]]:
    """The command table; ``tasks.tail`` is an async generator (a streaming command)."""

    def parts():
        assert daemon.store is not None and daemon.supervisor is not None and daemon.hub is not None
        return daemon.store, daemon.supervisor, daemon.hub

    async def status(args: dict[str, Any]) -> dict[str, Any]:
        store, supervisor, _ = parts()
        counts = await store.count_by_status()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "phase": daemon.phase,
            "uptime_s": round(time.time() - daemon.started_at, 1),
            **supervisor.stats(),
            # Waiting to run anywhere (on a shared store, the whole cluster's queue).
            "queued": counts.get(TaskStatus.QUEUED.value, 0),
            "tasks": {status.value: counts.get(status.value, 0) for status in TaskStatus},
            "db_path": str(store.path),
            "db_size_bytes": store.size_bytes(),
            "http": daemon.http_urls,
            "model": daemon.settings.model_name,
            # The whole cluster as the store knows it (one node on SQLite).
            "nodes": [node.public(store.now()) for node in await store.list_nodes()],
        }

    async def tasks_list(args: dict[str, Any]) -> list[dict[str, Any]]:
        store, _, _ = parts()
        statuses = None
        if _str_arg(args, "status"):
            try:
                statuses = [TaskStatus(args["status"])]
            except ValueError:
                raise BadArguments(
                    f"unknown status {args['status']!r}; one of {', '.join(s.value for s in TaskStatus)}"
                ) from None
        user_id = None
        if _str_arg(args, "user"):
            user = await store.user_by_login(args["user"])
            if user is None:
                raise NotFound(f"no user {args['user']}")
            user_id = user.id
        limit = _int_arg(args, "limit", 100, low=1)
        rows = await store.list_tasks(user_id=user_id, statuses=statuses, limit=limit)
        return [_task_row(task) for _, task in rows]

    async def _task(args: dict[str, Any]) -> Task:
        store, _, _ = parts()
        task_id = _str_arg(args, "id")
        if not task_id:
            raise BadArguments("a task id is required")
        task = await store.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        return task

    async def tasks_get(args: dict[str, Any]) -> dict[str, Any]:
        return _task_row(await _task(args))

    async def tasks_cancel(args: dict[str, Any]) -> dict[str, Any]:
        _, supervisor, _ = parts()
        task = await _task(args)
        return _task_row(await supervisor.cancel(task.id))

    async def tasks_retry(args: dict[str, Any]) -> dict[str, Any]:
        _, supervisor, _ = parts()
        task = await _task(args)
        return _task_row(await supervisor.requeue(task.id, reason="retried by operator", fresh_attempts=True))

    async def tasks_tail(args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        _, _, hub = parts()
        task = await _task(args)
        after = _int_arg(args, "after", 0, low=0)
        if task.status.is_terminal and after >= task.last_seq:
            return  # it has ended, and there is nothing after `after` to show: follow nothing
        async for event in hub.follow(task.id, after):
            yield event.wire()
            if event.type == "task.finished":
                return

    async def drain(args: dict[str, Any]) -> dict[str, Any]:
        _, supervisor, _ = parts()
        supervisor.drain()
        return supervisor.stats()

    async def resume(args: dict[str, Any]) -> dict[str, Any]:
        _, supervisor, _ = parts()
        supervisor.resume()
        return supervisor.stats()

    async def concurrency_set(args: dict[str, Any]) -> dict[str, Any]:
        _, supervisor, _ = parts()
        try:
            limit = int(args.get("n"))  # type: ignore[arg-type]
            supervisor.set_concurrency(limit)
        except (TypeError, ValueError, OverflowError):
            raise BadArguments(f"concurrency must be a whole number >= 1, got {args.get('n')!r}") from None
        return supervisor.stats()

    async def users_list(args: dict[str, Any]) -> list[dict[str, Any]]:
        store, _, _ = parts()
        return [user.__dict__ for user in await store.list_users()]

    async def users_add(args: dict[str, Any]) -> dict[str, Any]:
        store, _, _ = parts()
        login = str(args.get("login") or "").strip()
        if not login or len(login) > 64 or not login.replace("-", "").replace("_", "").isalnum():
            raise BadArguments(f"invalid login {login!r}: letters, digits, '-' and '_' only")
        existing = await store.user_by_login(login)
        if (args.get("operator") and existing is not None and existing.github_id is not None
                and not existing.is_operator):
            # Whoever signed in with GitHub as `login` need not be who the operator thinks:
            # an operator account is reached by GitHub only when an operator names the id.
            raise BadArguments(
                f"{login} is the account of GitHub user id {existing.github_id}, made by a GitHub "
                f"sign-in; to make it an operator, confirm that id: agentctl user-link {login} "
                f"{existing.github_id} --operator")
        user = await store.upsert_user(login, is_operator=bool(args.get("operator")))
        token = new_token()
        await store.add_token(user.id, hash_token(token), expires_at=time.time() + TOKEN_TTL_S, label="agentctl")
        return {"login": user.login, "user_id": user.id, "token": token}

    async def users_link(args: dict[str, Any]) -> dict[str, Any]:
        """Link the account ``login`` to GitHub user ``github_id`` (``operator``: and make it
        an operator); the only way a GitHub sign-in reaches an account it did not make."""
        store, _, _ = parts()
        login = _str_arg(args, "login")
        github_id = _int_arg(args, "github_id", 0, low=1)
        if not login or not github_id or len(login) > 200 or "\x00" in login:
            raise BadArguments("user-link needs a login and a GitHub user id (a whole number)")
        user = await store.link_github(login, github_id, operator=bool(args.get("operator")))
        return {"login": user.login, "user_id": user.id, "github_id": user.github_id,
                "is_operator": user.is_operator}

    async def users_revoke(args: dict[str, Any]) -> dict[str, Any]:
        store, _, _ = parts()
        login = str(args.get("login") or "")
        revoked = await store.revoke_user(login)
        return {"login": login, "tokens_revoked": revoked}

    async def backup(args: dict[str, Any]) -> dict[str, Any]:
        store, _, _ = parts()
        path = Path(str(args.get("path") or ""))
        if not path.is_absolute():
            raise BadArguments("backup needs an absolute path")
        try:
            await store.backup(path)
        except (FileExistsError, OSError) as exc:
            raise BadArguments(f"backup to {path} failed: {exc}") from None
        return {"path": str(path), "size_bytes": path.stat().st_size}

    async def gc(args: dict[str, Any]) -> dict[str, Any]:
        store, _, _ = parts()
        removed = await collect_workspaces(
            store, daemon.settings.data_dir / "workspaces", daemon.settings.workspace_keep_days
        )
        return {"removed": removed, "keep_days": daemon.settings.workspace_keep_days}

    return {
        "gc": gc,
        "status": status,
        "tasks.list": tasks_list,
        "tasks.get": tasks_get,
        "tasks.cancel": tasks_cancel,
        "tasks.retry": tasks_retry,
        "tasks.tail": tasks_tail,
        "drain": drain,
        "resume": resume,
        "concurrency.set": concurrency_set,
        "users.list": users_list,
        "users.add": users_add,
        "users.revoke": users_revoke,
        "users.link": users_link,
        "backup": backup,
    }
