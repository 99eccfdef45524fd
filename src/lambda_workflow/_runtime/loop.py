"""A deterministic asyncio event loop that runs a workflow until it can make no progress.

Workflows are plain ``async def`` code and may use ``asyncio.gather`` and tasks, so they need an
asyncio loop; but a workflow must only wait on durable operations. This loop has no I/O and no
clock: it runs ready callbacks in FIFO order until none are left, at which point every task is
blocked on an operation without a result, and the activation suspends.
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio import events
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

from ..errors import WorkflowError

__all__ = ["ReplayLoop"]

T = TypeVar("T")

_NOT_DURABLE = (
    "a workflow awaited a real timer or I/O ({what}); workflows may only await durable "
    "operations (ctx.call, ctx.step, ctx.sleep, ...). Use ctx.sleep for delays and move I/O "
    "into a service or a step"
)


class ReplayLoop(asyncio.AbstractEventLoop):
    """An event loop with only a ready queue: deterministic, single-threaded, no timers."""

    def __init__(self) -> None:
        self._ready: deque[tuple[asyncio.Handle, Callable[..., object], tuple[object, ...],
                                 contextvars.Context | None]] = deque()
        self._running = False
        self._closed = False
        self._tasks: list[asyncio.Task[Any]] = []
        self.errors: list[dict[str, Any]] = []

    # -- what asyncio.Future, Task and gather use -----------------------------------------
    def call_soon(
        self,
        callback: Callable[..., object],
        *args: object,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append((handle, callback, args, context))
        return handle

    call_soon_threadsafe = call_soon

    def call_later(self, delay: float, *args: object, **kwargs: object) -> asyncio.TimerHandle:
        raise WorkflowError(_NOT_DURABLE.format(what=f"a {delay}s timer, e.g. asyncio.sleep"))

    def call_at(self, when: float, *args: object, **kwargs: object) -> asyncio.TimerHandle:
        raise WorkflowError(_NOT_DURABLE.format(what="a timer, e.g. asyncio.timeout"))

    def time(self) -> float:
        return 0.0

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.Task(coro, loop=self, name=name, context=context)
        self._tasks.append(task)
        return task

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._ready.clear()

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        # Collected, not logged: futures whose exception the workflow never retrieved and
        # tasks abandoned at suspension are expected here.
        self.errors.append(context)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def has_ready(self) -> bool:
        """Whether a callback is waiting to run (another task is runnable)."""
        return bool(self._ready)

    # -- driving ----------------------------------------------------------------------------
    def run_until_idle(self) -> None:
        """Run ready callbacks until there are none (every task done or blocked)."""
        previous = events._get_running_loop()
        events._set_running_loop(self)
        self._running = True
        ready = self._ready
        try:
            while ready:
                handle, callback, args, context = ready.popleft()
                if handle.cancelled():
                    continue
                try:
                    if context is None:
                        callback(*args)
                    else:
                        context.run(callback, *args)
                except (SystemExit, KeyboardInterrupt):
                    # Workflow code raised it (asyncio's task has already recorded it as the
                    # task's exception, then re-raised it): it fails this workflow's instance
                    # only, never the process running the other instances of the batch.
                    continue
        finally:
            self._running = False
            events._set_running_loop(previous)

    def forget_finished(self) -> None:
        """Drop the finished tasks and the collected errors: a loop kept alive across
        activations (warm instances) would otherwise hold them for the instance's life."""
        self._tasks = [task for task in self._tasks if not task.done()]
        self.errors.clear()

    def abandon(self) -> None:
        """Tear down every unfinished task (run its ``finally`` blocks) and close the loop.

        The caller seals the workflow's context first, so code in those blocks cannot record
        or send anything.
        """
        for task in self._tasks:
            if not task.done():
                task.cancel()
        self.run_until_idle()
        for task in self._tasks:
            if not task.done():
                # The task swallowed its cancellation and is blocked again: close its coroutine.
                coro = task.get_coro()
                if coro is not None and hasattr(coro, "close"):
                    coro.close()
        self.close()
