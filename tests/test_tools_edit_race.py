"""The editor under attack: links swapped in mid-call, special files, calls stuck in a syscall.

The workspace is hostile (design §11): while the editor works, the agent may turn a directory
into a symbolic link to anywhere and back, put a FIFO, a socket or a device where a file was,
or leave a file that never answers. None of that may read or write outside the workspace,
block a call, or hold a cancelled call.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import trio

from daemon.agent.tools import Toolbox, ToolSettings, fs_beneath
from daemon.agent.tools.edit import Editor

OPS_PER_KIND = 300
SECRET = "SECRET-OUTSIDE"
RENAME_EXCHANGE = 2
AT_FDCWD = -100


@pytest.fixture(params=["openat2", "walk"])
def resolution(request, monkeypatch):
    """Runs a test with openat2 resolution, then with the component walk; yields a call counter."""
    if request.param == "openat2":
        if not fs_beneath.openat2_available():
            pytest.skip("openat2 is not available on this kernel")
        monkeypatch.setattr(fs_beneath, "use_openat2", True)
    else:
        monkeypatch.setattr(fs_beneath, "use_openat2", False)
    calls = []
    real = fs_beneath._openat2

    def counting(*args):
        calls.append(args[1])
        return real(*args)

    monkeypatch.setattr(fs_beneath, "_openat2", counting)
    return request.param, calls


def exchanger():
    """Atomically swaps two directory entries (renameat2 RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        pytest.skip("renameat2 is not in this libc")

    def exchange(a: Path, b: Path) -> None:
        if libc.renameat2(AT_FDCWD, bytes(a), AT_FDCWD, bytes(b), RENAME_EXCHANGE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(a))

    return exchange


@contextlib.contextmanager
def flipping(pairs: list[tuple[Path, Path]], *, max_flips: int = 2_000_000):
    """A thread that keeps exchanging each pair until the block ends (bounded in count too)."""
    exchange = exchanger()
    stop = threading.Event()
    flips = [0]
    failure: list[BaseException] = []

    def run() -> None:
        try:
            while not stop.is_set() and flips[0] < max_flips:
                for a, b in pairs:
                    exchange(a, b)
                flips[0] += 1
                time.sleep(0)  # let the editor's threads have the GIL between flips
        except BaseException as e:  # noqa: BLE001 - reported by the test, not lost in the thread
            failure.append(e)

    thread = threading.Thread(target=run, name="flipper", daemon=True)
    thread.start()
    try:
        yield flips
    finally:
        stop.set()
        thread.join(10)
    assert not failure, failure
    assert flips[0] > 0


def snapshot(directory: Path) -> dict:
    """Everything that could tell that a directory tree was read-modified or written."""
    seen = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        seen[str(path)] = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, content)
    return seen


async def edit(tb: Toolbox, command: str, path: str, **args):
    return await tb.run("str_replace_based_edit_tool", {"command": command, "path": path, **args})


# -- the symlink race ------------------------------------------------------------------------


