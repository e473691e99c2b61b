"""The unix-socket server that ``agentctl`` talks to (design §7, wire format in control.protocol).

Handlers are plain coroutines for one-reply commands and async generators for streaming ones::

    async def status(args: dict) -> dict: ...
    async def tail(args: dict) -> AsyncIterator[dict]:   # an async generator: streaming
        yield ...

    server = ControlServer(path, {"status": status, "tasks.tail": tail})
    await nursery.start(server.serve)

An async generator function is recognised as streaming by itself; wrap any other callable that
returns an async iterator with ``@streaming``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import socket as _socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from control.protocol import (
    COMMANDS,
    MAX_LINE,
    STREAMING_COMMANDS,
    LineBuffer,
    ProtocolError,
    Request,
    encode_end,
    encode_error,
    encode_event,
    encode_result,
    parse_request,
)
from daemon.errors import AgentdError, ConfigError
from daemon.socket_access import group_gid, peer_groups, peer_uid, unreachable_by_group

log = logging.getLogger("agentd.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any] | AsyncIterator[Any]]
F = TypeVar("F", bound=Callable[..., Any])

MAX_IN_FLIGHT = 64
"""Requests one connection may have running at once; beyond that the server stops reading."""
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the terminating NUL
_PROBE_TIMEOUT = 2.0


def streaming(handler: F) -> F:
    """Mark ``handler`` as a streaming command: it returns an async iterator of events.

    Works as a decorator, and on bound methods and other callables that take no attributes.
    """
    try:
        handler._control_streaming = True  # type: ignore[attr-defined]
        return handler
    except AttributeError:
        pass

    @functools.wraps(handler)
    def wrapper(args: dict[str, Any]) -> Any:
        return handler(args)

    wrapper._control_streaming = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def is_streaming(handler: Callable[..., Any]) -> bool:
    return bool(getattr(handler, "_control_streaming", False)) or inspect.isasyncgenfunction(handler)


class _ClientGone(Exception):
    """Writing to the peer failed: it hung up, so its remaining work is pointless."""


class ControlServer:
    """Serves ``handlers`` on the unix socket ``path``.

    The socket file is made mode 0600, or 0660 owned by ``group`` when one is given. Peers
    are admitted by their credentials (SO_PEERCRED): the daemon's own uid, root,
    ``allowed_uids``, and, with ``group``, any process whose primary or supplementary groups
    include it (``socket_access.peer_groups``); a refused peer gets one error line and is
    closed. With ``group``, a socket directory the server makes is 0710 owned by the group,
    and a directory on the way that the group cannot search is named in a warning. Each
    connection may pipeline requests; each request runs in its own task and its reply goes
    out as soon as it is ready.
    """

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Handler],
        *,
        group: str | None = None,
        allowed_uids: set[int] | None = None,
        max_line: int = MAX_LINE,
    ) -> None:
        self.path = Path(path)
        self.group = group
        self.group_gid: int | None = None  # resolved when the socket is made
        self.allowed_uids = frozenset({os.geteuid(), 0} | set(allowed_uids or ()))
        self.max_line = max_line
        self._handlers = dict(handlers)
        for cmd, handler in self._handlers.items():
            # Catch the mix-up at startup rather than as a confusing reply on first use.
            if cmd in STREAMING_COMMANDS and not is_streaming(handler):
                raise ValueError(f"{cmd} is a streaming command: give it an async generator")
            if cmd in COMMANDS and cmd not in STREAMING_COMMANDS and is_streaming(handler):
                raise ValueError(f"{cmd} replies once: give it a coroutine, not a generator")

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the socket, report ``started()`` once it accepts, and serve until cancelled.

        A socket file left by a dead daemon is replaced; if a live process answers on it,
        raises ``AgentdError`` (code ``socket_in_use``) saying another agentd is serving there.

        Cancellation: cancelling ``serve()`` is how the server is closed. It stops accepting,
        cancels every connection task (streaming handlers see ``GeneratorExit`` at their
        ``yield``, plain ones ``trio.Cancelled``), closes the connections and removes the socket
        file, unless another process has replaced it meanwhile.
        """
        self._check_path_length()
        await self._clear_stale_socket()
        self._make_directory()
        sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        bound: tuple[int, int] | None = None
        try:
            await sock.bind(os.fspath(self.path))
            st = os.lstat(self.path)
            bound = (st.st_dev, st.st_ino)
            self._set_mode()
            sock.listen(128)
            listener = trio.SocketListener(sock)
            log.info("control socket listening on %s", self.path)
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._connection, [listener])
                task_status.started()
        finally:
            sock.close()
            if bound is not None:
                self._unlink_if_ours(bound)

    # ------------------------------------------------------------------------- socket file

    def _check_path_length(self) -> None:
        size = len(os.fsencode(self.path))
        if size > _SUN_PATH_MAX:
            raise ConfigError(
                f"control socket path is {size} bytes, longer than the {_SUN_PATH_MAX} a unix "
                f"socket allows: {self.path} (set a shorter control_socket)"
            )

    async def _clear_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{self.path} exists and is not a socket; not replacing it")
        probe = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            with trio.move_on_after(_PROBE_TIMEOUT):
                try:
                    await probe.connect(os.fspath(self.path))
                except ConnectionRefusedError:
                    # Nobody listens: the file is what a dead daemon left behind.
                    log.warning("removing stale control socket %s", self.path)
                    self.path.unlink(missing_ok=True)
                    return
                except FileNotFoundError:
                    return
                except PermissionError:
                    raise AgentdError(
                        f"{self.path} belongs to another user; cannot tell whether an agentd is "
                        "serving there",
                        code="socket_in_use",
                    ) from None
            # Connected, or a listener too busy to accept within the timeout: either way alive.
            raise AgentdError(f"another agentd is serving on {self.path}", code="socket_in_use")
        finally:
            probe.close()

    def _make_directory(self) -> None:
        if self.group is not None:
            try:
                self.group_gid = group_gid(self.group)
            except KeyError:
                raise ConfigError(f"control socket group {self.group!r} does not exist") from None
        parent = self.path.parent
        made = not parent.exists()
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.group_gid is None:
            return
        if made:  # ours: members may enter it, not list it
            os.chown(parent, -1, self.group_gid)
            os.chmod(parent, 0o710)
        blocked = unreachable_by_group(self.path, self.group_gid)
        if blocked is not None:
            log.warning(
                "members of group %s cannot reach the control socket %s: they may not "
                "enter %s; set control_socket to a path in a directory they can enter",
                self.group,
                self.path,
                blocked,
            )

    def _set_mode(self) -> None:
        # bind() created the file under the umask; a peer that connects before this chmod
        # still has to pass the peer check, so the short window grants nothing.
        os.chmod(self.path, 0o600)
        if self.group_gid is not None:
            os.chown(self.path, -1, self.group_gid)
            os.chmod(self.path, 0o660)

    def _unlink_if_ours(self, bound: tuple[int, int]) -> None:
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == bound:
                self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove control socket %s: %s", self.path, exc)

    # -------------------------------------------------------------------------- connections

    async def _connection(self, stream: trio.SocketStream) -> None:
        # serve_listeners lets a handler's exception take the whole server down: contain it.
        try:
            async with stream:
                if await self._admit(stream):
                    await _Connection(self, stream).run()
        except trio.BrokenResourceError:
            pass
        except Exception:
            log.exception("control connection failed")

    async def _admit(self, stream: trio.SocketStream) -> bool:
        uid = peer_uid(stream.socket)
        if uid is None or uid in self.allowed_uids:
            return True
        if self.group_gid is not None:
            # Off the Trio thread: without SO_PEERGROUPS this reads /proc or the group database.
            groups = await trio.to_thread.run_sync(peer_groups, stream.socket)
            if self.group_gid in groups:
                return True
        log.warning("control socket: refused a peer with uid %d", uid)
        members = f" or members of group {self.group}" if self.group is not None else ""
        await stream.send_all(
            encode_error(
                None,
                "forbidden",
                f"uid {uid} may not use the agentd control socket {self.path} "
                f"(only uid {os.geteuid()}, root{members})",
            )
        )
        return False

    def handler(self, cmd: str) -> Handler | None:
        return self._handlers.get(cmd)


