"""AWS durable-execution requirements for ``wait`` (group wait, ids 2.x), on the embedded
runtime: ``context.wait`` is ``ctx.sleep``, recorded as a ``timer`` operation."""

from __future__ import annotations

from datetime import timedelta

from lambda_workflow import InstanceStatus, WorkflowContext, workflow

from ._support import activations, recorded, requests, runtime


@workflow
async def wait_basic(ctx: WorkflowContext[None]) -> None:
    await ctx.sleep(2)


def test_wait_2_1_a_wait_suspends_and_the_execution_succeeds_after_it() -> None:
    with runtime(wait_basic) as rt:
        handle = rt.start(wait_basic, None)
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING  # suspended on the timer
        rt.advance_time(2)
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.COMPLETED
        assert handle.result() is None
        assert recorded(handle) == [("timer", "sleep", "completed")]
        assert requests(handle, "timer") == [b'{"seconds":2.0}']
        assert activations(handle) == 2


@workflow
async def named_wait(ctx: WorkflowContext[None]) -> None:
    await ctx.sleep(2, name="custom_wait_name")


def test_wait_2_2_a_waits_explicit_name_is_recorded() -> None:
    with runtime(named_wait) as rt:
        handle = rt.start(named_wait, None)
        rt.run_until_idle()
        assert handle.status() is InstanceStatus.COMPLETED
        assert recorded(handle) == [("timer", "custom_wait_name", "completed")]
        assert requests(handle, "timer") == [b'{"seconds":2.0}']


@workflow
async def two_waits(ctx: WorkflowContext[None]) -> dict[str, int]:
    await ctx.sleep(2, name="wait-1")
    await ctx.sleep(2, name="wait-2")
    return {"completedWaits": 2}


def test_wait_2_3_two_sequential_waits_each_suspend_and_resume() -> None:
    with runtime(two_waits) as rt:
        handle = rt.start(two_waits, None)
        rt.run_until_idle(skip_time=False)
        assert recorded(handle) == [("timer", "wait-1", "pending")]
        rt.advance_time(2)
        rt.run_until_idle(skip_time=False)
        assert recorded(handle) == [("timer", "wait-1", "completed"),
                                    ("timer", "wait-2", "pending")]
        rt.advance_time(2)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == {"completedWaits": 2}
        assert requests(handle, "timer") == [b'{"seconds":2.0}'] * 2
        assert activations(handle) == 3


@workflow
async def wait_minutes(ctx: WorkflowContext[None]) -> None:
    await ctx.sleep(timedelta(minutes=1))


def test_wait_2_4_a_duration_in_minutes_is_recorded_in_seconds() -> None:
    with runtime(wait_minutes) as rt:
        handle = rt.start(wait_minutes, None)
        rt.run_until_idle(skip_time=False)
        assert requests(handle, "timer") == [b'{"seconds":60.0}']
        assert recorded(handle) == [("timer", "sleep", "pending")]


@workflow
async def wait_hour(ctx: WorkflowContext[None]) -> None:
    await ctx.sleep(timedelta(hours=1))


def test_wait_2_5_a_one_hour_wait_is_recorded_as_3600_seconds() -> None:
    with runtime(wait_hour) as rt:
        handle = rt.start(wait_hour, None)
        rt.run_until_idle(skip_time=False)
        assert requests(handle, "timer") == [b'{"seconds":3600.0}']
        assert recorded(handle) == [("timer", "sleep", "pending")]