@pytest.mark.slow
async def test_links_swapped_in_mid_call_never_lead_outside(tmp_path, resolution):
    """A directory and a file keep being exchanged with links to a directory outside (holding a
    secret) while the editor does 300 calls of each kind: no call reads the secret, nothing
    outside is written or created, and the race was really run (some calls met the links)."""
    mode, openat2_calls = resolution
    ws = tmp_path / "ws"
    outside = tmp_path / "outside"
    (ws / "d").mkdir(parents=True)
    outside.mkdir()
    (ws / "d" / "f").write_text("inside\n")
    (ws / "g").write_text("inside\n")
    # Outside looks like inside (an edit that followed a link would succeed there), plus secrets.
    (outside / "f").write_text(f"inside\n{SECRET}\n")
    (outside / "g").write_text(f"inside\n{SECRET}\n")
    (outside / "secret.key").write_text(f"{SECRET}-KEY\n")
    (ws / "d.swap").symlink_to(outside)
    (ws / "g.swap").symlink_to(outside / "g")
    before_outside = snapshot(outside)
    before_top = sorted(os.listdir(tmp_path))

    outcomes: dict[str, list] = {"view": [], "create": [], "str_replace": [], "insert": []}
    views = ["d/f", "d", "g", "."]
    async with Toolbox(ws, ToolSettings(sandbox="off")) as tb:

        async def calls(kind: str) -> None:
            for i in range(OPS_PER_KIND):
                if kind == "view":
                    result = await edit(tb, "view", views[i % len(views)])
                elif kind == "create":
                    path = f"d/new{i % 10}.txt" if i % 2 else "g"
                    result = await edit(tb, "create", path, file_text="inside\n")
                elif kind == "str_replace":
                    path = "d/f" if i % 2 else "g"
                    result = await edit(tb, "str_replace", path, old_str="inside", new_str="inside")
                else:
                    result = await edit(tb, "insert", "d/f" if i % 2 else "g", insert_line=0, insert_text="x")
                outcomes[kind].append(result)

        with flipping([(ws / "d", ws / "d.swap"), (ws / "g", ws / "g.swap")]) as flips:
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for kind in outcomes:
                        nursery.start_soon(calls, kind)

    assert snapshot(outside) == before_outside
    assert sorted(os.listdir(tmp_path)) == before_top
    everything = [r for results in outcomes.values() for r in results]
    assert all(len(results) == OPS_PER_KIND for results in outcomes.values())
    for result in everything:
        assert SECRET not in result.output and "secret.key" not in result.output, result
    refused = [r for r in everything if "is a symbolic link" in r.output]
    succeeded = [r for r in everything if not r.is_error]
    assert refused and succeeded, (len(refused), len(succeeded), flips[0])
    for result in everything:  # the only errors are the refusals the race causes
        assert (
            not result.is_error
            or "symbolic link" in result.output
            or (
                "changed while it was being opened" in result.output
                or "keeps changing while it is being opened" in result.output
            )
        ), result
    assert not list(ws.rglob(".agentd-edit-*"))  # no temporary file left behind
    assert (len(openat2_calls) > 0) == (mode == "openat2")


# -- special files ---------------------------------------------------------------------------

COMMANDS = [
    ("view", {}),
    ("create", {"file_text": "x"}),
    ("str_replace", {"old_str": "a", "new_str": "b"}),
    ("insert", {"insert_line": 0, "insert_text": "x"}),
]


def make_special(ws: Path, kind: str) -> tuple[Path, str]:
    path = ws / "sub" / "special"
    path.parent.mkdir(exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
        return path, "is a FIFO (named pipe)"
    if kind == "socket":
        # Bound under a short name (unix socket paths are limited), then moved in.
        short = Path(f"/tmp/agentd-sock-{os.getpid()}-{threading.get_ident()}")
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(short))
            os.rename(short, path)
        return path, "is a unix socket"
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero: never ends
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD")
    return path, "is a character device"


@pytest.mark.parametrize("kind", ["fifo", "socket", "chardev"])
async def test_special_files_are_refused_at_once(tmp_path, resolution, kind):
    ws = tmp_path / "ws"
    ws.mkdir()
    path, what = make_special(ws, kind)
    async with Toolbox(ws, ToolSettings(sandbox="off")) as tb:
        for command, args in COMMANDS:
            with trio.fail_after(5):  # a blocking open would hang here
                result = await edit(tb, command, "sub/special", **args)
            assert result.is_error, (command, result)
            assert result.output == (
                f"sub/special {what}; the editor reads and writes regular files only (inspect it with bash)"
            )
        with trio.fail_after(5):
            through = await edit(tb, "create", "sub/special/x", file_text="x")
        assert through.is_error and "sub/special is not a directory" in through.output
        listing = await edit(tb, "view", "sub")
        assert listing.output.endswith("\nspecial\n")
    assert stat.S_IFMT(path.lstat().st_mode) != stat.S_IFREG  # left as it was


