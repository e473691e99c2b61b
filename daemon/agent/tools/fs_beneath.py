"""Files beneath a directory fd, reached without ever following a link or opening a special file.

The workspace is hostile: the agent can turn any directory into a symbolic link (or back) at
any moment, and make FIFOs, sockets and, as root, device nodes. Checking a path and then
opening it by name races with that, so every name here is resolved relative to a directory
fd, one that is itself beneath the workspace:

- a directory path is opened with ``openat2(2)`` and ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
  RESOLVE_NO_MAGICLINKS`` where the kernel has it (Linux >= 5.6), else component by component
  with ``O_NOFOLLOW | O_DIRECTORY`` from the fd of the one before; a link anywhere refuses;
- the last component is checked with ``fstatat(AT_SYMLINK_NOFOLLOW)`` so that special files
  are refused without being opened, then opened with ``O_NOFOLLOW | O_NONBLOCK | O_NOCTTY``
  (so an open never blocks, even if a FIFO was swapped in meanwhile) and checked again with
  ``fstat``, which is what decides;
- a write goes to a new temporary file (``O_EXCL | O_NOFOLLOW``) in the target's directory fd,
  renamed over the target with ``renameat``: the rename is the commit point, it replaces the
  directory entry itself, and nothing ever writes through an existing name.

Every function here blocks on the disk: call them from a worker thread. Errors meant for the
model are ``PathError`` (their message names the offending path below the workspace); other
``OSError``s (``FileNotFoundError`` first of all) are left to the caller to phrase.
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import platform
import secrets
import stat
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .paths import PathError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
# openat2 has the same number in the generic syscall table (aarch64) and on x86_64; other
# machines use the component walk rather than a guessed number.
_SYS_OPENAT2 = {"x86_64": 437, "amd64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine().lower())

# None: openat2 when the kernel has it. Tests set False to exercise the component walk.
use_openat2: bool | None = None

# O_PATH: enough to resolve names beneath it, no read permission needed, no side effect.
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_TEMP_PREFIX = ".agentd-edit-"
_CHUNK = 1 << 20

Check = Callable[[], None]


def open_root(path: str) -> int:
    """A directory fd for the workspace itself (a trusted path the daemon chose)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_dir(root_fd: int, parts: Sequence[str], *, create: bool = False, full: str | None = None) -> int:
    """An ``O_PATH`` fd of the directory ``parts`` beneath ``root_fd``; the caller closes it.

    ``parts`` are plain names (no ``.``, ``..``, empty or ``/``), as ``paths.relative_parts``
    gives them. With ``create``, missing directories are made (mode 0755), each one with
    ``mkdirat`` in the fd of its parent. Raises ``PathError`` when a component is a symbolic
    link or not a directory (``full``, the path the caller is after, is named in the message),
    ``FileNotFoundError`` when one is missing and ``create`` is false.
    """
    if not parts:
        return os.open(".", _DIR_FLAGS, dir_fd=root_fd)
    if _have_openat2():
        try:
            return _openat2(root_fd, "/".join(parts), _DIR_FLAGS, _RESOLVE)
        except OSError:
            # The walk says precisely what is wrong (or succeeds, if the path changed since).
            pass
    return _walk(root_fd, parts, create, full or "/".join(parts))


