"""Turning the editor tool's paths into names beneath the workspace, without touching the disk.

The lexical half of confinement: ``relative_parts`` decides which names below the workspace a
path means, refusing anything that climbs out. The other half, opening those names without
following a link, is ``fs_beneath``.
"""

from __future__ import annotations

import os


class PathError(ValueError):
    """A path the model gave that is not usable; the message is shown to the model."""


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def relative_parts(workspace: str, raw: object, *, alias: str | None = None) -> tuple[str, ...]:
    """The components of ``raw`` below ``workspace``; ``()`` is the workspace itself.

    ``workspace`` is the workspace's real path; ``alias`` the path it was given as, when that
    differs (it reaches the real one through a symlink), which is accepted too. ``raw`` may be
    relative to the workspace or absolute under it. ``..`` is resolved lexically, which is what
    the disk would do too because no link is ever followed (``a/..`` is the workspace whatever
    ``a`` is); a path that climbs out, or an absolute path elsewhere, raises ``PathError``.
    Pure string work: the result holds no ``.``, ``..`` or empty component.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise PathError("path must be a non-empty string")
    if "\x00" in raw:
        raise PathError("path must not contain NUL bytes")
    joined = raw if os.path.isabs(raw) else os.path.join(workspace, raw)
    lexical = os.path.normpath(joined)
    if not inside(lexical, workspace):
        if alias is not None and inside(lexical, os.path.normpath(alias)):
            lexical = workspace + lexical[len(os.path.normpath(alias).rstrip(os.sep)) :]
        else:
            raise PathError(
                f"{raw} is outside the workspace {workspace}; only paths inside it "
                "(relative to it, or absolute under it) can be used"
            )
    rest = lexical[len(workspace.rstrip(os.sep)) :]
    return tuple(part for part in rest.split(os.sep) if part)
