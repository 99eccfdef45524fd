"""AWS durable-execution requirements for ``invoke`` (group invoke, ids 5.x), on the embedded
runtime. AWS's ``context.invoke`` of another function is ``ctx.call`` of a service (a Lambda
function replying through the queue) or ``ctx.child`` of a child workflow (a durable function
with its own history); both are shown."""

from __future__ import annotations

from typing import Any

import pytest

from lambda_workflow import (
    ChildWorkflowError,
    Serdes,
    Service,
    ServiceError,
    WorkflowContext,
    workflow,
)
from lambda_workflow.testing import implementation

from ._support import activations, failure, recorded, runtime

echo: Service[Any, Any] = Service("echo", Any, Any)
reject: Service[Any, Any] = Service("reject", Any, Any)
CALLS: list[object] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    CALLS.clear()


def _echo(value: Any) -> Any:
    CALLS.append(value)
    return value


def _reject(value: Any) -> Any:
    CALLS.append(value)
    raise ServiceError("TargetError", "the target failed")


SERVICES = [implementation(echo, _echo), implementation(reject, _reject)]


@workflow
async def echo_target(ctx: WorkflowContext[Any]) -> Any:
    """A child workflow that returns its input (AWS's echo target, as a durable function)."""
    return ctx.request


@workflow
async def failing_target(ctx: WorkflowContext[Any]) -> Any:
    raise ValueError("the target failed")


@workflow
async def invoke_call(ctx: WorkflowContext[Any]) -> Any:
    return await ctx.call(echo, ctx.request)


@workflow
async def invoke_child(ctx: WorkflowContext[Any]) -> Any:
    return await ctx.child(echo_target, ctx.request)