class _Connection:
    """One peer: reads requests, runs each in a task, writes whole reply lines."""

    def __init__(self, server: ControlServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.send_lock = trio.Lock()  # SocketStream refuses concurrent send_all
        self.in_flight: set[int] = set()
        self.slots = trio.Semaphore(MAX_IN_FLIGHT)
        self.streams: set[trio.CancelScope] = set()
        self.eof = False

    async def run(self) -> None:
        buffer: LineBuffer[Request] = LineBuffer(parse_request, max_line=self.server.max_line)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                while True:
                    data = await self.stream.receive_some()
                    if not data:
                        break
                    buffer.feed(data)
                    if not await self._dispatch(buffer):
                        nursery.cancel_scope.cancel()
                        return
            except (trio.BrokenResourceError, _ClientGone):
                nursery.cancel_scope.cancel()
                return
            # EOF: the peer may only have half-closed after pipelining requests, so plain
            # requests still get their replies; but nobody will read a stream to its end.
            self.eof = True
            for scope in self.streams:
                scope.cancel()

    async def _dispatch(self, buffer: LineBuffer[Request]) -> bool:
        """Start a task per complete request; ``False`` when the connection must close."""
        while True:
            try:
                request = buffer.next_message()
            except ProtocolError as exc:
                await self.send(encode_error(exc.id, exc.code, exc.message))
                if exc.fatal:
                    return False
                continue
            if request is None:
                return True
            if request.id in self.in_flight:
                await self.send(
                    encode_error(request.id, "bad_request", f"request id {request.id} is already in flight")
                )
                continue
            await self.slots.acquire()
            self.in_flight.add(request.id)
            self.nursery.start_soon(self._request, request)

    async def send(self, line: bytes) -> None:
        try:
            async with self.send_lock:
                await self.stream.send_all(line)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ClientGone from exc

    async def _request(self, request: Request) -> None:
        try:
            await self._run_handler(request)
        except _ClientGone:
            self.nursery.cancel_scope.cancel()
        finally:
            self.in_flight.discard(request.id)
            self.slots.release()

    async def _run_handler(self, request: Request) -> None:
        id, cmd = request.id, request.cmd
        handler = self.server.handler(cmd)
        if handler is None:
            await self.send(encode_error(id, "unknown_command", f"unknown command {cmd!r}"))
            return
        try:
            if is_streaming(handler):
                with trio.CancelScope() as scope:
                    self.streams.add(scope)
                    if self.eof:  # the peer hung up before this task got to run
                        scope.cancel()
                    try:
                        async with _closing(handler(request.args)) as events:  # type: ignore[arg-type]
                            async for event in events:
                                await self.send(encode_event(id, event, max_line=self.server.max_line))
                    finally:
                        self.streams.discard(scope)
                if scope.cancelled_caught:
                    return
                line = encode_end(id)
            else:
                result = await handler(request.args)  # type: ignore[misc]
                line = encode_result(id, result, max_line=self.server.max_line)
        except _ClientGone:
            raise
        except Exception as exc:  # noqa: BLE001 - the edge: any failure becomes an error reply
            line = _error_line(id, cmd, exc)
        await self.send(line)


@asynccontextmanager
async def _closing(events: AsyncIterator[Any]) -> AsyncIterator[AsyncIterator[Any]]:
    # Close the generator here, in this task and cancel scope, rather than whenever the
    # garbage collector gets to it; plain async iterators have nothing to close.
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def _error_line(id: int, cmd: str, exc: Exception) -> bytes:
    # A handler's own nursery wraps its error in a group; the one inside is the real answer.
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, AgentdError):
        return encode_error(id, exc.code, exc.message)
    if isinstance(exc, ProtocolError):
        # The handler's answer could not be encoded (not JSON, or longer than a line).
        log.error("control command %s: unsendable reply: %s", cmd, exc.message)
        return encode_error(id, "internal", f"{cmd}: reply could not be sent: {exc.message}")
    log.error("control command %s failed", cmd, exc_info=exc)
    return encode_error(
        id, "internal", f"{cmd} failed: {type(exc).__name__}: {exc} (details in the agentd log)"
    )
