"""agentd: a self-hosted daemon that runs Claude coding agents for a phone app.

The public surface is what this module exports; everything else may change freely.
"""

__version__ = "0.1.0"

from .config import Settings, load_settings
from .errors import (
    AgentdError,
    ConfigError,
    Forbidden,
    InvalidTransition,
    NotFound,
    PermanentError,
    TransientError,
)
from .states import TaskStatus

__all__ = [
    "AgentdError",
    "ConfigError",
    "Forbidden",
    "InvalidTransition",
    "NotFound",
    "PermanentError",
    "Settings",
    "TaskStatus",
    "TransientError",
    "__version__",
    "load_settings",
]
