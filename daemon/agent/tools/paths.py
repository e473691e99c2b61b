"""Resolving the editor tool's paths inside the workspace, and nowhere else."""

from __future__ import annotations

import os


class PathError(ValueError):
    """A path the model gave that is not usable; the message is shown to the model."""


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_in_workspace(workspace: str, raw: str, *, alias: str | None = None) -> str:
    """The real (symlink-free) absolute path for ``raw``, which must stay inside ``workspace``.

    ``workspace`` is the workspace's real path; ``alias`` the path it was given as, when that
    differs (it reaches the real one through a symlink), which is accepted too. ``raw`` may be
    relative to the workspace or absolute. Refused, with a message for the model: ``..`` that
    climbs out, absolute paths elsewhere, and symlinks at any component (the last included)
    that lead outside. Blocking (touches the disk): call it from a worker thread.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise PathError("path must be a non-empty string")
    if "\x00" in raw:
        raise PathError("path must not contain NUL bytes")
    joined = raw if os.path.isabs(raw) else os.path.join(workspace, raw)
    lexical = os.path.normpath(joined)
    if not inside(lexical, workspace):
        if alias is not None and inside(lexical, alias):
            lexical = workspace + lexical[len(alias.rstrip(os.sep)) :]
        else:
            raise PathError(
                f"{raw} is outside the workspace {workspace}; only paths inside it "
                "(relative to it, or absolute under it) can be used"
            )
    # realpath resolves every symlink in the existing part of the path, including a final
    # (possibly dangling) one, so a link anywhere that points out is caught here.
    real = os.path.realpath(lexical)
    if not inside(real, workspace):
        raise PathError(
            f"{raw} leads through a symbolic link to {real}, outside the workspace {workspace}; "
            "refused"
        )
    return real
