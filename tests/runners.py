"""Task runners that prove the supervisor: each behaves one way, on trio's clock."""

from __future__ import annotations

import trio

from daemon.errors import PermanentError, TransientError
from daemon.supervisor import RunContext, RunResult


class Recorder:
    """Remembers which tasks started, when, and how many ran at once."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, float]] = []
        self.active = 0
        self.max_active = 0
        self.changed = trio.Event()

    def enter(self, ctx: RunContext) -> None:
        self.starts.append((ctx.task.id, trio.current_time()))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self._kick()

    def leave(self) -> None:
        self.active -= 1
        self._kick()

    def _kick(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_until(self, predicate) -> None:
        while not predicate():
            await self.changed.wait()


class SucceedAfter(Recorder):
    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay

    async def run(self, ctx: RunContext) -> RunResult:
        self.enter(ctx)
        try:
            await trio.sleep(self.delay)
            return RunResult()
        finally:
            self.leave()


class FailTimes(Recorder):
    """Transient failure for the first ``failures`` attempts of each task, then success."""

    def __init__(self, failures: int, retry_after: float | None = None) -> None:
        super().__init__()
        self.failures = failures
        self.retry_after = retry_after

    async def run(self, ctx: RunContext) -> RunResult:
        self.enter(ctx)
        try:
            await trio.lowlevel.checkpoint()
            if ctx.task.attempt <= self.failures:
                raise TransientError(f"flaky attempt {ctx.task.attempt}", retry_after=self.retry_after)
            return RunResult()
        finally:
            self.leave()


class FailPermanently(Recorder):
    async def run(self, ctx: RunContext) -> RunResult:
        self.enter(ctx)
        try:
            await trio.lowlevel.checkpoint()
            raise PermanentError("repository not found: example/missing")
        finally:
            self.leave()


class Hang(Recorder):
    """Runs until cancelled (or released)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = trio.Event()
        self.cancelled: list[str] = []

    async def run(self, ctx: RunContext) -> RunResult:
        self.enter(ctx)
        try:
            await self.release.wait()
            return RunResult()
        except trio.Cancelled:
            self.cancelled.append(ctx.task.id)
            raise
        finally:
            self.leave()


class MessagedAsItEnds(Recorder):
    """The first attempt: the user writes to the task as it ends. Later ones: run until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = trio.Event()

    async def run(self, ctx: RunContext) -> RunResult:
        self.enter(ctx)
        try:
            if len(self.starts) == 1:
                await ctx.store.add_input(ctx.task.id, "one more thing")
            else:
                await self.release.wait()
            return RunResult()
        finally:
            self.leave()
