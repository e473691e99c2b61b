"""A Trio client for the agentd control socket::

    async with await ControlClient.connect(path) as client:
        status = await client.call("status")
        async with aclosing(client.stream("tasks.tail", task_id=tid, after=0)) as events:
            async for event in events:
                ...

Several tasks may share one client: requests are pipelined, and whichever waiting task reads
the socket hands each reply to the task it belongs to.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import AsyncGenerator
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from .protocol import (
    MAX_LINE,
    STREAMING_COMMANDS,
    End,
    ErrorReply,
    Event,
    LineBuffer,
    ProtocolError,
    Reply,
    Result,
    encode_request,
    parse_reply,
)


class DaemonUnreachable(Exception):
    """No conversation with the daemon at ``path`` is possible; ``reason`` says why."""

    def __init__(self, path: os.PathLike[str] | str, reason: str) -> None:
        super().__init__(f"cannot reach agentd at {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class CommandRefused(Exception):
    """The daemon answered the command with an error; ``code`` is its stable name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


class ControlClient:
    """One connection to the control socket. Make it with ``await ControlClient.connect()``."""

    def __init__(self, stream: trio.SocketStream, path: Path, *, max_line: int = MAX_LINE):
        self._stream = stream
        self.path = path
        self._max_line = max_line
        self._ids = itertools.count(1)
        self._send_lock = trio.Lock()
        self._buffer: LineBuffer[Reply] = LineBuffer(parse_reply, max_line=max_line)
        self._inbox: dict[int, deque[Reply]] = {}
        self._reading = False
        self._arrived = trio.Event()
        self._failure: str | None = None

    @classmethod
    async def connect(cls, path: os.PathLike[str] | str, *, max_line: int = MAX_LINE) -> ControlClient:
        """Connect to the daemon listening on ``path``; raises ``DaemonUnreachable``.

        Cancellation: nothing is left open; the half-made socket is closed.
        """
        path = Path(path)
        try:
            stream = await trio.open_unix_socket(os.fspath(path))
        except FileNotFoundError:
            raise DaemonUnreachable(
                path, "no socket there (is agentd running? see --socket and AGENTD_CONTROL_SOCKET)"
            ) from None
        except ConnectionRefusedError:
            raise DaemonUnreachable(
                path, "connection refused: the socket is stale, agentd is not running"
            ) from None
        except PermissionError:
            raise DaemonUnreachable(
                path, "permission denied (run as the agentd user or a member of the socket's group)"
            ) from None
        except OSError as exc:
            raise DaemonUnreachable(path, exc.strerror or str(exc)) from None
        return cls(stream, path, max_line=max_line)

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; the daemon cancels any stream still running for it."""
        await self._stream.aclose()

    async def call(self, cmd: str, **args: object) -> Any:
        """Run ``cmd`` and return its result; raises ``CommandRefused`` or ``DaemonUnreachable``.

        The result is JSON as the daemon sent it; ``args`` are encoded as ``protocol.encode``
        allows.

        Cancellation: the reply, when it comes, is dropped; the connection stays usable
        unless the request was cut off half-written.
        """
        if cmd in STREAMING_COMMANDS:
            raise ValueError(f"{cmd} is a streaming command: use stream()")
        id = await self._send(cmd, args)
        try:
            reply = await self._next(id)
        finally:
            del self._inbox[id]
        if isinstance(reply, Result):
            return reply.value
        if isinstance(reply, ErrorReply):
            raise CommandRefused(reply.code, reply.message)
        raise DaemonUnreachable(self.path, f"daemon streamed events for {cmd}, expected a result")

    async def stream(self, cmd: str, **args: object) -> AsyncGenerator[Any, None]:
        """Yield the events of streaming command ``cmd`` until the daemon ends the stream.

        An error reply raises ``CommandRefused`` (possibly after some events). To stop early,
        close the iterator (``contextlib.aclosing``) or the client: an abandoned iterator keeps
        collecting events for as long as the connection lives.

        Cancellation: the events still to come are dropped; the daemon keeps streaming until
        the connection closes.
        """
        id = await self._send(cmd, args)
        try:
            while True:
                reply = await self._next(id)
                if isinstance(reply, Event):
                    yield reply.event
                elif isinstance(reply, End):
                    return
                elif isinstance(reply, ErrorReply):
                    raise CommandRefused(reply.code, reply.message)
                else:
                    raise DaemonUnreachable(
                        self.path, f"daemon answered {cmd} with one result, expected a stream"
                    )
        finally:
            self._inbox.pop(id, None)

    # ------------------------------------------------------------------------------- private

    async def _send(self, cmd: str, args: dict[str, object]) -> int:
        if self._failure is not None:
            raise DaemonUnreachable(self.path, self._failure)
        id = next(self._ids)
        line = encode_request(id, cmd, args, max_line=self._max_line)
        self._inbox[id] = deque()
        broken = False
        async with self._send_lock:
            try:
                await self._stream.send_all(line)
            except trio.BrokenResourceError:
                broken = True
            except BaseException:
                del self._inbox[id]
                # Cut off mid-line: the daemon would read what follows as garbage.
                self._fail("a request was interrupted while being sent")
                raise
        if broken:
            del self._inbox[id]
            # The daemon may have said why before hanging up (a refused uid): read it.
            while self._failure is None:
                await self._pump()
            raise DaemonUnreachable(self.path, self._failure)
        return id

    async def _next(self, id: int) -> Reply:
        box = self._inbox[id]
        while not box:
            if self._failure is not None:
                raise DaemonUnreachable(self.path, self._failure)
            await self._pump()
        return box.popleft()

    async def _pump(self) -> None:
        """Read once and route what came, or, if another task is reading, wait for it."""
        if self._reading:
            await self._arrived.wait()
            return
        self._reading = True
        try:
            data = await self._stream.receive_some()
            if not data:
                self._fail("the daemon closed the connection")
            self._buffer.feed(data)
            while (reply := self._buffer.next_message()) is not None:
                if reply.id is None:
                    assert isinstance(reply, ErrorReply)
                    self._fail(f"the daemon ended the connection: {reply.message}")
                elif reply.id in self._inbox:
                    self._inbox[reply.id].append(reply)
                # else: the reply to a cancelled call or an abandoned stream.
        except ProtocolError as exc:
            self._fail(f"unreadable reply from the daemon: {exc.message}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(f"connection lost ({exc.__cause__ or exc})")
        finally:
            self._reading = False
            self._arrived.set()
            self._arrived = trio.Event()

    def _fail(self, reason: str) -> None:
        # The first reason is the true one; later ones (reset after a refusal) only echo it.
        if self._failure is None:
            self._failure = reason
