"""The SDK's own stream helper, as ``AnthropicProvider`` used it before its lean SSE parser.

``SdkStreamProvider.complete`` is the previous implementation, verbatim: ``messages.stream()``
(a pydantic object per SSE event, a message snapshot accumulated event by event) and
``get_final_message()``. It is kept only as the reference the lean parser is compared with
(``tests/test_anthropic_stream.py``) and measured against (``bench/model_turn_cpu.py``).

``complete_then_sdk_create``: a provider's request followed by the SDK's own ``create`` with the
same parameters, for a fake API to record both and a test to compare them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2

from daemon.agent.anthropic_provider import AnthropicProvider, _describe
from daemon.agent.model import (
    ModelReply,
    ModelRequest,
    Usage,
    cost_of,
    with_cache_breakpoints,
)
from daemon.errors import TransientError


class SdkStreamProvider(AnthropicProvider):
    name = "anthropic-sdk-stream"

    async def complete(
        self, request: ModelRequest, on_text_delta: Callable[[str], None] | None = None
    ) -> ModelReply:
        tools, system, messages = with_cache_breakpoints(request)
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": messages,
        }
        if system:
            params["system"] = system
        if tools:
            params["tools"] = tools
        try:
            async with self._client.messages.stream(**params) as stream:
                async for event in stream:
                    if on_text_delta is not None and event.type == "text":
                        on_text_delta(event.text)
                final = await stream.get_final_message()
        except anthropic.APIStatusError as err:
            raise self._status_error(err) from err
        except anthropic.APIConnectionError as err:  # includes APITimeoutError
            raise TransientError(self._redact(f"anthropic: {_describe(err)}")) from err
        except httpx2.TransportError as err:
            raise TransientError(self._redact(f"anthropic: response stream broke: {_describe(err)}")) from err

        if final.stop_reason is None:
            raise TransientError("anthropic: the response stream ended before the message was complete")
        model = final.model or self.model
        u = final.usage
        usage = Usage(
            input_tokens=u.input_tokens or 0,
            output_tokens=u.output_tokens or 0,
            cache_read_tokens=u.cache_read_input_tokens or 0,
            cache_write_tokens=u.cache_creation_input_tokens or 0,
        )
        usage = dataclasses.replace(usage, cost_usd=cost_of(model, usage))
        content = [
            {k: v for k, v in block.to_dict(mode="json").items() if v is not None} for block in final.content
        ]
        return ModelReply(content=content, stop_reason=final.stop_reason, usage=usage, model=model)


async def complete_then_sdk_create(
    provider: AnthropicProvider, request: ModelRequest, *, beta: bool = False, **more: Any
) -> None:
    """``provider.complete(request)``, then the SDK's own streaming ``create`` (``beta``: the
    ``client.beta.messages`` one) with the same parameters and ``more``, its answer read whole:
    the API the provider points at gets the provider's request, then the SDK's. The provider is
    closed at the end, however it ends."""
    try:
        await provider.complete(request)
        tools, system, messages = with_cache_breakpoints(request)
        sdk = provider._client.beta.messages if beta else provider._client.messages
        async with sdk.with_streaming_response.create(
            model=provider.model,
            max_tokens=request.max_tokens,
            messages=messages,
            system=system,
            tools=tools,
            stream=True,
            **more,
        ) as response:
            await response.http_response.aread()
    finally:
        await provider.aclose()
