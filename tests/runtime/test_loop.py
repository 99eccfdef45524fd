"""ReplayLoop: a deterministic asyncio loop with no clock and no I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

from lambda_workflow import (
    InstanceStatus,
    WorkflowContext,
    WorkflowError,
    WorkflowFailedError,
    workflow,
)
from lambda_workflow._runtime.loop import ReplayLoop
from lambda_workflow.local import LocalRuntime

T = TypeVar("T")


def new_loop() -> ReplayLoop:
    # typeshed marks AbstractEventLoop's I/O surface abstract; ReplayLoop has none by design.
    return ReplayLoop()  # type: ignore[abstract]


def run(coro: Coroutine[Any, Any, T]) -> T:
    loop = new_loop()
    task = loop.create_task(coro)
    loop.run_until_idle()
    assert task.done(), "the coroutine should have finished"
    return task.result()


def test_runs_a_coroutine_to_completion() -> None:
    """A coroutine that awaits nothing external finishes within one run_until_idle."""

    async def compute() -> int:
        await asyncio.sleep(0)
        return 42

    assert run(compute()) == 42


def test_gather_of_tasks_runs_them_in_creation_order() -> None:
    """Tasks start in the order they were created, and gather returns results in order."""
    started: list[str] = []

    async def job(name: str) -> str:
        started.append(name)
        await asyncio.sleep(0)
        started.append(name + "-again")
        return name.upper()

    async def main() -> list[str]:
        return list(await asyncio.gather(job("a"), job("b"), job("c")))

    assert run(main()) == ["A", "B", "C"]
    assert started == ["a", "b", "c", "a-again", "b-again", "c-again"]


def test_the_same_program_interleaves_the_same_way_every_time() -> None:
    """Two runs of the same tasks produce the same interleaving (no scheduling randomness)."""

    def trace() -> list[str]:
        log: list[str] = []

        async def worker(name: str, steps: int) -> None:
            for i in range(steps):
                log.append(f"{name}{i}")
                await asyncio.sleep(0)

        async def main() -> None:
            tasks = [asyncio.ensure_future(worker(n, s)) for n, s in (("x", 3), ("y", 1), ("z", 2))]
            await asyncio.wait(tasks)

        run(main())
        return log

    assert trace() == trace() == ["x0", "y0", "z0", "x1", "z1", "x2"]


def test_a_task_blocked_on_a_future_is_left_pending() -> None:
    """run_until_idle returns when every task is blocked; resolving the future resumes it."""
    loop = new_loop()
    gate: asyncio.Future[int] = loop.create_future()

    async def waiter() -> int:
        return await gate + 1

    task = loop.create_task(waiter())
    loop.run_until_idle()
    assert not task.done()
    gate.set_result(1)
    loop.run_until_idle()
    assert task.result() == 2


def test_asyncio_sleep_with_a_delay_raises_a_workflow_error() -> None:
    """asyncio.sleep(1) inside the loop fails with a WorkflowError pointing to ctx.sleep."""

    async def naps() -> None:
        await asyncio.sleep(1)

    loop = new_loop()
    task = loop.create_task(naps())
    loop.run_until_idle()
    exc = task.exception()
    assert isinstance(exc, WorkflowError)
    assert "Use ctx.sleep for delays" in str(exc)
    assert "1s timer" in str(exc)


def test_asyncio_timeout_raises_a_workflow_error() -> None:
    """A deadline (asyncio.timeout) needs a real timer too and is refused the same way."""

    async def bounded() -> None:
        async with asyncio.timeout(5):
            await asyncio.sleep(0)

    loop = new_loop()
    task = loop.create_task(bounded())
    loop.run_until_idle()
    exc = task.exception()
    assert isinstance(exc, WorkflowError)
    assert "ctx.sleep" in str(exc)


def test_the_loop_is_the_running_loop_only_while_it_runs() -> None:
    """Inside, get_running_loop() is the ReplayLoop; afterwards no loop is running."""
    seen: list[asyncio.AbstractEventLoop] = []

    async def probe() -> None:
        seen.append(asyncio.get_running_loop())

    loop = new_loop()
    loop.create_task(probe())
    loop.run_until_idle()
    assert seen == [loop]
    assert not loop.is_running()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_abandon_runs_finally_blocks_and_closes_the_loop() -> None:
    """abandon() cancels blocked tasks (their finally blocks run) and closes the loop."""
    loop = new_loop()
    gate: asyncio.Future[None] = loop.create_future()
    cleaned: list[str] = []

    async def blocked() -> None:
        try:
            await gate
        finally:
            cleaned.append("finally")

    task = loop.create_task(blocked())
    loop.run_until_idle()
    loop.abandon()
    assert cleaned == ["finally"]
    assert task.cancelled()
    assert loop.is_closed()


def test_abandon_closes_a_task_that_swallows_its_cancellation() -> None:
    """A task that catches CancelledError and waits again is closed, not left running."""
    loop = new_loop()
    first: asyncio.Future[None] = loop.create_future()
    second: asyncio.Future[None] = loop.create_future()
    exits: list[str] = []

    async def stubborn() -> None:
        try:
            try:
                await first
            except asyncio.CancelledError:
                await second
        finally:
            exits.append("closed")

    loop.create_task(stubborn())
    loop.run_until_idle()
    loop.abandon()
    assert exits == ["closed"]
    assert loop.is_closed()


class Nap(BaseModel):
    seconds: int


@workflow
async def napping(ctx: WorkflowContext[Nap]) -> str:
    await asyncio.sleep(ctx.request.seconds)
    return "rested"


def test_a_workflow_that_calls_asyncio_sleep_fails_and_is_told_to_use_ctx_sleep() -> None:
    """On the runtime, asyncio.sleep(1) fails the workflow with a message naming ctx.sleep."""
    with LocalRuntime() as rt:
        rt.register(napping)
        handle = rt.start(napping, Nap(seconds=1), workflow_id="nap-1")
        rt.run_until_idle()
        assert handle.status() is InstanceStatus.FAILED
        with pytest.raises(WorkflowFailedError) as info:
            handle.result()
    assert info.value.error_type == "WorkflowError"
    assert "Use ctx.sleep for delays" in info.value.message
