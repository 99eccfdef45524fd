"""ctx.wait_for_condition's check errors (AWS wait_for_condition 6.7, 6.8): a check that
raises is not retried unless a retry policy is given, on the embedded runtime."""

from __future__ import annotations

from typing import Any

import pytest

from lambda_workflow import (
    RetryPolicy,
    StepError,
    WorkflowContext,
    WorkflowFailedError,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.local import LocalRuntime

CHECKS: list[int] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    CHECKS.clear()


def flaky(state: int) -> int:
    """Raises on its first two runs, then counts up."""
    CHECKS.append(state)
    if len(CHECKS) <= 2:
        raise ConnectionError(f"status service down (run {len(CHECKS)})")
    return state + 1


def _stop_at_one(state: int, attempt: int) -> float | None:
    return None if state >= 1 else 5.0


@workflow
async def poll_once(ctx: WorkflowContext[None]) -> int:
    return await ctx.wait_for_condition(flaky, 0, _stop_at_one, name="status")


@workflow
async def poll_with_retry(ctx: WorkflowContext[None]) -> int:
    return await ctx.wait_for_condition(
        flaky, 0, _stop_at_one, name="status",
        retry=RetryPolicy(max_attempts=3, initial_delay=1, jitter="none"))


@workflow
async def poll_and_recover(ctx: WorkflowContext[None]) -> str:
    try:
        await ctx.wait_for_condition(flaky, 0, _stop_at_one, name="status")
    except StepError as exc:
        await ctx.sleep(60)  # a replay after this must not run the check again
        return f"recovered from {exc.error_type}"
    return "no error"


def _runtime(*workflows: Any) -> LocalRuntime:
    rt = LocalRuntime(clock=VirtualClock(1_700_000_000.0))
    rt.register(*workflows)
    return rt


def test_a_check_that_raises_fails_at_once() -> None:
    """wait_for_condition 6.7: the first check raises; it is not retried, the operation fails
    with the check's error and so does the workflow. Before this, the step's default policy
    ran the check three times, on two retry timers."""
    with _runtime(poll_once) as rt:
        handle = rt.start(poll_once, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            handle.result()
        ops = [(op.kind, op.name) for op in handle.history().operations]
    assert failed.value.error_type == StepError.__name__
    assert "ConnectionError" in str(failed.value)
    assert "run 1" in str(failed.value)
    assert CHECKS == [0]
    assert ops == [("step", "status")]


def test_a_caught_check_error_is_not_rerun_on_replay() -> None:
    """wait_for_condition 6.8: the handler catches the failure and recovers; the replays
    after its sleep return the recorded failure without checking again."""
    with _runtime(poll_and_recover) as rt:
        handle = rt.start(poll_and_recover, None)
        rt.run_until_idle()
        assert handle.result() == "recovered from ConnectionError"
    assert CHECKS == [0]


def test_a_retry_policy_retries_the_check() -> None:
    """With ``retry``, a check that raised runs again after a retry timer, as a step does;
    the third attempt passes and the condition holds."""
    with _runtime(poll_with_retry) as rt:
        handle = rt.start(poll_with_retry, None)
        rt.run_until_idle()
        assert handle.result() == 1
        ops = [(op.kind, op.name) for op in handle.history().operations]
    assert CHECKS == [0, 0, 0]
    assert ops == [("step", "status"), ("timer", "retry:status"), ("step", "status"),
                   ("timer", "retry:status"), ("step", "status")]


@pytest.mark.parametrize("bad", [3, "none", {"max_attempts": 1}])
def test_a_bad_retry_is_refused_before_anything_is_recorded(bad: object) -> None:
    """A retry that is not a RetryPolicy fails the workflow with an error naming it, before
    the check runs."""
    @workflow(name="bad-retry")
    async def bad_retry(ctx: WorkflowContext[None]) -> int:
        return await ctx.wait_for_condition(flaky, 0, _stop_at_one, retry=bad)  # type: ignore[arg-type]

    with _runtime(bad_retry) as rt:
        handle = rt.start(bad_retry, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError, match="retry must be a RetryPolicy"):
            handle.result()
        assert handle.history().operations == []
    assert CHECKS == []
