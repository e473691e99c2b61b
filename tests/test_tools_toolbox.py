"""Toolbox dispatch, tool definitions, settings and the output cap helpers."""

from __future__ import annotations

import os

import pytest

import daemon.agent.tools as tools
from daemon.agent.tools import (
    TOOL_DEFINITIONS,
    Toolbox,
    ToolResult,
    ToolSettings,
    tool_definitions,
)
from daemon.agent.tools.base import HeadTail, cap_text
from daemon.errors import ConfigError


def test_tool_definitions_use_anthropic_schemas():
    by_name = {d["name"]: d for d in TOOL_DEFINITIONS}
    assert by_name["bash"] == {"type": "bash_20250124", "name": "bash"}
    assert by_name["str_replace_based_edit_tool"] == {
        "type": "text_editor_20250728",
        "name": "str_replace_based_edit_tool",
    }
    ask = by_name["ask_user"]
    assert ask["input_schema"]["required"] == ["question"]
    assert ask["input_schema"]["properties"]["question"]["type"] == "string"
    assert ask["description"]


def test_tool_definitions_copy_is_independent():
    copy = tool_definitions()
    copy[-1]["cache_control"] = {"type": "ephemeral"}
    assert "cache_control" not in TOOL_DEFINITIONS[-1]


def test_public_names_are_exported():
    for name in tools.__all__:
        assert hasattr(tools, name), name


async def test_unknown_tool_and_ask_user_are_tool_errors(tmp_path):
    async with Toolbox(tmp_path, ToolSettings(sandbox="off")) as tb:
        unknown = await tb.run("python", {"code": "1"})
        assert unknown.is_error and "Unknown tool 'python'" in unknown.output
        ask = await tb.run("ask_user", {"question": "which?"})
        assert ask.is_error and "agent loop" in ask.output
        bad = await tb.run("bash", ["ls"])  # type: ignore[arg-type]
        assert bad.is_error and "JSON object" in bad.output


async def test_aclose_is_idempotent_and_removes_the_temporary_home(tmp_path):
    tb = Toolbox(tmp_path, ToolSettings(sandbox="off"))
    home = (await tb.run("bash", {"command": "echo -n $HOME"})).output
    assert home.startswith("/") and home != str(tmp_path)
    await tb.aclose()
    await tb.aclose()
    assert not os.path.exists(home)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"command_timeout_s": 0}, "command_timeout_s"),
        ({"output_cap_bytes": 10}, "output_cap_bytes"),
        ({"sandbox": "maybe"}, "sandbox"),
        ({"max_processes": 3}, "max_processes"),
        ({"memory_bytes": 1000}, "memory_bytes"),
        ({"tmp_bytes": 0}, "tmp_bytes"),
        ({"uid_base": 0}, "uid_base"),
        ({"uid_count": -1}, "uid_count"),
    ],
)
def test_settings_are_validated(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        ToolSettings(**kwargs)


def test_results_and_settings_are_frozen():
    with pytest.raises(AttributeError):
        ToolResult("x").output = "y"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ToolSettings().sandbox = "off"  # type: ignore[misc]


def test_head_tail_keeps_both_ends_in_bounded_memory():
    buf = HeadTail(10)
    for _ in range(1000):
        buf.feed(b"abcdefghij")
    assert buf.total == 10_000
    assert buf.text() == "abcde\n[... 9990 bytes cut ...]\nfghij"
    assert len(buf._tail) <= 2 * 5 + 10


def test_head_tail_under_the_cap_is_unchanged():
    buf = HeadTail(100)
    buf.feed(b"hello ")
    buf.feed(b"world")
    assert buf.text() == "hello world"


def test_cap_text():
    assert cap_text("short", 300) == "short"
    capped = cap_text("a" * 500 + "b" * 500, 300)
    assert capped.startswith("a" * 150) and capped.endswith("b" * 150)
    assert "[... 700 bytes cut ...]" in capped
