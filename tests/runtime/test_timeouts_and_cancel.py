"""Call timeouts and cancellation seen by the workflow, on the embedded runtime."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lambda_workflow import (
    CallTimeoutError,
    InstanceStatus,
    Service,
    WorkflowContext,
    WorkflowFailedError,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import OperationState

slow = Service("slow", str, str)
refund = Service("refund", str, str)


async def _echo(text: str) -> str:
    return f"done {text}"


def _runtime(*workflows: Any) -> LocalRuntime:
    rt = LocalRuntime(clock=VirtualClock(1_700_000_000.0))
    rt.register(*workflows)
    return rt


@workflow
async def impatient(ctx: WorkflowContext[str]) -> str:
    try:
        return await ctx.call(slow, ctx.request, timeout=30)
    except CallTimeoutError as exc:
        return f"gave up: {exc}"


def test_a_call_that_times_out_raises_and_its_late_reply_is_ignored() -> None:
    """No reply within 30 s: CallTimeoutError at the await. The reply that comes later is
    recorded in the history and changes neither the status nor the result."""
    with _runtime(impatient) as rt:
        handle = rt.start(impatient, "x")
        rt.run_until_idle()  # no service: time skips to the timeout
        assert handle.result() == "gave up: call to service 'slow' got no reply within 30 s"
        rt.implement(slow, _echo)
        rt.run_until_idle()
        assert handle.result().startswith("gave up")
        ops = handle.history().operations
        assert [(op.kind, op.name, op.state) for op in ops] == [
            ("call", "slow", OperationState.COMPLETED),
            ("timer", "timeout:slow", OperationState.COMPLETED)]


def test_a_reply_within_the_timeout_wins() -> None:
    """A reply before the deadline is returned; the timer fires later and changes nothing."""
    with _runtime(impatient) as rt:
        rt.implement(slow, _echo)
        handle = rt.start(impatient, "y")
        rt.run_until_idle()
        assert handle.result() == "done y"
        assert rt.dead_letters() == []


def test_a_bad_call_timeout_is_refused_before_recording() -> None:
    """A timeout outside 1 s to 366 days raises ValueError at ctx.call; nothing recorded."""
    @workflow
    async def bad(ctx: WorkflowContext[None]) -> str:
        return await ctx.call(slow, "z", timeout=0.1)

    with _runtime(bad) as rt:
        handle = rt.start(bad, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError, match="timeout must be 1 second"):
            handle.result()
        assert handle.history().operations == []


@workflow
async def booking(ctx: WorkflowContext[str]) -> str:
    await ctx.call(slow, "reserve")
    try:
        await ctx.call(slow, "confirm")
    except asyncio.CancelledError:
        await ctx.call(refund, ctx.request)  # clean up, then stay cancelled
        raise
    return "booked"


def test_a_cancelled_workflow_sees_the_cancellation_at_its_await_and_cleans_up() -> None:
    """A cancel arriving while the workflow waits: CancelledError is raised at that await,
    the workflow makes a compensating call (which suspends it across activations), then
    ends cancelled with the reason. Later replays deliver the cancellation at the same point."""
    with _runtime(booking) as rt:
        rt.implement(slow, _echo)
        handle = rt.start(booking, "order-9", workflow_id="b-1")
        rt.step_workflows()
        rt.step_services()
        rt.step_workflows()  # "reserve" replied; now waiting on "confirm"
        rt.queue.send(b'{"v":1,"kind":"cancel","workflow_id":"b-1","reason":"customer left"}',
                      group_id="b-1", dedup_id="c1")
        rt.step_workflows()  # cancellation delivered: the refund call is made
        assert handle.status() is InstanceStatus.RUNNING
        rt.implement(refund, _echo)
        rt.run_until_idle()
        assert handle.status() is InstanceStatus.CANCELLED
        with pytest.raises(WorkflowFailedError) as failed:
            handle.result()
        assert (failed.value.error_type, failed.value.message) == ("Cancelled", "customer left")
        names = [op.name for op in handle.history().operations]
    assert names == ["cancel", "slow", "slow", "refund"]


@workflow
async def waiting(ctx: WorkflowContext[None]) -> str:
    await ctx.sleep(3600)
    return "woke"


def test_an_uncaught_cancellation_ends_the_instance_cancelled() -> None:
    """A workflow that does not catch the cancellation ends cancelled at once; a second
    cancel is a duplicate."""
    with _runtime(waiting) as rt:
        handle = rt.start(waiting, None, workflow_id="w-1")
        rt.run_until_idle(skip_time=False)
        for dedup in ("c1", "c2"):
            rt.queue.send(b'{"v":1,"kind":"cancel","workflow_id":"w-1"}', group_id="w-1",
                          dedup_id=dedup)
        reports = rt.run_until_idle(skip_time=False)
        (report,) = reports  # both in one batch: one activation, the second a duplicate
        assert (report.status, report.duplicates) == ("cancelled", ["cancel"])
        assert handle.status() is InstanceStatus.CANCELLED
        with pytest.raises(WorkflowFailedError, match="cancelled by request"):
            handle.result()


@workflow
async def stubborn(ctx: WorkflowContext[None]) -> str:
    try:
        await ctx.sleep(60)
    except asyncio.CancelledError:
        return "finished anyway"
    return "slept"


def test_a_workflow_may_swallow_the_cancellation_and_complete() -> None:
    """Catching CancelledError and returning completes the workflow with that result."""
    with _runtime(stubborn) as rt:
        handle = rt.start(stubborn, None, workflow_id="s-1")
        rt.run_until_idle(skip_time=False)
        rt.queue.send(b'{"v":1,"kind":"cancel","workflow_id":"s-1"}', group_id="s-1",
                      dedup_id="c")
        rt.run_until_idle()
        assert handle.result() == "finished anyway"


@workflow
async def long_child(ctx: WorkflowContext[None]) -> str:
    await ctx.sleep(86_400)
    return "child done"


@workflow
async def parent_of_long_child(ctx: WorkflowContext[None]) -> str:
    return await ctx.child(long_child, None)


def test_cancelling_a_parent_cancels_its_running_children() -> None:
    """A parent cancelled while its child runs passes the cancellation on: the child ends
    cancelled with a reason naming the parent, and the parent ends cancelled."""
    with _runtime(parent_of_long_child, long_child) as rt:
        handle = rt.start(parent_of_long_child, None, workflow_id="par")
        rt.run_until_idle(skip_time=False)
        assert rt.status("par~1") is InstanceStatus.RUNNING
        rt.queue.send(b'{"v":1,"kind":"cancel","workflow_id":"par","reason":"stop"}',
                      group_id="par", dedup_id="c")
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.CANCELLED
        assert rt.status("par~1") is InstanceStatus.CANCELLED
        with pytest.raises(WorkflowFailedError, match="parent 'par' cancelled: stop"):
            rt.result("par~1")


def test_a_timer_that_lost_its_race_is_withdrawn_when_the_workflow_ends() -> None:
    """When the reply beats the timeout and the workflow ends, its still-pending timeout timer
    is withdrawn: no later wake-up, and time-skipping does not jump to it."""
    with _runtime(impatient) as rt:
        rt.implement(slow, _echo)
        start = rt.clock.now()
        handle = rt.start(impatient, "q")
        reports = rt.run_until_idle()
        assert handle.result() == "done q"
        assert len(rt.timers) == 0
        assert rt.clock.now() == start
        assert [r.status for r in reports][-1] == "completed"
