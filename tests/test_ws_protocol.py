"""The ``/ws`` protocol's models (``daemon/web/ws_protocol.py``) are what the README documents,
what the session accepts, and what it sends."""

from __future__ import annotations

import json
from typing import Annotated, Union, get_args

import trio
from pydantic import Field, TypeAdapter

from daemon.store import NewEvent
from daemon.web import ws_protocol
from daemon.web.ws_protocol import CLIENT_MESSAGES, CLOSE_CODES, ERROR_CODES, SERVER_MESSAGES, CloseCode

from .test_ws_session import drain, make_session

ServerMessage = TypeAdapter(Annotated[Union[SERVER_MESSAGES], Field(discriminator="type")])  # noqa: UP007


def test_the_readme_ws_section_is_what_the_models_render():
    text = ws_protocol.README.read_text()
    start, end = text.index(ws_protocol.BEGIN), text.index(ws_protocol.END) + len(ws_protocol.END)
    assert text[start:end] == ws_protocol.readme_section(), (
        "README.md's /ws section is out of date: run "
        ".venv/bin/python -m daemon.web.ws_protocol --write-readme"
    )


def test_every_error_and_close_code_is_described():
    assert set(get_args(ws_protocol.ErrorCode)) == set(ERROR_CODES)
    assert set(CLOSE_CODES) == set(CloseCode)


def take_all(session, sent: list[dict]) -> None:
    while session.queue:
        sent.append(json.loads(session.take()[1]))


async def test_the_session_takes_every_client_message_and_sends_only_documented_ones(
    store, hub, alice, autojump_clock
):
    task, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    minimal = {
        "auth": {"token": "good"},
        "subscribe": {"task_id": task.id},
        "unsubscribe": {"task_id": task.id},
    }
    sent: list[dict] = []
    async with trio.open_nursery() as nursery:
        session, _ = await make_session(nursery, store, hub, alice, queue_limit=8)
        for model in CLIENT_MESSAGES:  # each valid as its model says, and understood
            kind = get_args(model.model_fields["type"].annotation)[0]
            message = {"type": kind, **minimal.get(kind, {})}
            model.model_validate(message)
            await session.handle(json.dumps(message))
        await session.handle(json.dumps({"type": "subscribe", "task_id": task.id, "after": True}))
        await session.handle(json.dumps({"type": "nope"}))
        await session.handle(json.dumps({"type": "subscribe", "task_id": task.id, "after": 1}))
        await session.handle(json.dumps({"type": "subscribe_tasks"}))
        await drain(session, sent, stop_after_seq=2)  # then the subscription is live
        await store.append_events(task.id, [NewEvent("agent.text", {"i": i}) for i in range(20)])
        take_all(session, sent)  # overflowed: a resync for the task and one for the tasks feed
        nursery.cancel_scope.cancel()
    kinds = [ServerMessage.validate_python(message).type for message in sent]
    assert kinds == ["error", "pong", "error", "error", "event", "resync", "resync"], sent
    assert [m["code"] for m in sent if m["type"] == "error"] == [
        "already_authenticated",
        "invalid_message",
        "unknown_type",
    ]
