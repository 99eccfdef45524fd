"""AWS durable-execution requirements for ``step`` (group step, ids 1.x), on the embedded
runtime: ``context.step`` is ``ctx.step``. Each test is named after the requirement it
shows; docs/aws-parity.md lists every requirement with its status."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from lambda_workflow import (
    RetryPolicy,
    Serdes,
    StepError,
    WorkflowContext,
    current_step,
    step,
    workflow,
)
from lambda_workflow.local import LocalRuntime

from ._support import failure, recorded, requests, runtime

RUNS: list[str] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    RUNS.clear()


def greet(name: str) -> str:
    RUNS.append(f"greet {name}")
    return f"Hello, {name}!"


@workflow
async def greeting(ctx: WorkflowContext[str]) -> str:
    return await ctx.step(greet, ctx.request)


def test_step_1_1_basic_step_succeeds_on_first_attempt() -> None:
    with runtime(greeting) as rt:
        handle = rt.start(greeting, "World")
        rt.run_until_idle()
        assert handle.result() == "Hello, World!"
        assert recorded(handle) == [("step", "greet", "completed")]
    assert RUNS == ["greet World"]


@step(name="custom_step_name")
def named_greet(name: str) -> str:
    return f"Hello, {name}!"


@workflow
async def named_greeting(ctx: WorkflowContext[str]) -> str:
    return await ctx.step(named_greet, ctx.request)


def test_step_1_2_step_with_name_records_the_name() -> None:
    with runtime(named_greeting) as rt:
        handle = rt.start(named_greeting, "World")
        rt.run_until_idle()
        assert handle.result() == "Hello, World!"
        assert recorded(handle) == [("step", "custom_step_name", "completed")]


def step_one() -> str:
    return "first"


def step_two(previous: str) -> str:
    return f"{previous}_second"


@workflow
async def sequential(ctx: WorkflowContext[None]) -> str:
    first = await ctx.step(step_one)
    return await ctx.step(step_two, first)


def test_step_1_3_second_step_uses_the_first_steps_result() -> None:
    with runtime(sequential) as rt:
        handle = rt.start(sequential, None)
        rt.run_until_idle()
        assert handle.result() == "first_second"
        assert recorded(handle) == [("step", "step_one", "completed"),
                                    ("step", "step_two", "completed")]


def build_response(event: dict[str, Any]) -> dict[str, Any]:
    return {"user": {"name": event["name"], "tags": event["tags"]}, "count": len(event["tags"])}


@workflow
async def complex_result(ctx: WorkflowContext[dict[str, Any]]) -> dict[str, Any]:
    return await ctx.step(build_response, ctx.request)


def test_step_1_4_returns_a_nested_object_through_its_round_trip() -> None:
    with runtime(complex_result) as rt:
        handle = rt.start(complex_result, {"name": "Alice", "tags": ["admin", "active"]})
        rt.run_until_idle()
        assert handle.result() == {"user": {"name": "Alice", "tags": ["admin", "active"]},
                                   "count": 2}
        result = handle.history().operations[0].result or b""
    assert json.loads(result) == {"user": {"name": "Alice", "tags": ["admin", "active"]},
                                  "count": 2}


def do_nothing() -> None:
    return None


@workflow
async def null_result(ctx: WorkflowContext[None]) -> None:
    return await ctx.step(do_nothing)


def test_step_1_5_a_null_result_is_recorded_and_returned() -> None:
    with runtime(null_result) as rt:
        handle = rt.start(null_result, None)
        rt.run_until_idle()
        assert handle.result() is None
        assert handle.history().operations[0].result == b"null"


step_log = logging.getLogger("parity.step")


def logged_greet(name: str) -> str:
    step_log.info("Greeting step started for: %s", name)
    result = f"Hello, {name}!"
    step_log.info("Greeting step completed with: %s", result)
    return result


@workflow
async def logging_greeting(ctx: WorkflowContext[str]) -> str:
    value = await ctx.step(logged_greet, ctx.request)
    await ctx.sleep(1)  # a replay follows: the step's lines must not repeat
    return value


def test_step_1_7_lines_logged_in_a_step_body_appear_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """AWS's step_context.logger: here any logger works, since the body runs once."""
    caplog.set_level(logging.INFO, logger="parity.step")
    with runtime(logging_greeting) as rt:
        handle = rt.start(logging_greeting, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "Hello, abcdefgh!"
    lines = [r.getMessage() for r in caplog.records if r.name == "parity.step"]
    assert lines == ["Greeting step started for: abcdefgh",
                     "Greeting step completed with: Hello, abcdefgh!"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def compute() -> str:
    RUNS.append("compute")
    return "computed"


@workflow
async def step_then_wait(ctx: WorkflowContext[None]) -> str:
    value = await ctx.step(compute)
    await ctx.sleep(2)
    return value


def test_step_1_8_step_then_wait_replays_past_the_step() -> None:
    with runtime(step_then_wait) as rt:
        handle = rt.start(step_then_wait, None)
        rt.run_until_idle()
        assert handle.result() == "computed"
        assert recorded(handle) == [("step", "compute", "completed"),
                                    ("timer", "sleep", "completed")]
        assert requests(handle, "timer") == [b'{"seconds":2.0}']


def cached() -> str:
    RUNS.append("step executed")
    return "cached_value"


@workflow
async def replay_skips(ctx: WorkflowContext[None]) -> str:
    value = await ctx.step(cached)
    await ctx.sleep(1)
    return value


def test_step_1_9_replay_returns_the_recorded_result_without_running_the_body() -> None:
    with runtime(replay_skips) as rt:
        handle = rt.start(replay_skips, None)
        rt.run_until_idle()
        assert handle.result() == "cached_value"
        assert handle.history().instance.activations == 2
    assert RUNS == ["step executed"]


@step(retry=RetryPolicy(max_attempts=1))
def fails_once_recorded() -> str:
    RUNS.append("step executed")
    raise RuntimeError("permanent")


@workflow
async def replay_rethrows(ctx: WorkflowContext[None]) -> str:
    try:
        await ctx.step(fails_once_recorded)
    except StepError as exc:
        caught = f"{exc.error_type}: {exc.message}"
    await ctx.sleep(1)
    return caught


def test_step_1_10_replay_rethrows_the_recorded_error_without_running_the_body() -> None:
    with runtime(replay_rethrows) as rt:
        handle = rt.start(replay_rethrows, None)
        rt.run_until_idle()
        assert handle.result() == "RuntimeError: permanent"
        assert recorded(handle) == [("step", "fails_once_recorded", "failed"),
                                    ("timer", "sleep", "completed")]
    assert RUNS == ["step executed"]


@step(retry=RetryPolicy(max_attempts=2, initial_delay=1, jitter="none"))
def unreliable() -> str:
    if current_step().attempt == 1:
        raise ConnectionError("first attempt fails")
    return "Operation succeeded"


@workflow
async def retry_then_succeed(ctx: WorkflowContext[None]) -> str:
    return await ctx.step(unreliable)


def test_step_1_11_fails_then_succeeds_on_the_retry() -> None:
    with runtime(retry_then_succeed) as rt:
        handle = rt.start(retry_then_succeed, None)
        rt.run_until_idle()
        assert handle.result() == "Operation succeeded"
        assert recorded(handle) == [("step", "unreliable", "failed"),
                                    ("timer", "retry:unreliable", "completed"),
                                    ("step", "unreliable", "completed")]
        steps = [json.loads(r) for r in requests(handle, "step")]
        assert [s["attempt"] for s in steps] == [1, 2]
        assert requests(handle, "timer") == [b'{"seconds":1.0}']


@step(retry=RetryPolicy(max_attempts=4, initial_delay=1, backoff_rate=1, jitter="none"))
def always_fail() -> str:
    RUNS.append(f"attempt {current_step().attempt}")
    raise RuntimeError("always")


@workflow
async def exhausted(ctx: WorkflowContext[None]) -> str:
    return await ctx.step(always_fail)


def test_step_1_12_retries_exhausted_after_max_attempts_fail_the_execution() -> None:
    with runtime(exhausted) as rt:
        handle = rt.start(exhausted, None)
        rt.run_until_idle()
        error = failure(handle)
        assert [kind for kind, _, state in recorded(handle) if kind == "step"] == ["step"] * 4
        assert requests(handle, "timer") == [b'{"seconds":1.0}'] * 3
    assert error.error_type == "StepError"
    assert "RuntimeError: always" in error.message
    assert RUNS == ["attempt 1", "attempt 2", "attempt 3", "attempt 4"]


def fails_twice() -> str:
    if current_step().attempt <= 2:
        raise ConnectionError("not yet")
    return "third time"


@workflow
async def default_retry(ctx: WorkflowContext[None]) -> str:
    return await ctx.step(fails_twice)


def test_step_1_13_default_policy_retries_two_failures_then_succeeds() -> None:
    """The requirement's case (two failures, success on the third attempt, first delay
    0-5 s, second 0-10 s) holds with our default policy; the defaults themselves differ
    (docs/aws-parity.md)."""
    with runtime(default_retry) as rt:
        handle = rt.start(default_retry, None)
        rt.run_until_idle()
        assert handle.result() == "third time"
        delays = [json.loads(r)["seconds"] for r in requests(handle, "timer")]
        assert len(delays) == 2 and 0 <= delays[0] <= 5 and 0 <= delays[1] <= 10
        assert [json.loads(r)["attempt"] for r in requests(handle, "step")] == [1, 2, 3]


@step(retry=RetryPolicy(max_attempts=5, initial_delay=2, backoff_rate=3, jitter="none"))
def custom_backoff() -> str:
    if current_step().attempt <= 2:
        raise ConnectionError("not yet")
    return "done"


@workflow
async def custom_retry(ctx: WorkflowContext[None]) -> str:
    return await ctx.step(custom_backoff)


def test_step_1_14_custom_policy_waits_2_then_6_seconds() -> None:
    with runtime(custom_retry) as rt:
        handle = rt.start(custom_retry, None)
        rt.run_until_idle()
        assert handle.result() == "done"
        assert requests(handle, "timer") == [b'{"seconds":2.0}', b'{"seconds":6.0}']
        assert [json.loads(r)["attempt"] for r in requests(handle, "step")] == [1, 2, 3]


class TransientError(Exception):
    pass


@step(retry=RetryPolicy(max_attempts=3, initial_delay=1, jitter="none",
                        retryable=[TransientError]))
def transient_once() -> str:
    if current_step().attempt == 1:
        raise TransientError("try again")
    return "ok"


@workflow
async def retry_specific(ctx: WorkflowContext[None]) -> str:
    return await ctx.step(transient_once)


def test_step_1_15_a_policy_retrying_one_error_type_retries_it() -> None:
    with runtime(retry_specific) as rt:
        handle = rt.start(retry_specific, None)
        rt.run_until_idle()
        assert handle.result() == "ok"
        first = handle.history().operations[0]
        assert json.loads(first.result or b"")["type"] == "TransientError"
        assert requests(handle, "timer") == [b'{"seconds":1.0}']


@step(retry=RetryPolicy(max_attempts=3, non_retryable=[TransientError]))
def transient_not_retried() -> str:
    RUNS.append("ran")
    raise TransientError("not retried")


@workflow
async def no_retry_specific(ctx: WorkflowContext[None]) -> str:
    return await ctx.step(transient_not_retried)


def test_step_1_16_an_error_the_policy_does_not_retry_fails_at_once() -> None:
    with runtime(no_retry_specific) as rt:
        handle = rt.start(no_retry_specific, None)
        rt.run_until_idle()
        error = failure(handle)
        assert recorded(handle) == [("step", "transient_not_retried", "failed")]
    assert RUNS == ["ran"]
    assert "TransientError: not retried" in error.message


def _crash_commit(rt: LocalRuntime, nth: int) -> None:
    """The ``nth`` activation commit dies, as a Lambda that exits does (the at-most-once
    attempt's record before its body is the first commit, the activation's after it the
    second)."""
    real = rt.store.commit_activation
    calls: list[bool] = []

    def commit(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(True)
        if len(calls) == nth:
            raise OSError("Runtime.ExitError: the process exited")
        return real(*args, **kwargs)

    rt.store.commit_activation = commit  # type: ignore[method-assign]


@step(name="at_most_once_flaky_step", semantics="at_most_once",
      retry=RetryPolicy(max_attempts=1))
def at_most_once_no_retry(text: str) -> str:
    RUNS.append(text)
    return text


@workflow
async def interrupted_no_retry(ctx: WorkflowContext[str]) -> str:
    return await ctx.step(at_most_once_no_retry, ctx.request)


def test_step_1_17_at_most_once_interrupted_without_retry_fails() -> None:
    with runtime(interrupted_no_retry) as rt:
        _crash_commit(rt, nth=2)
        handle = rt.start(interrupted_no_retry, "abcdefgh")
        rt.run_until_idle()
        error = failure(handle)
        assert recorded(handle) == [("step", "at_most_once_flaky_step", "failed")]
        assert b"StepInterrupted" in (handle.history().operations[0].result or b"")
    assert RUNS == ["abcdefgh"]  # the body ran once, in the crashed invocation
    assert "StepInterrupted" in error.message


@step(semantics="at_most_once",
      retry=RetryPolicy(max_attempts=2, initial_delay=1, jitter="none"))
def at_most_once_retried(text: str) -> str:
    RUNS.append(text)
    return "succeeded on second attempt"


@workflow
async def interrupted_retry(ctx: WorkflowContext[str]) -> str:
    return await ctx.step(at_most_once_retried, ctx.request)


def test_step_1_18_at_most_once_interrupted_then_retried_succeeds() -> None:
    with runtime(interrupted_retry) as rt:
        _crash_commit(rt, nth=2)
        handle = rt.start(interrupted_retry, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "succeeded on second attempt"
        assert recorded(handle) == [("step", "at_most_once_retried", "failed"),
                                    ("timer", "retry:at_most_once_retried", "completed"),
                                    ("step", "at_most_once_retried", "completed")]
    assert RUNS == ["abcdefgh", "abcdefgh"]


@step(retry=RetryPolicy(max_attempts=1))
def failing_func() -> str:
    raise ValueError("broken")


@workflow
async def fails_permanently(ctx: WorkflowContext[None]) -> str:
    return await ctx.step(failing_func)


def test_step_1_19_a_step_without_retries_fails_the_execution() -> None:
    with runtime(fails_permanently) as rt:
        handle = rt.start(fails_permanently, None)
        rt.run_until_idle()
        error = failure(handle)
        assert recorded(handle) == [("step", "failing_func", "failed")]
    assert error.error_type == "StepError"
    assert "ValueError: broken" in error.message


def fallback() -> str:
    return "fallback_result"


@workflow
async def caught(ctx: WorkflowContext[None]) -> str:
    try:
        return await ctx.step(failing_func)
    except StepError:
        return await ctx.step(fallback)


def test_step_1_20_a_caught_step_error_lets_the_execution_continue() -> None:
    with runtime(caught) as rt:
        handle = rt.start(caught, None)
        rt.run_until_idle()
        assert handle.result() == "fallback_result"
        assert recorded(handle) == [("step", "failing_func", "failed"),
                                    ("step", "fallback", "completed")]




class UppercaseSerdes(Serdes[str]):
    """step 1.6's serdes: every string upper-cased on serialization."""

    def serialize(self, value: str) -> str:
        return value.upper()

    def deserialize(self, data: str | bytes) -> str:
        return str(data)


@step(serdes=UppercaseSerdes())
def return_input(text: str) -> str:
    RUNS.append(text)
    return text


@workflow
async def serdes_step(ctx: WorkflowContext[str]) -> str:
    return await ctx.step(return_input, ctx.request)


def test_step_1_6_a_custom_serdes_decides_what_is_recorded_and_returned() -> None:
    with runtime(serdes_step) as rt:
        handle = rt.start(serdes_step, "hello world")
        rt.run_until_idle()
        assert handle.result() == "HELLO WORLD"
        [op] = handle.history().operations
    assert json.loads(op.result or b"") == {"serdes": "UppercaseSerdes", "text": "HELLO WORLD"}
    assert RUNS == ["hello world"]
