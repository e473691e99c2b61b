"""Admission, retries and the task lifecycle."""

from .retry import Backoff
from .runner import NoopRunner, RunContext, RunResult, RunStatus, TaskRunner
from .supervisor import Supervisor

__all__ = ["Backoff", "NoopRunner", "RunContext", "RunResult", "RunStatus", "Supervisor", "TaskRunner"]
