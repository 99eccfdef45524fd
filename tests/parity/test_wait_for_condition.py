"""AWS durable-execution requirements for ``wait_for_condition`` (group wait_for_condition,
ids 6.x), on the embedded runtime: ``ctx.wait_for_condition(check, initial_state,
wait_strategy)``. Each check is a recorded ``step`` (its state) and each wait a ``timer``
(``poll:<name>``); AWS records one operation per check (docs/aws-parity.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lambda_workflow import Serdes, StepError, WorkflowContext, workflow

from ._support import activations, failure, recorded, requests, runtime

CHECKS: list[object] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    CHECKS.clear()


def increment(state: int) -> int:
    CHECKS.append(state)
    return state + 1


def _states(handle: Any) -> list[Any]:
    return [json.loads(op.result or b"null") for op in handle.history().operations
            if op.kind == "step"]


@workflow
async def poll_to_threshold(ctx: WorkflowContext[int]) -> int:
    threshold = ctx.request
    return await ctx.wait_for_condition(
        increment, 0, lambda state, attempt: None if state >= threshold else 1)


def test_wait_for_condition_6_1_polls_until_the_threshold_is_met() -> None:
    with runtime(poll_to_threshold) as rt:
        handle = rt.start(poll_to_threshold, 3)
        rt.run_until_idle()
        assert handle.result() == 3
        assert _states(handle) == [1, 2, 3]
        assert activations(handle) == 3
    assert CHECKS == [0, 1, 2]


def same(state: int) -> int:
    CHECKS.append(state)
    return state


@workflow
async def already_met(ctx: WorkflowContext[int]) -> int:
    return await ctx.wait_for_condition(same, ctx.request,
                                        lambda state, attempt: None if state >= 5 else 1)


def test_wait_for_condition_6_2_a_condition_met_at_once_does_not_suspend() -> None:
    with runtime(already_met) as rt:
        handle = rt.start(already_met, 5)
        rt.run_until_idle()
        assert handle.result() == 5
        assert recorded(handle) == [("step", "same", "completed")]
        assert activations(handle) == 1


@workflow
async def named_poll(ctx: WorkflowContext[int]) -> int:
    threshold = ctx.request
    return await ctx.wait_for_condition(
        increment, 0, lambda state, attempt: None if state >= threshold else 1,
        name="poll-status")


def test_wait_for_condition_6_3_the_explicit_name_is_recorded() -> None:
    with runtime(named_poll) as rt:
        handle = rt.start(named_poll, 2)
        rt.run_until_idle()
        assert handle.result() == 2
        assert recorded(handle) == [("step", "poll-status", "completed"),
                                    ("timer", "poll:poll-status", "completed"),
                                    ("step", "poll-status", "completed")]


@workflow
async def from_five(ctx: WorkflowContext[int]) -> int:
    threshold = ctx.request
    return await ctx.wait_for_condition(
        increment, 5, lambda state, attempt: None if state >= threshold else 1)


def test_wait_for_condition_6_4_the_initial_state_is_threaded_through_the_checks() -> None:
    with runtime(from_five) as rt:
        handle = rt.start(from_five, 8)
        rt.run_until_idle()
        assert handle.result() == 8
        assert _states(handle) == [6, 7, 8]
    assert CHECKS == [5, 6, 7]


@workflow
async def fixed_delay(ctx: WorkflowContext[int]) -> int:
    threshold = ctx.request
    return await ctx.wait_for_condition(
        increment, 0, lambda state, attempt: None if state >= threshold else 2)


def test_wait_for_condition_6_5_a_fixed_delay_strategy_waits_2_seconds_each_time() -> None:
    with runtime(fixed_delay) as rt:
        handle = rt.start(fixed_delay, 3)
        rt.run_until_idle()
        assert handle.result() == 3
        assert requests(handle, "timer") == [b'{"seconds":2.0}'] * 2


@workflow
async def never_met(ctx: WorkflowContext[int]) -> int:
    return await ctx.wait_for_condition(increment, ctx.request, lambda state, attempt: 2,
                                        max_attempts=3)


def test_wait_for_condition_6_6_max_attempts_exceeded_fails_the_execution() -> None:
    with runtime(never_met) as rt:
        handle = rt.start(never_met, 0)
        rt.run_until_idle()
        error = failure(handle)
        assert [kind for kind, _, _ in recorded(handle) if kind == "step"] == ["step"] * 3
    assert error.error_type == "ConditionNotMetError"
    assert CHECKS == [0, 1, 2]


def broken_check(state: int) -> int:
    CHECKS.append(state)
    raise RuntimeError("the status endpoint is down")


@workflow
async def check_raises(ctx: WorkflowContext[None]) -> int:
    return await ctx.wait_for_condition(broken_check, 0, lambda state, attempt: 1)


def test_wait_for_condition_6_7_a_check_that_raises_fails_it_without_retrying() -> None:
    with runtime(check_raises) as rt:
        handle = rt.start(check_raises, None)
        rt.run_until_idle()
        error = failure(handle)
        assert recorded(handle) == [("step", "broken_check", "failed")]
    assert CHECKS == [0]  # no internal retry, as on AWS
    assert error.error_type == "StepError"
    assert "RuntimeError: the status endpoint is down" in error.message


@workflow
async def check_raises_caught(ctx: WorkflowContext[None]) -> str:
    try:
        await ctx.wait_for_condition(broken_check, 0, lambda state, attempt: 1)
    except StepError:
        return "recovered"
    return "not reached"


def test_wait_for_condition_6_8_a_caught_check_failure_recovers() -> None:
    with runtime(check_raises_caught) as rt:
        handle = rt.start(check_raises_caught, None)
        rt.run_until_idle()
        assert handle.result() == "recovered"
        assert activations(handle) == 1
    assert CHECKS == [0]


def progress(state: dict[str, Any]) -> dict[str, Any]:
    attempts = state["attempts"] + 1
    return {"status": "DONE" if attempts >= 2 else "PENDING", "attempts": attempts}


@workflow
async def object_state(ctx: WorkflowContext[None]) -> dict[str, Any]:
    return await ctx.wait_for_condition(
        progress, {"status": "PENDING", "attempts": 0},
        lambda state, attempt: 1 if state["status"] == "PENDING" else None)


def test_wait_for_condition_6_9_an_object_state_round_trips() -> None:
    with runtime(object_state) as rt:
        handle = rt.start(object_state, None)
        rt.run_until_idle()
        assert handle.result() == {"status": "DONE", "attempts": 2}
        assert _states(handle) == [{"status": "PENDING", "attempts": 1},
                                   {"status": "DONE", "attempts": 2}]


def nothing(state: None) -> None:
    return None


@workflow
async def null_state(ctx: WorkflowContext[None]) -> None:
    return await ctx.wait_for_condition(nothing, None, lambda state, attempt: None)


def test_wait_for_condition_6_10_a_null_final_state_is_returned() -> None:
    with runtime(null_state) as rt:
        handle = rt.start(null_state, None)
        rt.run_until_idle()
        assert handle.result() is None
        assert activations(handle) == 1


def times_ten(value: int) -> int:
    return value * 10


@workflow
async def then_step(ctx: WorkflowContext[int]) -> int:
    threshold = ctx.request
    final = await ctx.wait_for_condition(
        increment, 0, lambda state, attempt: None if state >= threshold else 1)
    return await ctx.step(times_ten, final)


def test_wait_for_condition_6_12_its_result_feeds_a_following_step() -> None:
    with runtime(then_step) as rt:
        handle = rt.start(then_step, 2)
        rt.run_until_idle()
        assert handle.result() == 20
        assert recorded(handle)[-1] == ("step", "times_ten", "completed")
        assert activations(handle) == 2


@workflow
async def two_conditions(ctx: WorkflowContext[None]) -> int:
    first = await ctx.wait_for_condition(
        increment, 0, lambda state, attempt: None if state >= 2 else 1)
    return await ctx.wait_for_condition(
        increment, first, lambda state, attempt: None if state >= 4 else 1)


def test_wait_for_condition_6_13_two_in_sequence_the_first_seeding_the_second() -> None:
    with runtime(two_conditions) as rt:
        handle = rt.start(two_conditions, None)
        rt.run_until_idle()
        assert handle.result() == 4
        assert _states(handle) == [1, 2, 3, 4]
        assert activations(handle) == 3


class Encoded(Serdes[str]):
    """wait_for_condition 6.11's serdes: the state encoded as ``state:<value>``."""

    def serialize(self, value: str) -> str:
        return f"state:{value}"

    def deserialize(self, data: str | bytes) -> str:
        text = str(data)
        assert text.startswith("state:"), text
        return text.removeprefix("state:")


def append_x(state: str) -> str:
    CHECKS.append(state)
    return state + "x"


@workflow
async def serdes_state(ctx: WorkflowContext[None]) -> str:
    return await ctx.wait_for_condition(
        append_x, "", lambda state, attempt: None if len(state) >= 2 else 1,
        serdes=Encoded())


def test_wait_for_condition_6_11_a_custom_serdes_for_the_state_across_suspensions() -> None:
    with runtime(serdes_state) as rt:
        handle = rt.start(serdes_state, None)
        rt.run_until_idle()
        assert handle.result() == "xx"
        assert _states(handle) == [{"serdes": "Encoded", "text": "state:x"},
                                   {"serdes": "Encoded", "text": "state:xx"}]
        assert activations(handle) == 2
    assert CHECKS == ["", "x"]
