"""git for agentd: validated remotes, per-task workspaces, pushes, pull requests.

The public surface is re-exported here; the modules behind it may change freely.
"""

from daemon.git.disk import workspace_dirs
from daemon.git.github import PullRequest, open_pull_request
from daemon.git.process import GitAuth, classify_git_error, run_git
from daemon.git.push import PushResult, commit_and_push
from daemon.git.remote import GitHubRepo, Remote, parse_remote, redact
from daemon.git.workspace import (
    ClonePolicy,
    CloneRequest,
    Workspace,
    branch_name,
    check_quota,
    gc_workspaces,
    prepare_workspace,
    workspace_size,
)

__all__ = [
    "ClonePolicy",
    "CloneRequest",
    "GitAuth",
    "GitHubRepo",
    "PullRequest",
    "PushResult",
    "Remote",
    "Workspace",
    "branch_name",
    "check_quota",
    "classify_git_error",
    "commit_and_push",
    "gc_workspaces",
    "open_pull_request",
    "parse_remote",
    "prepare_workspace",
    "redact",
    "run_git",
    "workspace_dirs",
    "workspace_size",
]
