"""AWS durable-execution requirements for ``wait_for_callback`` (group wait_for_callback,
ids 7.x), on the embedded runtime: ``ctx.wait_for_callback(name, submitter, type)`` records
the ``callback`` and the submitter's ``step`` (``submit:<name>``); AWS wraps both in a
context operation (docs/aws-parity.md)."""

from __future__ import annotations

import pytest

from lambda_workflow import (
    CallbackError,
    InstanceStatus,
    RetryPolicy,
    WorkflowContext,
    current_step,
    workflow,
)

from ._support import activations, failure, recorded, runtime

SUBMITTED: list[str] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    SUBMITTED.clear()


def submit(token: str) -> None:
    """The submitter: hands the token to the "external system" (this list)."""
    SUBMITTED.append(token)


@workflow
async def wfc_basic(ctx: WorkflowContext[str]) -> str:
    return await ctx.wait_for_callback(ctx.request, submit, str)


def test_wait_for_callback_7_1_the_external_success_is_the_result() -> None:
    with runtime(wfc_basic) as rt:
        handle = rt.start(wfc_basic, "wfc-name01")
        rt.run_until_idle(skip_time=False)
        assert recorded(handle)[0] == ("callback", "wfc-name01", "pending")
        assert ("step", "submit:wfc-name01", "completed") in recorded(handle)
        rt.complete_callback(SUBMITTED[0], "payload-0001")
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "payload-0001"
        assert recorded(handle)[0] == ("callback", "wfc-name01", "completed")
        assert activations(handle) == 2
    assert len(SUBMITTED) == 1


@workflow
async def wfc_static(ctx: WorkflowContext[None]) -> str:
    return await ctx.wait_for_callback("approval", submit, str)


def test_wait_for_callback_7_2_an_explicit_static_name_is_recorded() -> None:
    with runtime(wfc_static) as rt:
        handle = rt.start(wfc_static, None)
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(SUBMITTED[0], "yes")
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "yes"
        assert [entry for entry in recorded(handle) if entry[0] in ("callback", "step")] == [
            ("callback", "approval", "completed"), ("step", "submit:approval", "completed")]


def test_wait_for_callback_7_4_an_uncaught_external_failure_fails_the_execution() -> None:
    with runtime(wfc_basic) as rt:
        handle = rt.start(wfc_basic, "wfc-fail")
        rt.run_until_idle(skip_time=False)
        rt.fail_callback(SUBMITTED[0], "RejectedError", "not approved")
        rt.run_until_idle(skip_time=False)
        error = failure(handle)
    assert error.error_type == "CallbackFailedError"
    assert "RejectedError: not approved" in error.message


@workflow
async def wfc_timeout(ctx: WorkflowContext[str]) -> str:
    return await ctx.wait_for_callback(ctx.request, submit, str, timeout=3)


def test_wait_for_callback_7_5_no_completion_within_the_timeout_fails_it() -> None:
    with runtime(wfc_timeout) as rt:
        handle = rt.start(wfc_timeout, "wfc-timeout")
        rt.run_until_idle(skip_time=False)
        rt.advance_time(3)
        rt.run_until_idle(skip_time=False)
        error = failure(handle)
    assert error.error_type == "CallbackTimeoutError"


@workflow
async def wfc_recovers(ctx: WorkflowContext[str]) -> str:
    try:
        return await ctx.wait_for_callback(ctx.request, submit, str)
    except CallbackError:
        return "recovered"


def test_wait_for_callback_7_6_a_caught_external_failure_recovers() -> None:
    with runtime(wfc_recovers) as rt:
        handle = rt.start(wfc_recovers, "wfc-recover")
        rt.run_until_idle(skip_time=False)
        rt.fail_callback(SUBMITTED[0], "RejectedError", "not approved")
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "recovered"


def failing_submit(token: str) -> None:
    SUBMITTED.append(f"attempt {current_step().attempt}")
    raise ConnectionError("the approver's inbox is down")


@workflow
async def wfc_submitter_fails(ctx: WorkflowContext[str]) -> str:
    return await ctx.wait_for_callback(
        ctx.request, failing_submit, str,
        retry=RetryPolicy(max_attempts=2, initial_delay=1, jitter="none"))


def test_wait_for_callback_7_7_submitter_retries_exhausted_fail_the_execution() -> None:
    with runtime(wfc_submitter_fails) as rt:
        handle = rt.start(wfc_submitter_fails, "wfc-submit")
        rt.run_until_idle()
        error = failure(handle)
        assert [entry for entry in recorded(handle) if entry[0] == "step"] == [
            ("step", "submit:wfc-submit", "failed")] * 2
        assert recorded(handle)[0] == ("callback", "wfc-submit", "pending")
    assert SUBMITTED == ["attempt 1", "attempt 2"]
    assert error.error_type == "StepError"
    assert "ConnectionError" in error.message


@workflow
async def wfc_two(ctx: WorkflowContext[None]) -> str:
    await ctx.wait_for_callback("first", submit, str)
    return await ctx.wait_for_callback("second", submit, str)


