"""The control socket's commands (design §3, §7): parse the arguments, call one use case,
render its result as JSON. Every caller the socket admits is an operator
(``usecases.CONTROL_OPERATOR``); it names tasks by their id or a unique prefix of it
(``usecases.IdPrefix``), and tasks are shown with their owner's login (``user_login``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import usecases
from .control_server import Handler
from .errors import BadArguments
from .services import Runtime, Services
from .states import TaskStatus
from .store import Task
from .usecases import CONTROL_OPERATOR as OPERATOR, IdPrefix, notify, shares
from .usecases.inputs import MAX_INT

Args = dict[str, Any]


def _int_arg(args: Args, name: str, default: int, *, low: int, high: int = MAX_INT) -> int:
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


def _str_arg(args: Args, name: str) -> str | None:
    value = args.get(name)
    if value is None or isinstance(value, str):
        return value
    raise BadArguments(f"{name} must be a string, got {value!r}")


def _status_arg(args: Args) -> TaskStatus | None:
    value = _str_arg(args, "status")
    if not value:
        return None
    try:
        return TaskStatus(value)
    except ValueError:
        raise BadArguments(
            f"unknown status {value!r}; one of {', '.join(s.value for s in TaskStatus)}"
        ) from None


def _task_id(args: Args) -> IdPrefix:
    task_id = _str_arg(args, "id")
    if not task_id:
        raise BadArguments("a task id is required")
    return IdPrefix(task_id)


class ControlHandlers:
    """One method a command; ``tasks_tail`` is an async generator (a streaming command)."""

    def __init__(self, services: Services, runtime: Runtime) -> None:
        self.svc = services
        self.runtime = runtime

    def table(self) -> dict[str, Handler]:
        """The command table for ``ControlServer``."""
        return {
            "gc": self.gc,
            "compact": self.compact,
            "keys.rotate": self.keys_rotate,
            "status": self.status,
            "tasks.list": self.tasks_list,
            "tasks.create": self.tasks_create,
            "tasks.get": self.tasks_get,
            "tasks.cancel": self.tasks_cancel,
            "tasks.retry": self.tasks_retry,
            "tasks.review": self.tasks_review,
            "tasks.tail": self.tasks_tail,
            "drain": self.drain,
            "resume": self.resume,
            "concurrency.set": self.concurrency_set,
            "users.list": self.users_list,
            "users.add": self.users_add,
            "users.revoke": self.users_revoke,
            "users.link": self.users_link,
            "backup": self.backup,
            **notify_handlers(self.svc),
            **share_handlers(self.svc),
        }

    async def status(self, args: Args) -> Args:
        return await usecases.daemon_status(self.svc, self.runtime)

    async def _shown(self, *tasks: Task) -> list[Args]:
        """Tasks as agentctl shows them: with their owner's login."""
        return await usecases.with_owner_logins(self.svc, tasks)

    async def tasks_list(self, args: Args) -> list[Args]:
        page = await usecases.list_tasks(
            self.svc,
            OPERATOR,
            status=_status_arg(args),
            owner=_str_arg(args, "user") or None,
            limit=_int_arg(args, "limit", 100, low=1),
        )
        return await self._shown(*page.tasks)

    async def tasks_create(self, args: Args) -> Args:
        budget = args.get("budget") or {}
        if not isinstance(budget, dict):
            raise BadArguments(
                f"budget must be an object of caps (max_turns, max_tokens, max_usd), got {budget!r}"
            )
        created = await usecases.create_task(
            self.svc,
            OPERATOR,
            _str_arg(args, "repo_url") or "",
            _str_arg(args, "prompt") or "",
            base_branch=_str_arg(args, "base_branch") or None,
            budget=budget,
            owner=_str_arg(args, "user") or None,
            model=_str_arg(args, "model") or None,
            draft=args.get("draft") or False,  # create_task refuses a non-bool
            pr_title=_str_arg(args, "pr_title"),
        )
        return (await self._shown(created.task))[0]

    async def tasks_get(self, args: Args) -> Args:
        return (await self._shown(await usecases.get_task(self.svc, OPERATOR, _task_id(args))))[0]

    async def tasks_cancel(self, args: Args) -> Args:
        return (await self._shown(await usecases.cancel_task(self.svc, OPERATOR, _task_id(args))))[0]

    async def tasks_retry(self, args: Args) -> Args:
        return (await self._shown(await usecases.retry_task(self.svc, OPERATOR, _task_id(args))))[0]

    async def tasks_review(self, args: Args) -> Args:
        done = await usecases.review_task(self.svc, OPERATOR, _task_id(args))
        return (await self._shown(done.task))[0]

    async def tasks_tail(self, args: Args) -> AsyncIterator[Args]:
        task_id, after = _task_id(args), _int_arg(args, "after", 0, low=0)
        async for event in usecases.follow_task(self.svc, OPERATOR, task_id, after):
            yield event.wire()

    async def drain(self, args: Args) -> Args:
        return usecases.drain(self.svc)

    async def resume(self, args: Args) -> Args:
        return usecases.resume(self.svc)

    async def concurrency_set(self, args: Args) -> Args:
        try:
            limit = int(args.get("n"))  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            raise BadArguments(f"concurrency must be a whole number >= 1, got {args.get('n')!r}") from None
        return usecases.set_concurrency(self.svc, limit)

    async def users_list(self, args: Args) -> list[Args]:
        return [asdict(user) for user in await usecases.list_users(self.svc)]

    async def users_add(self, args: Args) -> Args:
        added = await usecases.add_user(
            self.svc, str(args.get("login") or ""), operator=bool(args.get("operator"))
        )
        return asdict(added)

    async def users_link(self, args: Args) -> Args:
        user = await usecases.link_user(
            self.svc,
            _str_arg(args, "login") or "",
            _int_arg(args, "github_id", 0, low=1),
            operator=bool(args.get("operator")),
        )
        return {
            "login": user.login,
            "user_id": user.id,
            "github_id": user.github_id,
            "is_operator": user.is_operator,
        }

    async def users_revoke(self, args: Args) -> Args:
        login = str(args.get("login") or "")
        return {"login": login, "tokens_revoked": await usecases.revoke_user(self.svc, login)}

    async def backup(self, args: Args) -> Args:
        path = Path(str(args.get("path") or ""))
        return {"path": str(path), "size_bytes": await usecases.backup(self.svc, path)}

    async def gc(self, args: Args) -> Args:
        return {"removed": await usecases.gc(self.svc), "keep_days": self.svc.settings.workspace_keep_days}

    async def compact(self, args: Args) -> Args:
        return await usecases.compact(self.svc, full=args.get("full") is True)

    async def keys_rotate(self, args: Args) -> Args:
        return await usecases.rotate_keys(self.svc)