def lstat(dir_fd: int, name: str) -> os.stat_result | None:
    """The entry ``name`` in ``dir_fd`` itself (a link is not followed), or None if missing."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def refuse_special(st: os.stat_result, display: str) -> None:
    """Raise ``PathError`` unless ``st`` is a regular file or a directory."""
    mode = st.st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    if stat.S_ISLNK(mode):
        raise PathError(_link_message(display, display))
    kind = (
        "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a unix socket"
        if stat.S_ISSOCK(mode)
        else "a character device"
        if stat.S_ISCHR(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "not a regular file"
    )
    raise PathError(
        f"{display} is {kind}; the editor reads and writes regular files only (inspect it with bash)"
    )


def open_entry(dir_fd: int, name: str, *, display: str) -> tuple[int, os.stat_result]:
    """Open ``name`` in ``dir_fd`` for reading: a regular file or a directory, nothing else.

    Returns the fd (the caller closes it) and its ``fstat``. Links, FIFOs, sockets and devices
    raise ``PathError``; a missing entry ``FileNotFoundError``. Never blocks on the open.
    """
    before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    refuse_special(before, display)
    flags = _READ_FLAGS | (os.O_DIRECTORY if stat.S_ISDIR(before.st_mode) else 0)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EISDIR):
            raise PathError(f"{display} changed while it was being opened; try again") from None
        raise
    try:
        after = os.fstat(fd)
        refuse_special(after, display)  # what was opened is what counts
    except BaseException:
        os.close(fd)
        raise
    return fd, after


def open_child_dir(dir_fd: int, name: str) -> int | None:
    """A readable fd of the subdirectory ``name`` (for listing), or None if it is not one now."""
    try:
        return os.open(name, _READ_FLAGS | os.O_DIRECTORY, dir_fd=dir_fd)
    except OSError:
        return None


def read_chunk(fd: int, size: int) -> bytes:
    """One ``read(2)``; every read of file content goes through here."""
    return os.read(fd, size)


def read_at_most(fd: int, limit: int, *, check: Check | None = None) -> bytes:
    """The content of ``fd`` from its offset, but no more than ``limit + 1`` bytes.

    A result longer than ``limit`` tells the caller the file is over its cap. ``check`` runs
    before each read (to end an abandoned thread early by raising).
    """
    parts = []
    left = limit + 1
    while left > 0:
        if check is not None:
            check()
        data = read_chunk(fd, min(_CHUNK, left))
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


class CappedReader(io.RawIOBase):
    """A raw reader over an fd that it does not own, ending (as if at EOF) after ``limit`` bytes.

    ``capped`` is true once the limit cut the file short. Wrap it in ``io.BufferedReader`` to
    read lines; ``check`` runs before each read.
    """

    def __init__(self, fd: int, limit: int, *, check: Check | None = None) -> None:
        super().__init__()
        self._fd = fd
        self._left = limit
        self._check = check
        self.capped = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._left <= 0:
            if not self.capped and read_chunk(self._fd, 1):
                self.capped = True
            return 0
        if self._check is not None:
            self._check()
        view = memoryview(buffer).cast("B")
        data = read_chunk(self._fd, min(len(view), self._left))
        view[: len(data)] = data
        self._left -= len(data)
        return len(data)


def write_chunk(fd: int, data: memoryview) -> int:
    """One ``write(2)``; every write of file content goes through here."""
    return os.write(fd, data)


def write_atomic(
    dir_fd: int, name: str, data: bytes, mode: int, *, before_commit: Check | None = None
) -> None:
    """Replace (or create) ``name`` in ``dir_fd`` with ``data``, whole or not at all.

    The data goes to a new temporary file in the same directory, created with ``O_EXCL |
    O_NOFOLLOW`` and given ``mode`` (setuid, setgid and sticky bits dropped), then renamed over
    ``name``: a reader sees the old file or the new one, never a part, and a link put at
    ``name`` meanwhile is replaced, not followed. ``before_commit`` runs just before the rename;
    if it raises (the caller has gone away), the temporary file is removed and nothing changes.
    On any failure the temporary file is removed.
    """
    fd, tmp = _create_temp(dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[write_chunk(fd, view) :]
            os.fchmod(fd, mode & 0o777)
            _owned_like_parent(fd, dir_fd)
        finally:
            os.close(fd)
        if before_commit is not None:
            before_commit()
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def _owned_like_parent(fd: int, dir_fd: int) -> None:
    """Give the new file ``fd`` to its directory's owner: when the task's sandbox runs as a
    uid of its own (the daemon being root), what the editor writes must stay the agent's to
    read and change, like what its commands write."""
    parent = os.fstat(dir_fd)
    if os.geteuid() == 0 and (parent.st_uid, parent.st_gid) != (0, 0):
        os.fchown(fd, parent.st_uid, parent.st_gid)


def _give_to_parent_owner(parent_fd: int, name: str) -> None:
    parent = os.fstat(parent_fd)
    if os.geteuid() == 0 and (parent.st_uid, parent.st_gid) != (0, 0):
        os.chown(name, parent.st_uid, parent.st_gid, dir_fd=parent_fd, follow_symlinks=False)


# -- resolution ---------------------------------------------------------------------------


def _walk(root_fd: int, parts: Sequence[str], create: bool, full: str) -> int:
    fd = os.open(".", _DIR_FLAGS, dir_fd=root_fd)
    try:
        for i, name in enumerate(parts):
            prefix = "/".join(parts[: i + 1])
            try:
                child = _open_component(fd, name, prefix, full)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                    _give_to_parent_owner(fd, name)
                except FileExistsError:
                    pass  # made meanwhile; whatever it is, it is checked below
                child = _open_component(fd, name, prefix, full)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_component(dir_fd: int, name: str, prefix: str, full: str) -> int:
    for _ in range(4):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
        # O_NOFOLLOW | O_DIRECTORY refused it: say whether it is a link or some other file.
        st = lstat(dir_fd, name)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise PathError(_link_message(prefix, full))
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise PathError(f"{prefix} is not a directory, so {full} cannot be reached")
        # A directory again: it was swapped back meanwhile; open it as it is now.
    raise PathError(f"{prefix} keeps changing while it is being opened; try again")


def _link_message(prefix: str, full: str) -> str:
    where = prefix if prefix == full else f"{prefix} (on the way to {full})"
    return (
        f"{where} is a symbolic link; the editor does not follow links. Use the path it points "
        "to inside the workspace (see it with bash: ls -l)"
    )


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_syscall = None
_probed: bool | None = None


def openat2_available() -> bool:
    """Whether this kernel (and any seccomp filter around it) lets us call ``openat2``."""
    global _syscall, _probed
    if _probed is None:
        works = False
        if _SYS_OPENAT2 is not None and platform.system() == "Linux":
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                _syscall = libc.syscall
                _syscall.restype = ctypes.c_long
                fd = _openat2(-100, ".", _DIR_FLAGS, _RESOLVE)  # AT_FDCWD
            except (OSError, AttributeError):
                pass  # ENOSYS (an old kernel), EPERM (a seccomp filter): walk instead
            else:
                os.close(fd)
                works = True
        _probed = works  # set once decided: a racing caller meanwhile walks, which is safe
    return _probed


def _have_openat2() -> bool:
    return openat2_available() if use_openat2 is None else use_openat2 and openat2_available()


def _openat2(dir_fd: int, path: str, flags: int, resolve: int) -> int:
    assert _syscall is not None and _SYS_OPENAT2 is not None
    how = _OpenHow(flags, 0, resolve)
    for _ in range(8):
        # ctypes releases the GIL around the call, like os.open does.
        fd = _syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):  # EAGAIN: a rename raced the resolution
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def _create_temp(dir_fd: int) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(16):
        name = _TEMP_PREFIX + secrets.token_hex(8)
        try:
            return os.open(name, flags, 0o600, dir_fd=dir_fd), name
        except FileExistsError:
            continue  # someone made that name: take another
    raise FileExistsError(errno.EEXIST, "could not create a temporary file", _TEMP_PREFIX)