def test_wait_for_callback_7_9_two_in_sequence_return_the_second_result() -> None:
    with runtime(wfc_two) as rt:
        handle = rt.start(wfc_two, None)
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(SUBMITTED[0], "payload-1")
        rt.run_until_idle(skip_time=False)
        assert [e for e in recorded(handle) if e[0] == "callback"] == [
            ("callback", "first", "completed"), ("callback", "second", "pending")]
        rt.complete_callback(SUBMITTED[1], "payload-2")
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "payload-2"
        assert activations(handle) == 3


def fixed_data() -> str:
    return "data"


@workflow
async def wfc_mixed(ctx: WorkflowContext[str]) -> str:
    await ctx.sleep(1)
    await ctx.step(fixed_data)
    return await ctx.wait_for_callback(ctx.request, submit, str)


def test_wait_for_callback_7_10_after_a_wait_and_a_step() -> None:
    with runtime(wfc_mixed) as rt:
        handle = rt.start(wfc_mixed, "wfc-mixed")
        rt.run_until_idle()  # the wait fires, then the callback is pending
        assert handle.status() is InstanceStatus.RUNNING
        assert recorded(handle)[:3] == [("timer", "sleep", "completed"),
                                        ("step", "fixed_data", "completed"),
                                        ("callback", "wfc-mixed", "pending")]
        rt.complete_callback(SUBMITTED[0], "payload")
        rt.run_until_idle()
        assert handle.result() == "payload"
        assert activations(handle) == 3


@workflow
async def wfc_json(ctx: WorkflowContext[str]) -> str:
    value = await ctx.wait_for_callback(ctx.request, submit, dict)
    return str(value["status"])


def test_wait_for_callback_7_11_a_json_object_payload_is_deserialized() -> None:
    with runtime(wfc_json) as rt:
        handle = rt.start(wfc_json, "wfc-json")
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(SUBMITTED[0], {"status": "approved"})
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "approved"


@workflow
async def wfc_heartbeat(ctx: WorkflowContext[str]) -> str:
    return await ctx.wait_for_callback(ctx.request, submit, str, heartbeat_timeout=5)


def test_wait_for_callback_7_12_no_heartbeat_within_the_heartbeat_timeout_fails() -> None:
    with runtime(wfc_heartbeat) as rt:
        handle = rt.start(wfc_heartbeat, "wfc-heartbeat")
        rt.run_until_idle(skip_time=False)
        rt.advance_time(5)
        rt.run_until_idle(skip_time=False)
        error = failure(handle)
    assert error.error_type == "CallbackHeartbeatTimeoutError"


@workflow
async def wfc_heartbeat_10(ctx: WorkflowContext[str]) -> str:
    return await ctx.wait_for_callback(ctx.request, submit, str, heartbeat_timeout=10)


def test_wait_for_callback_7_13_a_heartbeat_then_success() -> None:
    with runtime(wfc_heartbeat_10) as rt:
        handle = rt.start(wfc_heartbeat_10, "wfc-beat")
        rt.run_until_idle(skip_time=False)
        rt.advance_time(8)
        rt.heartbeat_callback(SUBMITTED[0])
        rt.run_until_idle(skip_time=False)
        rt.advance_time(8)
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        rt.complete_callback(SUBMITTED[0], "payload")
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "payload"


@workflow
async def wfc_timeout_caught(ctx: WorkflowContext[str]) -> str:
    try:
        return await ctx.wait_for_callback(ctx.request, submit, str, timeout=3)
    except CallbackError:
        return "timed-out-handled"


def test_wait_for_callback_7_14_a_caught_timeout_recovers() -> None:
    with runtime(wfc_timeout_caught) as rt:
        handle = rt.start(wfc_timeout_caught, "wfc-timeout-caught")
        rt.run_until_idle()
        assert handle.result() == "timed-out-handled"


@workflow
async def wfc_null(ctx: WorkflowContext[str]) -> None:
    return await ctx.wait_for_callback(ctx.request, submit, type(None))


def test_wait_for_callback_7_15_a_success_without_a_payload_returns_null() -> None:
    with runtime(wfc_null) as rt:
        handle = rt.start(wfc_null, "wfc-null")
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(SUBMITTED[0])
        rt.run_until_idle(skip_time=False)
        assert handle.result() is None
        assert handle.status() is InstanceStatus.COMPLETED




async def wrapped_wait(c: WorkflowContext[str]) -> str:
    return await c.wait_for_callback(c.request, submit, str)


@workflow
async def wfc_in_child(ctx: WorkflowContext[str]) -> str:
    return await ctx.run_in_child_context(wrapped_wait, name="wrapper")


def test_wait_for_callback_7_8_inside_a_child_context() -> None:
    with runtime(wfc_in_child) as rt:
        handle = rt.start(wfc_in_child, "wfc-in-child")
        rt.run_until_idle(skip_time=False)
        ops = {op.kind: op for op in handle.history().operations}
        assert ops["context"].name == "wrapper"
        assert ops["callback"].op_id.startswith(ops["context"].op_id + ".")
        rt.complete_callback(SUBMITTED[0], "payload")
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "payload"
        assert ops["context"].op_id in {op.op_id for op in handle.history().operations
                                        if op.state.value == "completed"}
