"""The agent's tools: ``bash`` and ``str_replace_based_edit_tool`` over one workspace.

Public surface: ``TOOL_DEFINITIONS`` (what the Messages API ``tools`` parameter gets; copy it
with ``tool_definitions()`` before adding ``cache_control``), ``Toolbox`` (one per running
task), ``TaskSandbox`` (one task's confinement: sandbox, uid, limits, for its tools and its
git), ``ToolResult``, ``ToolSettings``, the tool names, and ``probe_sandbox``.
"""

from .base import (
    ASK_USER_TOOL,
    BASH_TOOL,
    EDIT_TOOL,
    TOOL_DEFINITIONS,
    ToolResult,
    ToolSettings,
    tool_definitions,
)
from .sandbox import SandboxProbe, TaskSandbox, probe_sandbox
from .toolbox import Toolbox

__all__ = [
    "ASK_USER_TOOL",
    "BASH_TOOL",
    "EDIT_TOOL",
    "TOOL_DEFINITIONS",
    "SandboxProbe",
    "TaskSandbox",
    "ToolResult",
    "ToolSettings",
    "Toolbox",
    "probe_sandbox",
    "tool_definitions",
]