@pytest.mark.slow
async def test_a_fifo_swapped_in_mid_call_never_blocks(tmp_path, resolution):
    """A file keeps being exchanged with a FIFO while the editor reads it: every call answers
    (with what the file holds, or a clear refusal) because the open is non-blocking and fstat,
    not the check before it, decides. The commands read without writing, so that no rename
    replaces the FIFO and ends the race."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "h").write_text("content\n")
    os.mkfifo(ws / "h.swap")
    reads = [
        ("view", {}),
        ("str_replace", {"old_str": "absent", "new_str": "x"}),
        ("insert", {"insert_line": 5, "insert_text": "x"}),
    ]
    read, refused = [], []
    async with Toolbox(ws, ToolSettings(sandbox="off")) as tb:
        with flipping([(ws / "h", ws / "h.swap")]):
            with trio.fail_after(30):
                for i in range(300):
                    command, args = reads[i % len(reads)]
                    result = await edit(tb, command, "h", **args)
                    if any(
                        text in result.output
                        for text in ("\tcontent\n", "does not occur verbatim", "out of range")
                    ):
                        read.append(result)
                    else:
                        assert "h is a FIFO (named pipe)" in result.output or (
                            "changed while it was being opened" in result.output
                        ), result
                        refused.append(result)
    assert read and refused, (len(read), len(refused))
    kinds = {stat.S_IFMT(os.lstat(ws / name).st_mode) for name in ("h", "h.swap")}
    assert kinds == {stat.S_IFREG, stat.S_IFIFO}  # both still there, nothing replaced


# -- cancellation ----------------------------------------------------------------------------


async def threads_done(editor: Editor) -> None:
    """Waits until every worker thread of ``editor`` has ended (each holds a limiter token)."""
    limiter = editor._limiter
    borrowers = [object() for _ in range(int(limiter.total_tokens))]
    for borrower in borrowers:
        await limiter.acquire_on_behalf_of(borrower)
    for borrower in borrowers:
        limiter.release_on_behalf_of(borrower)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_stuck(monkeypatch, which: str) -> tuple[threading.Event, threading.Event]:
    """Makes reads (or writes) of file content block, once entered, until ``release`` is set."""
    entered, release = threading.Event(), threading.Event()
    real_read, real_write = fs_beneath.read_chunk, fs_beneath.write_chunk

    def read_chunk(fd, size):
        entered.set()
        assert release.wait(30)
        return real_read(fd, size)

    def write_chunk(fd, data):
        written = real_write(fd, data[: max(1, len(data) // 2)])  # half of it, then stuck
        entered.set()
        assert release.wait(30)
        return written

    if which == "read":
        monkeypatch.setattr(fs_beneath, "read_chunk", read_chunk)
    else:
        monkeypatch.setattr(fs_beneath, "write_chunk", write_chunk)
    return entered, release


@pytest.fixture
def stuck_read(monkeypatch):
    return make_stuck(monkeypatch, "read")


@pytest.fixture
def stuck_write(monkeypatch):
    return make_stuck(monkeypatch, "write")


async def cancel_while_stuck(editor: Editor, input: dict, entered: threading.Event) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(editor.run, input)
            assert await trio.to_thread.run_sync(entered.wait, 10)
            scope.cancel()
    assert scope.cancelled_caught


async def test_a_cancelled_view_returns_while_its_thread_is_stuck_in_a_read(tmp_path, stuck_read):
    entered, release = stuck_read
    (tmp_path / "f.txt").write_text("hello\n")
    editor = Editor(str(tmp_path), alias=None, cap_bytes=10_000)
    fds = open_fds()
    await cancel_while_stuck(editor, {"command": "view", "path": "f.txt"}, entered)
    assert not release.is_set()  # the call is over and its thread is still stuck in read(2)
    release.set()
    await threads_done(editor)
    assert open_fds() == fds  # the abandoned thread closed what it opened


async def test_an_edit_abandoned_mid_write_leaves_the_file_as_it_was(tmp_path, stuck_write):
    entered, release = stuck_write
    original = "keep me\n" * 1000
    (tmp_path / "f.txt").write_text(original)
    editor = Editor(str(tmp_path), alias=None, cap_bytes=10_000)
    fds = open_fds()
    await cancel_while_stuck(
        editor,
        {"command": "str_replace", "path": "f.txt", "old_str": original, "new_str": "changed\n" * 999},
        entered,
    )
    temps = list(tmp_path.glob(".agentd-edit-*"))
    assert len(temps) == 1 and 0 < temps[0].stat().st_size < len(original)  # half written
    assert (tmp_path / "f.txt").read_text() == original
    release.set()
    await threads_done(editor)
    # The thread woke up abandoned: it never renamed, and removed its temporary file.
    assert (tmp_path / "f.txt").read_text() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    assert open_fds() == fds


async def test_threads_that_never_end_are_bounded(tmp_path, stuck_read):
    """Once every thread an editor may run is stuck, further calls are refused at once."""
    entered, release = stuck_read
    (tmp_path / "f.txt").write_text("hello\n")
    editor = Editor(str(tmp_path), alias=None, cap_bytes=10_000, max_threads=1)
    await cancel_while_stuck(editor, {"command": "view", "path": "f.txt"}, entered)
    busy = await editor.run({"command": "view", "path": "f.txt"})
    assert busy.is_error and busy.output.startswith(
        "The editor is still busy with 1 earlier operation(s) cancelled while the file system"
    )
    release.set()
    await threads_done(editor)
    assert (await editor.run({"command": "view", "path": "f.txt"})).output.endswith("\thello\n")