def notify_handlers(svc: Services) -> dict[str, Handler]:
    """Webhooks, ntfy topics and deliveries (``usecases.notify``), all users' and operator-wide."""

    def shown(target: Any) -> Args:
        return {**target.public(), "events": ",".join(target.events)}

    async def webhooks_list(args: Args) -> list[Args]:
        return [shown(t) for t in await notify.list_targets(svc, OPERATOR)]

    async def webhooks_add(args: Args) -> Args:
        events = args.get("events")
        made = await notify.add_webhook(svc, OPERATOR, str(args.get("url") or ""), events, operator_wide=True)
        return {**shown(made.target), "secret": made.secret}

    async def webhooks_remove(args: Args) -> Args:
        await notify.remove_target(svc, OPERATOR, str(args.get("id") or ""))
        return {"removed": args.get("id")}

    async def webhooks_test(args: Args) -> Args:
        return (await notify.send_test(svc, OPERATOR, str(args.get("id") or ""))).public()

    async def deliveries_list(args: Args) -> list[Args]:
        found = await notify.list_deliveries(
            svc,
            OPERATOR,
            status=_str_arg(args, "status"),
            target_id=_str_arg(args, "target"),
            limit=_int_arg(args, "limit", 50, low=1, high=500),
        )
        return [d.public() for d in found]

    async def deliveries_redeliver(args: Args) -> Args:
        return (await notify.redeliver(svc, OPERATOR, str(args.get("id") or ""))).public()

    return {
        "webhooks.list": webhooks_list,
        "webhooks.add": webhooks_add,
        "webhooks.remove": webhooks_remove,
        "webhooks.test": webhooks_test,
        "deliveries.list": deliveries_list,
        "deliveries.redeliver": deliveries_redeliver,
    }


def share_handlers(svc: Services) -> dict[str, Handler]:
    """Share links of any task (``usecases.shares``); a new link's token is shown once. A link
    revoked here closes its open WebSockets at once, on every daemon (``Services.revoked``)."""

    def shown(link: Any) -> Args:
        return link.public(svc.store.now())

    async def shares_create(args: Args) -> Args:
        ttl = args.get("ttl_s")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))):
            raise BadArguments(f"ttl_s must be a number of seconds, got {ttl!r}")
        made = await shares.create_share(svc, OPERATOR, _task_id(args), ttl_s=ttl)
        base = svc.settings.public_url
        return {
            **shown(made.link),
            "token": made.token,
            "url": shares.client_url(base, made.token) if base else None,
        }

    async def shares_list(args: Args) -> list[Args]:
        return [shown(link) for link in await shares.list_shares(svc, OPERATOR, _task_id(args))]

    async def shares_revoke(args: Args) -> Args:
        return shown(await shares.revoke_share(svc, OPERATOR, None, str(args.get("id") or "")))

    return {"shares.create": shares_create, "shares.list": shares_list, "shares.revoke": shares_revoke}


def make_handlers(services: Services, runtime: Runtime) -> dict[str, Handler]:
    """The control socket's command table on these services."""
    return ControlHandlers(services, runtime).table()
