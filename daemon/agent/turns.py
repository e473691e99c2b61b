"""One model turn of the agent loop: the call, asked again until it gives a turn to store.

A turn is asked again, never the same request twice, when:

- the reply was cut off by the output limit inside a tool call: with twice the ``max_tokens``,
  up to ``max_output_tokens_limit`` (at the limit the turn is stored without the unfinished
  call and the model told, in ``CUT_OFF``, to go on in smaller steps);
- the API said the prompt is too long (``PromptTooLong``), or it is over the compaction
  trigger: the turns before the last exchange are summarized first, at most
  ``MAX_COMPACTIONS`` times per turn (then the task fails with ``context_exhausted``);
- the API refused mode "api"'s context management for the model
  (``ContextManagementRefused``): the task's model takes the client path from then on, for
  every task (``ContextKeeper.fall_back``), once per turn at most.

Every call's usage counts, whether its turn is stored or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import PermanentError
from ..store import NewEvent, Store, Task, Usage
from ..supervisor import RunContext
from . import conversation as conv
from .context_keeper import ContextKeeper, Prepared
from .context_window import COMPACTED, ContextManagementRefused, PromptTooLong
from .model import ModelReply, ModelRequest

if TYPE_CHECKING:
    from .loop import AgentRunner

__all__ = ["CUT_OFF", "MAX_COMPACTIONS", "ModelTurns"]

MAX_COMPACTIONS = 2  # per model turn

CUT_OFF = """\
[agentd] Your last reply was cut off by the output limit inside a tool call, so that call was \
dropped. Continue, in smaller steps (e.g. write a large file in several edits)."""


class ModelTurns:
    """The model's side of an attempt (``loop._Session``): its turns and its compactions, and
    how a turn is stored (``_append``, the session's too)."""

    runner: AgentRunner
    ctx: RunContext
    store: Store
    task: Task
    turns: list[dict[str, Any]]
    usage: Usage
    budget: conv.Budget
    system: str
    tools: list[dict[str, Any]]
    context: ContextKeeper
    notes: list[str]

    async def _append(
        self,
        role: str,
        content: list[dict[str, Any]],
        stop_reason: str | None = None,
        usage: Usage | None = None,
        events: Sequence[NewEvent] = (),
    ) -> None:
        """Add a turn to the conversation, with the usage and events to commit with it."""
        await self.store.append_message(
            self.task.id, role, content, stop_reason=stop_reason, usage=usage, events=events
        )
        turn: dict[str, Any] = {"role": role, "content": content}
        if stop_reason is not None:
            turn["stop_reason"] = stop_reason
        self.turns.append(turn)

    async def _model_turn(self) -> None:
        """One assistant turn, stored with its usage (see the module's docstring).

        Cancellation: the model call is abandoned; what was stored before it stays.
        """
        s = self.runner.settings
        assistant_turns = sum(1 for t in self.turns if t["role"] == "assistant")
        max_tokens = s.max_output_tokens
        compactions = 0  # a turn that still does not fit after two compactions fails, said so
        fell_back = False
        while True:
            conv.check_budget(self.budget, assistant_turns, self.usage)
            prepared = self.context.prepare(self.system, self.tools, self.turns)
            try:
                if compactions < MAX_COMPACTIONS and self.context.wants_compaction(prepared):
                    compactions += 1
                    await self._compact(prepared, "over the compaction trigger")
                    continue
                reply = await self._call(prepared, max_tokens)
            except PromptTooLong as err:  # compacted and asked again: never the task's end by itself
                compactions += 1
                if compactions > MAX_COMPACTIONS:
                    raise PermanentError(
                        f"{err.message} (after compacting)", code="context_exhausted"
                    ) from err
                await self._compact(prepared, err.message)
                continue
            except ContextManagementRefused as err:  # the client path from now on; asked again
                if fell_back:  # refused without context management sent: not a fallback's to mend
                    raise
                self.context.fall_back(err.model)
                fell_back = True
                continue
            self.usage = self.usage + reply.usage
            spent = {**reply.usage.__dict__, "model": reply.model, "stop_reason": reply.stop_reason}
            if prepared.cleared_tokens or reply.context_edits:  # what was left out of the context
                spent.update(cleared_tokens=prepared.cleared_tokens, context_edits=list(reply.context_edits))
            if not reply.cut_tool_use or max_tokens >= s.max_output_tokens_limit:
                break
            max_tokens = min(max_tokens * 2, s.max_output_tokens_limit)
            # The cut turn is dropped, what it cost is not: budgets see every call.
            spent["retry_max_tokens"] = max_tokens
            await self.ctx.store.update_task(
                self.task.id, usage=self.usage, events=[NewEvent("agent.usage", spent)]
            )
        content = reply.content
        if reply.cut_tool_use:
            self.notes.append(CUT_OFF)
            # The API takes no empty assistant turn; what the model is told is in CUT_OFF.
            content = content or conv.text_blocks(["(cut off by the output limit)"])
        events = [
            NewEvent("agent.text", {"text": block["text"]})
            for block in content
            if block.get("type") == "text" and block["text"].strip()
        ]
        events.append(NewEvent("agent.usage", spent))
        # The turn, the task's usage so far and the turn's events: one commit.
        await self._append(
            "assistant", content, stop_reason=reply.stop_reason, usage=self.usage, events=events
        )

    async def _call(self, prepared: Prepared, max_tokens: int) -> ModelReply:
        request = ModelRequest(
            system=self.system,
            tools=self.tools,
            messages=prepared.messages,
            max_tokens=max_tokens,
            model=self.task.model,  # the task's own (a follow-up keeps it); None: the default
        )
        return await self.runner.provider.complete(
            request, on_text_delta=lambda text: self.ctx.emit_ephemeral("agent.text_delta", {"text": text})
        )

    async def _compact(self, prepared: Prepared, reason: str) -> None:
        """Store a summary of the turns before the last exchange (``ContextKeeper.compact``)."""
        done = await self.context.compact(self.system, self.tools, prepared, self.task.model, reason)
        self.usage = self.usage + done.usage
        spent = {**done.usage.__dict__, "model": done.model, "compaction": reason, "covered": done.covered}
        event = NewEvent("agent.usage", spent)
        await self._append("user", done.content, stop_reason=COMPACTED, usage=self.usage, events=[event])