@pytest.mark.parametrize("wf", [invoke_call, invoke_child], ids=["call", "child"])
def test_invoke_5_1_the_target_echoes_the_input(wf: Any) -> None:
    with runtime(wf, echo_target, services=SERVICES) as rt:
        handle = rt.start(wf, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "abcdefgh"
        ops = handle.history().operations
        assert len(ops) == 1 and ops[0].state.value == "completed"
        assert ops[0].result == b'"abcdefgh"'


@workflow
async def invoke_named(ctx: WorkflowContext[dict[str, str]]) -> Any:
    return await ctx.call(echo, ctx.request["payload"], name=ctx.request["name"])


def test_invoke_5_2_an_invokes_explicit_name_is_recorded() -> None:
    """The recorded name carries the service and the call's name (shown as
    ``<name> (service echo)`` by the CLI)."""
    with runtime(invoke_named, services=SERVICES) as rt:
        handle = rt.start(invoke_named, {"name": "nm1234", "payload": "abcdefgh"})
        rt.run_until_idle()
        assert handle.result() == "abcdefgh"
        assert recorded(handle) == [("call", "echo\x1fnm1234", "completed")]
    assert CALLS == ["abcdefgh"]


def test_invoke_5_3_a_nested_object_comes_back_unchanged() -> None:
    value = {"nested": {"key": "value", "items": [1, 2, 3]}, "source": "test"}
    with runtime(invoke_call, services=SERVICES) as rt:
        handle = rt.start(invoke_call, value)
        rt.run_until_idle()
        assert handle.result() == value


@pytest.mark.parametrize("wf", [invoke_call, invoke_child], ids=["call", "child"])
def test_invoke_5_4_a_null_payload_returns_null(wf: Any) -> None:
    with runtime(wf, echo_target, services=SERVICES) as rt:
        handle = rt.start(wf, None)
        rt.run_until_idle()
        assert handle.result() is None


@workflow
async def invoke_reject(ctx: WorkflowContext[None]) -> Any:
    return await ctx.call(reject, None)


@workflow
async def invoke_failing_child(ctx: WorkflowContext[None]) -> Any:
    return await ctx.child(failing_target, None)


def test_invoke_5_5_a_failing_target_fails_the_execution() -> None:
    with runtime(invoke_reject, invoke_failing_child, failing_target,
                 services=SERVICES) as rt:
        called = rt.start(invoke_reject, None)
        child = rt.start(invoke_failing_child, None)
        rt.run_until_idle()
        call_error = failure(called)
        child_error = failure(child)
        assert recorded(called) == [("call", "reject", "failed")]
    assert call_error.error_type == "ServiceError"
    assert call_error.message.startswith("TargetError: the target failed")
    assert child_error.error_type == "ChildWorkflowError"
    assert "the target failed" in child_error.message


@workflow
async def invoke_caught(ctx: WorkflowContext[None]) -> str:
    try:
        return str(await ctx.call(reject, None))
    except ServiceError:
        pass
    try:
        return str(await ctx.child(failing_target, None))
    except ChildWorkflowError:
        return "fallback"


def test_invoke_5_6_a_caught_target_failure_lets_the_execution_succeed() -> None:
    with runtime(invoke_caught, failing_target, services=SERVICES) as rt:
        handle = rt.start(invoke_caught, None)
        rt.run_until_idle()
        assert handle.result() == "fallback"


@pytest.mark.parametrize("wf", [invoke_call, invoke_child], ids=["call", "child"])
def test_invoke_5_7_a_payload_near_lambdas_limit_goes_and_comes_back(wf: Any) -> None:
    """200 KB each way (Lambda's asynchronous payload limit is 256 KB); on AWS, payloads
    over the store's item limit go to the payload bucket."""
    payload = "x" * 200_000
    with runtime(wf, echo_target, services=SERVICES) as rt:
        handle = rt.start(wf, payload)
        rt.run_until_idle()
        assert handle.result() == payload


@workflow
async def invoke_then_wait(ctx: WorkflowContext[str]) -> Any:
    value = await ctx.call(echo, ctx.request)
    await ctx.sleep(1)
    return value


def test_invoke_5_9_replay_returns_the_recorded_result_without_invoking_again() -> None:
    with runtime(invoke_then_wait, services=SERVICES) as rt:
        handle = rt.start(invoke_then_wait, "once")
        rt.run_until_idle()
        assert handle.result() == "once"
        assert activations(handle) == 3  # start, the reply, the timer
        assert len(rt.invocations_of(echo)) == 1


@workflow
async def invoke_error_then_wait(ctx: WorkflowContext[None]) -> str:
    try:
        await ctx.call(reject, "x")
        caught = "no error"
    except ServiceError as exc:
        caught = exc.error_type
    await ctx.sleep(1)
    return caught


def test_invoke_5_10_replay_rethrows_the_recorded_error_without_invoking_again() -> None:
    with runtime(invoke_error_then_wait, services=SERVICES) as rt:
        handle = rt.start(invoke_error_then_wait, None)
        rt.run_until_idle()
        assert handle.result() == "TargetError"
        assert len(rt.invocations_of(reject)) == 1


def produce() -> str:
    return "from the step"


@workflow
async def step_then_invoke(ctx: WorkflowContext[None]) -> Any:
    value = await ctx.step(produce)
    return await ctx.call(echo, value)


def test_invoke_5_11_a_step_then_an_invoke_of_its_result() -> None:
    with runtime(step_then_invoke, services=SERVICES) as rt:
        handle = rt.start(step_then_invoke, None)
        rt.run_until_idle()
        assert handle.result() == "from the step"
        assert recorded(handle) == [("step", "produce", "completed"),
                                    ("call", "echo", "completed")]


def shout(value: str) -> str:
    return value.upper()


@workflow
async def invoke_then_step(ctx: WorkflowContext[str]) -> str:
    value = await ctx.call(echo, ctx.request)
    return await ctx.step(shout, str(value))


def test_invoke_5_12_an_invoke_then_a_step_using_its_result() -> None:
    with runtime(invoke_then_step, services=SERVICES) as rt:
        handle = rt.start(invoke_then_step, "hello")
        rt.run_until_idle()
        assert handle.result() == "HELLO"
        assert recorded(handle) == [("call", "echo", "completed"),
                                    ("step", "shout", "completed")]


@workflow
async def two_invokes(ctx: WorkflowContext[None]) -> list[Any]:
    first = await ctx.call(echo, "one")
    second = await ctx.child(echo_target, "two")
    return [first, second]


def test_invoke_5_14_two_invokes_in_sequence() -> None:
    with runtime(two_invokes, echo_target, services=SERVICES) as rt:
        handle = rt.start(two_invokes, None)
        rt.run_until_idle()
        assert handle.result() == ["one", "two"]
        assert recorded(handle) == [("call", "echo", "completed"),
                                    ("child", "echo_target", "completed")]


async def invoke_inside(c: WorkflowContext[Any]) -> Any:
    return await c.call(echo, c.request)


@workflow
async def invoke_in_child(ctx: WorkflowContext[str]) -> Any:
    return await ctx.run_in_child_context(invoke_inside)


def test_invoke_5_13_an_invoke_inside_a_child_context() -> None:
    with runtime(invoke_in_child, services=SERVICES) as rt:
        handle = rt.start(invoke_in_child, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "abcdefgh"
        ops = {op.kind: op for op in handle.history().operations}
        assert ops["call"].op_id.startswith(ops["context"].op_id + ".")
        assert ops["context"].state.value == "completed"


class UpperPayload(Serdes[str]):
    """invoke 5.15's payload serdes: the payload upper-cased before it is sent."""

    def serialize(self, value: str) -> str:
        return value.upper()

    def deserialize(self, data: str | bytes) -> str:
        return str(data)


class UpperResult(Serdes[str]):
    """invoke 5.16's result serdes: the result upper-cased when it is read."""

    def serialize(self, value: str) -> str:
        return value

    def deserialize(self, data: str | bytes) -> str:
        return str(data).upper()


payload_target: Service[str, str] = Service("payload-target", str, str,
                                            request_serdes=UpperPayload())
result_target: Service[str, str] = Service("result-target", str, str,
                                           response_serdes=UpperResult())
SERDES_SERVICES = [implementation(payload_target, _echo),
                   implementation(result_target, _echo)]


@workflow
async def invoke_payload_serdes(ctx: WorkflowContext[dict[str, str]]) -> str:
    return await ctx.call(payload_target, ctx.request["data"])


def test_invoke_5_15_a_custom_payload_serdes_transforms_what_the_target_receives() -> None:
    with runtime(invoke_payload_serdes, services=SERDES_SERVICES) as rt:
        handle = rt.start(invoke_payload_serdes, {"data": "hello"})
        rt.run_until_idle()
        assert handle.result() == "HELLO"
        [op] = handle.history().operations
    assert CALLS == ["HELLO"]
    assert op.request == b'{"serdes":"UpperPayload","text":"HELLO"}'


@workflow
async def invoke_result_serdes(ctx: WorkflowContext[str]) -> str:
    return await ctx.call(result_target, ctx.request)


def test_invoke_5_16_a_custom_result_serdes_transforms_the_result_when_read() -> None:
    with runtime(invoke_result_serdes, services=SERDES_SERVICES) as rt:
        handle = rt.start(invoke_result_serdes, "hello")
        rt.run_until_idle()
        assert handle.result() == "HELLO"
        [op] = handle.history().operations
    assert op.result == b'{"serdes":"UpperResult","text":"hello"}'  # recorded as sent
