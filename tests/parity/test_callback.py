"""AWS durable-execution requirements for ``callback`` (group callback, ids 4.x), on the
embedded runtime: ``context.create_callback`` is ``ctx.create_callback``; the external
system's success, failure and heartbeat are the runtime's ``complete_callback``,
``fail_callback`` and ``heartbeat_callback`` (the client's on AWS)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from pydantic import BaseModel, field_validator

from lambda_workflow import (
    CallbackError,
    CallbackTimeoutError,
    InstanceStatus,
    Serdes,
    WorkflowContext,
    workflow,
)

from ._support import activations, failure, recorded, runtime

TOKENS: dict[str, str] = {}
RUNS: list[str] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    TOKENS.clear()
    RUNS.clear()


def _callbacks(handle: Any) -> list[tuple[str, str, str]]:
    return [entry for entry in recorded(handle) if entry[0] == "callback"]


@workflow
async def named_by_input(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback(ctx.request, str)
    TOKENS[ctx.request] = cb.token
    return await cb


def test_callback_4_1_an_external_success_completes_the_callback() -> None:
    with runtime(named_by_input) as rt:
        handle = rt.start(named_by_input, "cb-name-01")
        rt.run_until_idle(skip_time=False)
        assert _callbacks(handle) == [("callback", "cb-name-01", "pending")]
        rt.complete_callback(TOKENS["cb-name-01"], "payload-0001")
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "payload-0001"
        assert _callbacks(handle) == [("callback", "cb-name-01", "completed")]
        assert handle.history().operations[0].result == b'"payload-0001"'
        assert activations(handle) == 2


@workflow
async def approval(ctx: WorkflowContext[None]) -> str:
    cb = ctx.create_callback("approval", str)
    TOKENS["approval"] = cb.token
    return await cb


def test_callback_4_2_the_callbacks_explicit_name_is_recorded() -> None:
    with runtime(approval) as rt:
        handle = rt.start(approval, None)
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(TOKENS["approval"], "yes")
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "yes"
        assert _callbacks(handle) == [("callback", "approval", "completed")]


@workflow
async def with_timeout(ctx: WorkflowContext[str]) -> str:
    return await ctx.create_callback(ctx.request, str, timeout=5)


def test_callback_4_3_an_unanswered_callback_times_out_and_fails_the_execution() -> None:
    with runtime(with_timeout) as rt:
        handle = rt.start(with_timeout, "cb-timeout")
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        rt.advance_time(5)
        rt.run_until_idle(skip_time=False)
        error = failure(handle)
        # Recorded as the timeout's timer firing; the callback itself stays pending.
        assert ("timer", "timeout:cb-timeout", "completed") in recorded(handle)
    assert error.error_type == "CallbackTimeoutError"


@workflow
async def with_heartbeat(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback(ctx.request, str, heartbeat_timeout=5)
    TOKENS[ctx.request] = cb.token
    return await cb


def test_callback_4_4_no_heartbeat_within_the_heartbeat_timeout_fails_it() -> None:
    with runtime(with_heartbeat) as rt:
        handle = rt.start(with_heartbeat, "cb-heartbeat")
        rt.run_until_idle(skip_time=False)
        rt.advance_time(5)
        rt.run_until_idle(skip_time=False)
        error = failure(handle)
    assert error.error_type == "CallbackHeartbeatTimeoutError"


@workflow
async def heartbeat_then_success(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback(ctx.request, str, heartbeat_timeout=10)
    TOKENS[ctx.request] = cb.token
    return await cb


def test_callback_4_5_a_heartbeat_keeps_it_alive_until_success() -> None:
    with runtime(heartbeat_then_success) as rt:
        handle = rt.start(heartbeat_then_success, "cb-beat")
        rt.run_until_idle(skip_time=False)
        rt.advance_time(8)
        rt.heartbeat_callback(TOKENS["cb-beat"])
        rt.run_until_idle(skip_time=False)
        rt.advance_time(8)  # 16 s after the start, 8 s after the heartbeat
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        rt.complete_callback(TOKENS["cb-beat"], "done")
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "done"


def test_callback_4_6_an_external_failure_fails_the_execution_with_its_message() -> None:
    with runtime(named_by_input) as rt:
        handle = rt.start(named_by_input, "cb-fail")
        rt.run_until_idle(skip_time=False)
        rt.fail_callback(TOKENS["cb-fail"], "RejectedError", "not approved")
        rt.run_until_idle(skip_time=False)
        error = failure(handle)
        assert handle.history().operations[0].result == (
            b'{"details":null,"message":"not approved","type":"RejectedError"}')
    assert error.error_type == "CallbackFailedError"
    assert "RejectedError: not approved" in error.message


def note(text: str) -> str:
    RUNS.append(text)
    return text


@workflow
async def callback_step_wait(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback(ctx.request, str)
    TOKENS[ctx.request] = cb.token
    await ctx.step(note, "step between")
    return await cb


def test_callback_4_7_callback_then_step_then_a_failed_result_fails_it() -> None:
    with runtime(callback_step_wait) as rt:
        handle = rt.start(callback_step_wait, "cb-step")
        rt.run_until_idle(skip_time=False)
        rt.fail_callback(TOKENS["cb-step"], "RejectedError", "not approved")
        rt.run_until_idle(skip_time=False)
        error = failure(handle)
        assert recorded(handle)[:2] == [("callback", "cb-step", "failed"),
                                        ("step", "note", "completed")]
    assert error.error_type == "CallbackFailedError"
    assert RUNS == ["step between"]


@workflow
async def callback_step_timeout(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback(ctx.request, str, timeout=5)
    await ctx.step(note, "step between")
    return await cb


def test_callback_4_8_callback_then_step_then_a_timeout_fails_it() -> None:
    with runtime(callback_step_timeout) as rt:
        handle = rt.start(callback_step_timeout, "cb-step-timeout")
        rt.run_until_idle()
        error = failure(handle)
    assert error.error_type == "CallbackTimeoutError"
    assert RUNS == ["step between"]


@workflow
async def callback_wait(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback(ctx.request, str)
    TOKENS[ctx.request] = cb.token
    await ctx.sleep(5)
    return await cb


def test_callback_4_9_a_success_during_a_wait_is_returned_after_the_wait() -> None:
    with runtime(callback_wait) as rt:
        handle = rt.start(callback_wait, "cb-wait")
        rt.run_until_idle(skip_time=False)
        rt.advance_time(1)
        rt.complete_callback(TOKENS["cb-wait"], "payload")
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING  # the wait is still pending
        rt.advance_time(4)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "payload"
        assert activations(handle) == 3


def test_callback_4_10_a_failure_during_a_wait_is_raised_after_the_wait() -> None:
    with runtime(callback_wait) as rt:
        handle = rt.start(callback_wait, "cb-wait-fail")
        rt.run_until_idle(skip_time=False)
        rt.advance_time(1)
        rt.fail_callback(TOKENS["cb-wait-fail"], "RejectedError", "not approved")
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        rt.advance_time(4)
        rt.run_until_idle(skip_time=False)
        error = failure(handle)
        assert activations(handle) == 3
    assert error.error_type == "CallbackFailedError"


@workflow
async def timeout_during_wait(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback(ctx.request, str, timeout=3)
    await ctx.sleep(6)
    return await cb


def test_callback_4_11_a_timeout_during_a_wait_is_raised_after_the_wait() -> None:
    with runtime(timeout_during_wait) as rt:
        handle = rt.start(timeout_during_wait, "cb-wait-timeout")
        rt.run_until_idle(skip_time=False)
        rt.advance_time(3)
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        rt.advance_time(3)
        rt.run_until_idle(skip_time=False)
        error = failure(handle)
        assert activations(handle) == 3
    assert error.error_type == "CallbackTimeoutError"


@workflow
async def success_then_wait(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback(ctx.request, str)
    TOKENS[ctx.request] = cb.token
    value = await cb
    await ctx.sleep(2)
    return value


def test_callback_4_12_success_then_a_wait_replays_the_callback() -> None:
    with runtime(success_then_wait) as rt:
        handle = rt.start(success_then_wait, "cb-then-wait")
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(TOKENS["cb-then-wait"], "payload")
        rt.run_until_idle()
        assert handle.result() == "payload"
        assert activations(handle) == 3


@workflow
async def failure_caught_then_wait(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback(ctx.request, str, timeout=3)
    TOKENS[ctx.request] = cb.token
    try:
        value = await cb
    except CallbackError as exc:
        value = f"{type(exc).__name__}: {exc.error_type}"
    await ctx.sleep(2)
    return value


def test_callback_4_13_a_caught_failure_then_a_wait_returns() -> None:
    with runtime(failure_caught_then_wait) as rt:
        handle = rt.start(failure_caught_then_wait, "cb-caught")
        rt.run_until_idle(skip_time=False)
        rt.fail_callback(TOKENS["cb-caught"], "RejectedError", "not approved")
        rt.run_until_idle()
        assert handle.result() == "CallbackFailedError: RejectedError"
        assert activations(handle) == 3


def test_callback_4_14_a_caught_timeout_then_a_wait_returns() -> None:
    with runtime(failure_caught_then_wait) as rt:
        handle = rt.start(failure_caught_then_wait, "cb-caught-timeout")
        rt.run_until_idle()
        assert handle.result().startswith(CallbackTimeoutError.__name__)
        assert handle.status() is InstanceStatus.COMPLETED


class Received(BaseModel):
    id: str
    message: str
    timestamp: int

    @field_validator("timestamp", mode="before")
    @classmethod
    def _epoch(cls, value: object) -> object:
        if isinstance(value, str):
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        return value


@workflow
async def typed_payload(ctx: WorkflowContext[str]) -> dict[str, Any]:
    cb = ctx.create_callback(ctx.request, Received)
    TOKENS[ctx.request] = cb.token
    return {"received": (await cb).model_dump()}


def test_callback_4_15_the_result_type_turns_the_payload_into_a_typed_object() -> None:
    """AWS's custom deserializer: here the callback's result type (a pydantic model whose
    validator parses the timestamp) does that work; a Serdes is issue 12 item 1."""
    with runtime(typed_payload) as rt:
        handle = rt.start(typed_payload, "cb-typed")
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(TOKENS["cb-typed"], {"id": "abcd1234", "message": "hello",
                                                 "timestamp": "2026-01-01T00:00:00.000Z"})
        rt.run_until_idle(skip_time=False)
        assert handle.result() == {"received": {"id": "abcd1234", "message": "hello",
                                                "timestamp": 1767225600}}


@workflow
async def numeric_payload(ctx: WorkflowContext[str]) -> dict[str, int]:
    cb = ctx.create_callback(ctx.request, int)
    TOKENS[ctx.request] = cb.token
    count = await cb
    return {"count": count, "doubled": count * 2}


def test_callback_4_16_a_numeric_payload_comes_back_as_a_number() -> None:
    with runtime(numeric_payload) as rt:
        handle = rt.start(numeric_payload, "cb-number")
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(TOKENS["cb-number"], 42)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == {"count": 42, "doubled": 84}


@workflow
async def two_sequential(ctx: WorkflowContext[list[str]]) -> list[str]:
    a = ctx.create_callback(ctx.request[0], str)
    TOKENS[ctx.request[0]] = a.token
    first = await a
    b = ctx.create_callback(ctx.request[1], str)
    TOKENS[ctx.request[1]] = b.token
    return [first, await b]


def test_callback_4_17_two_callbacks_created_and_awaited_one_after_the_other() -> None:
    with runtime(two_sequential) as rt:
        handle = rt.start(two_sequential, ["cb-a", "cb-b"])
        rt.run_until_idle(skip_time=False)
        assert _callbacks(handle) == [("callback", "cb-a", "pending")]
        rt.complete_callback(TOKENS["cb-a"], "payload-a")
        rt.run_until_idle(skip_time=False)
        assert _callbacks(handle) == [("callback", "cb-a", "completed"),
                                      ("callback", "cb-b", "pending")]
        rt.complete_callback(TOKENS["cb-b"], "payload-b")
        rt.run_until_idle(skip_time=False)
        assert handle.result() == ["payload-a", "payload-b"]
        assert activations(handle) == 3


@workflow
async def both_then_in_order(ctx: WorkflowContext[list[str]]) -> list[str]:
    a = ctx.create_callback(ctx.request[0], str)
    b = ctx.create_callback(ctx.request[1], str)
    TOKENS[ctx.request[0]], TOKENS[ctx.request[1]] = a.token, b.token
    first = await a
    return [first, await b]


@workflow
async def both_then_reversed(ctx: WorkflowContext[list[str]]) -> list[str]:
    a = ctx.create_callback(ctx.request[0], str)
    b = ctx.create_callback(ctx.request[1], str)
    TOKENS[ctx.request[0]], TOKENS[ctx.request[1]] = a.token, b.token
    second = await b
    return [await a, second]


@pytest.mark.parametrize("wf", [both_then_in_order, both_then_reversed],
                         ids=["4_18_in_order", "4_19_reverse_order"])
def test_callback_4_18_and_4_19_two_callbacks_created_then_awaited(wf: Any) -> None:
    """Both callbacks are created in the first invocation; A completes first, then B; the
    result is the same whichever the workflow awaits first."""
    with runtime(wf) as rt:
        handle = rt.start(wf, ["cb-a", "cb-b"])
        rt.run_until_idle(skip_time=False)
        assert _callbacks(handle) == [("callback", "cb-a", "pending"),
                                      ("callback", "cb-b", "pending")]
        rt.complete_callback(TOKENS["cb-a"], "payload-a")
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        rt.complete_callback(TOKENS["cb-b"], "payload-b")
        rt.run_until_idle(skip_time=False)
        assert handle.result() == ["payload-a", "payload-b"]
        assert activations(handle) == 3




class Delivery(BaseModel):
    id: str
    message: str
    timestamp: int


class ReceivedSerdes(Serdes[Delivery]):
    """callback 4.15's deserializer: the raw JSON text into a typed object, the ISO
    timestamp into epoch seconds."""

    def serialize(self, value: Delivery) -> str:
        return value.model_dump_json()

    def deserialize(self, data: str | bytes) -> Delivery:
        import json

        raw = json.loads(data)
        when = datetime.fromisoformat(raw["timestamp"].replace("Z", "+00:00"))
        return Delivery(id=raw["id"], message=raw["message"], timestamp=int(when.timestamp()))


@workflow
async def serdes_payload(ctx: WorkflowContext[str]) -> dict[str, Any]:
    cb = ctx.create_callback(ctx.request, Delivery, serdes=ReceivedSerdes())
    TOKENS[ctx.request] = cb.token
    received = await cb
    return {"received": received.model_dump()}


def test_callback_4_15_a_custom_serdes_deserializes_the_payload_into_a_typed_object() -> None:
    with runtime(serdes_payload) as rt:
        handle = rt.start(serdes_payload, "cb-serdes")
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(TOKENS["cb-serdes"], {"id": "abcd1234", "message": "hello",
                                                   "timestamp": "2026-01-01T00:00:00.000Z"})
        rt.run_until_idle(skip_time=False)
        assert handle.result() == {"received": {"id": "abcd1234", "message": "hello",
                                                "timestamp": 1767225600}}


class CountSerdes(Serdes[int]):
    """callback 4.16's deserializer: the payload parsed into a number."""

    def serialize(self, value: int) -> str:
        return str(value)

    def deserialize(self, data: str | bytes) -> int:
        return int(data)


@workflow
async def serdes_number(ctx: WorkflowContext[str]) -> dict[str, int]:
    cb = ctx.create_callback(ctx.request, int, serdes=CountSerdes())
    TOKENS[ctx.request] = cb.token
    count = await cb
    return {"count": count, "doubled": count * 2}


def test_callback_4_16_a_custom_serdes_parses_the_payload_into_a_number() -> None:
    with runtime(serdes_number) as rt:
        handle = rt.start(serdes_number, "cb-serdes-number")
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(TOKENS["cb-serdes-number"], 42)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == {"count": 42, "doubled": 84}
