"""AWS durable-execution requirements for child contexts (group child, ids 3.x), on the
embedded runtime: ``context.run_in_child_context`` is ``ctx.run_in_child_context(fn, *args,
name=)``, recorded as a ``context`` operation whose body's operations get ids within it
(``<context id>.1``, ...)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from lambda_workflow import (
    ChildContextError,
    RetryPolicy,
    Serdes,
    WorkflowContext,
    current_step,
    step,
    workflow,
)
from lambda_workflow.local import LocalRuntime

from ._support import activations, failure, runtime

RUNS: list[str] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    RUNS.clear()


def echo(value: str) -> str:
    RUNS.append(f"step {value}")
    return value


def _tree(handle: Any) -> list[Any]:
    """The recorded operations in tree order: a context, then what it holds, then what
    follows it (``1``, ``1.1``, ``1.2``, ``2``)."""
    return sorted(handle.history().operations,
                  key=lambda op: tuple(int(part) for part in op.op_id.split(".")))


def _ids(handle: Any) -> list[tuple[str, str, str]]:
    """``(op id, kind, name)`` of every recorded operation, in tree order."""
    return [(op.op_id, op.kind, op.name) for op in _tree(handle)]


def recorded(handle: Any) -> list[tuple[str, str, str]]:
    """``(kind, name, state)`` of every recorded operation, in tree order."""
    return [(op.kind, op.name, op.state.value) for op in _tree(handle)]


async def one_step(c: WorkflowContext[str]) -> str:
    return await c.step(echo, c.request)


@workflow
async def child_basic(ctx: WorkflowContext[str]) -> str:
    return await ctx.run_in_child_context(one_step)


def test_child_3_1_a_child_context_returns_its_steps_result() -> None:
    with runtime(child_basic) as rt:
        handle = rt.start(child_basic, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "abcdefgh"
        ops = _tree(handle)
        assert [(op.kind, op.state.value) for op in ops] == [("context", "completed"),
                                                             ("step", "completed")]
        assert ops[1].op_id.startswith(ops[0].op_id + ".")  # the step is under the context
        assert b'"abcdefgh"' in (ops[0].result or b"")  # its result is recorded


async def second_value(c: WorkflowContext[dict[str, str]]) -> str:
    return await c.step(echo, c.request["value"])


@workflow
async def child_named(ctx: WorkflowContext[dict[str, str]]) -> str:
    return await ctx.run_in_child_context(second_value, name=ctx.request["name"])


def test_child_3_2_a_named_child_context_records_its_name() -> None:
    with runtime(child_named) as rt:
        handle = rt.start(child_named, {"name": "name0001", "value": "value001"})
        rt.run_until_idle()
        assert handle.result() == "value001"
        assert recorded(handle)[0] == ("context", "name0001", "completed")


def passthrough(value: str) -> str:
    return value


async def two_steps(c: WorkflowContext[str]) -> str:
    first = await c.step(echo, c.request)
    return await c.step(passthrough, first)


@workflow
async def child_two_steps(ctx: WorkflowContext[str]) -> str:
    return await ctx.run_in_child_context(two_steps)


def test_child_3_3_two_sequential_steps_inside_a_child_context() -> None:
    with runtime(child_two_steps) as rt:
        handle = rt.start(child_two_steps, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "abcdefgh"
        ids = _ids(handle)
        assert [kind for _, kind, _ in ids] == ["context", "step", "step"]
        assert all(op_id.startswith(ids[0][0] + ".") for op_id, _, _ in ids[1:])


@step(retry=RetryPolicy(max_attempts=1))
def broken() -> str:
    RUNS.append("broken")
    raise RuntimeError("step failed")


async def failing_body(c: WorkflowContext[Any]) -> str:
    return await c.step(broken)


@workflow
async def child_fails(ctx: WorkflowContext[None]) -> str:
    return await ctx.run_in_child_context(failing_body)


def test_child_3_4_a_failing_step_fails_the_context_and_the_execution() -> None:
    with runtime(child_fails) as rt:
        handle = rt.start(child_fails, None)
        rt.run_until_idle()
        error = failure(handle)
        assert [(kind, state) for kind, _, state in recorded(handle)] == [
            ("context", "failed"), ("step", "failed")]
    assert error.error_type == "ChildContextError"
    assert "step failed" in error.message


@workflow
async def child_fails_caught(ctx: WorkflowContext[str]) -> str:
    try:
        return await ctx.run_in_child_context(failing_body)
    except ChildContextError:
        return await ctx.step(echo, ctx.request)


def test_child_3_5_a_caught_child_failure_lets_the_execution_continue() -> None:
    with runtime(child_fails_caught) as rt:
        handle = rt.start(child_fails_caught, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "abcdefgh"
        assert [(kind, state) for kind, _, state in recorded(handle)] == [
            ("context", "failed"), ("step", "failed"), ("step", "completed")]


async def inner(c: WorkflowContext[str]) -> str:
    return await c.step(echo, c.request)


async def outer(c: WorkflowContext[str]) -> str:
    await c.step(echo, c.request)
    return await c.run_in_child_context(inner, name="inner")


@workflow
async def child_nested(ctx: WorkflowContext[str]) -> str:
    return await ctx.run_in_child_context(outer, name="outer")


def test_child_3_6_nested_child_contexts_each_under_its_parent() -> None:
    with runtime(child_nested) as rt:
        handle = rt.start(child_nested, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "abcdefgh"
        ids = {name: op_id for op_id, kind, name in _ids(handle) if kind == "context"}
        steps = [op_id for op_id, kind, _ in _ids(handle) if kind == "step"]
    assert ids["inner"].startswith(ids["outer"] + ".")
    assert steps[0].startswith(ids["outer"] + ".") and steps[1].startswith(ids["inner"] + ".")


@step(retry=RetryPolicy(max_attempts=2, initial_delay=1, jitter="none"))
def flaky(value: str) -> str:
    if current_step().attempt == 1:
        raise ConnectionError("first attempt fails")
    return value


async def retrying_body(c: WorkflowContext[str]) -> str:
    return await c.step(flaky, c.request)


@workflow
async def child_retry(ctx: WorkflowContext[str]) -> str:
    return await ctx.run_in_child_context(retrying_body)


def test_child_3_7_a_step_inside_retried_then_succeeding() -> None:
    with runtime(child_retry) as rt:
        handle = rt.start(child_retry, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "abcdefgh"
        assert [(kind, state) for kind, _, state in recorded(handle)] == [
            ("context", "completed"), ("step", "failed"), ("timer", "completed"),
            ("step", "completed")]
        assert activations(handle) == 2


@step(retry=RetryPolicy(max_attempts=2, initial_delay=1, jitter="none"))
def always_fails() -> str:
    raise RuntimeError("always")


async def exhausting_body(c: WorkflowContext[Any]) -> str:
    return await c.step(always_fails)


@workflow
async def child_exhausted(ctx: WorkflowContext[None]) -> str:
    return await ctx.run_in_child_context(exhausting_body)


def test_child_3_8_a_step_exhausting_its_retries_fails_the_context() -> None:
    with runtime(child_exhausted) as rt:
        handle = rt.start(child_exhausted, None)
        rt.run_until_idle()
        error = failure(handle)
        assert [(kind, state) for kind, _, state in recorded(handle)] == [
            ("context", "failed"), ("step", "failed"), ("timer", "completed"),
            ("step", "failed")]
    assert error.error_type == "ChildContextError"


async def logged_body(c: WorkflowContext[str]) -> str:
    RUNS.append("body")
    return await c.step(echo, c.request)


@workflow
async def child_then_wait(ctx: WorkflowContext[str]) -> str:
    value = await ctx.run_in_child_context(logged_body)
    await ctx.sleep(1)
    return value


def test_child_3_9_replay_returns_the_recorded_result_without_running_the_body() -> None:
    with runtime(child_then_wait) as rt:
        handle = rt.start(child_then_wait, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "abcdefgh"
        assert activations(handle) == 2
    assert RUNS == ["body", "step abcdefgh"]


async def step_and_wait(c: WorkflowContext[str]) -> str:
    value = await c.step(echo, c.request)
    await c.sleep(1)
    return value


@workflow
async def child_step_wait(ctx: WorkflowContext[str]) -> str:
    return await ctx.run_in_child_context(step_and_wait)


def test_child_3_10_a_step_and_a_wait_inside_a_child_context() -> None:
    with runtime(child_step_wait) as rt:
        handle = rt.start(child_step_wait, "abcdefgh")
        rt.run_until_idle(skip_time=False)
        assert [(kind, state) for kind, _, state in recorded(handle)] == [
            ("context", "pending"), ("step", "completed"), ("timer", "pending")]
        rt.advance_time(1)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "abcdefgh"
        assert recorded(handle)[0][2] == "completed"


log = logging.getLogger("parity.child")


async def big_body(c: WorkflowContext[str]) -> list[str]:
    log.info("building for %s", c.request)
    small = await c.step(echo, c.request)
    return [small] * 40_000


@workflow
async def child_large(ctx: WorkflowContext[str]) -> int:
    values = await ctx.run_in_child_context(big_body)
    await ctx.sleep(1)
    return len(values)


def test_child_3_11_a_result_too_large_to_record_reruns_the_body_on_replay(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="parity.child")
    with runtime(child_large) as rt:
        rt.always_replay = False  # count the body's runs in the activations alone
        rt.engine.payload_limit = 256 * 1024
        handle = rt.start(child_large, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == 40_000
        assert activations(handle) == 2
        steps = [op for op in handle.history().operations if op.kind == "step"]
    assert len(steps) == 1 and RUNS == ["step abcdefgh"]  # the step did not run again
    assert [r.getMessage() for r in caplog.records if r.name == "parity.child"] == [
        "building for abcdefgh"] * 2


def _crash_commit(rt: LocalRuntime, nth: int) -> None:
    real = rt.store.commit_activation
    calls: list[bool] = []

    def commit(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(True)
        if len(calls) == nth:
            raise OSError("Runtime.ExitError: the process exited")
        return real(*args, **kwargs)

    rt.store.commit_activation = commit  # type: ignore[method-assign]


def test_child_3_12_an_interrupted_child_context_runs_its_step_again() -> None:
    with runtime(child_basic) as rt:
        _crash_commit(rt, nth=1)
        handle = rt.start(child_basic, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "abcdefgh"
        assert [(kind, state) for kind, _, state in recorded(handle)] == [
            ("context", "completed"), ("step", "completed")]
    assert RUNS == ["step abcdefgh", "step abcdefgh"]


async def only_wait(c: WorkflowContext[str]) -> str:
    await c.sleep(1)
    return c.request


@workflow
async def child_only_wait(ctx: WorkflowContext[str]) -> str:
    value = await ctx.run_in_child_context(only_wait)
    return await ctx.step(echo, value)


def test_child_3_13_a_child_context_holding_only_a_wait_then_a_step_outside() -> None:
    with runtime(child_only_wait) as rt:
        handle = rt.start(child_only_wait, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "abcdefgh"
        ids = _ids(handle)
        assert [kind for _, kind, _ in ids] == ["context", "timer", "step"]
        assert ids[1][0].startswith(ids[0][0] + ".")
        assert not ids[2][0].startswith(ids[0][0] + ".")


async def raises_directly(c: WorkflowContext[Any]) -> str:
    raise ValueError("thrown in the body")


@workflow
async def child_raises(ctx: WorkflowContext[None]) -> str:
    return await ctx.run_in_child_context(raises_directly)


def test_child_3_15_a_body_raising_without_any_operation_fails_the_context() -> None:
    with runtime(child_raises) as rt:
        handle = rt.start(child_raises, None)
        rt.run_until_idle()
        error = failure(handle)
        assert recorded(handle) == [("context", "raises_directly", "failed")]
    assert error.error_type == "ChildContextError"
    assert "ValueError: thrown in the body" in error.message


async def returns_null(c: WorkflowContext[Any]) -> None:
    return None


@workflow
async def child_null(ctx: WorkflowContext[None]) -> None:
    return await ctx.run_in_child_context(returns_null)


def test_child_3_16_a_child_context_returning_null() -> None:
    with runtime(child_null) as rt:
        handle = rt.start(child_null, None)
        rt.run_until_idle()
        assert handle.result() is None
        assert recorded(handle) == [("context", "returns_null", "completed")]


async def logs_only(c: WorkflowContext[str]) -> str:
    log.info("logged %s", c.request)
    return c.request


@workflow
async def child_logs_only(ctx: WorkflowContext[str]) -> str:
    value = await ctx.run_in_child_context(logs_only)
    await ctx.sleep(1)
    return value


def test_child_3_17_a_finished_logging_only_body_does_not_run_again(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="parity.child")
    with runtime(child_logs_only) as rt:
        handle = rt.start(child_logs_only, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "abcdefgh"
        assert activations(handle) == 2
    assert [r.getMessage() for r in caplog.records if r.name == "parity.child"] == [
        "logged abcdefgh"]


@workflow
async def child_then_more(ctx: WorkflowContext[str]) -> str:
    value = await ctx.run_in_child_context(step_and_wait)
    after = await ctx.step(echo, value)
    await ctx.sleep(1)
    return after


def test_child_3_18_a_step_and_wait_inside_then_a_step_and_wait_after() -> None:
    with runtime(child_then_more) as rt:
        handle = rt.start(child_then_more, "abcdefgh")
        rt.run_until_idle()
        assert handle.result() == "abcdefgh"
        assert [kind for kind, _, _ in recorded(handle)] == [
            "context", "step", "timer", "step", "timer"]
        assert activations(handle) == 3
    assert RUNS == ["step abcdefgh", "step abcdefgh"]  # one inside, one after: once each



class UpperResult(Serdes[str]):
    """child 3.14's serdes: the result upper-cased on serialization."""

    def serialize(self, value: str) -> str:
        return value.upper()

    def deserialize(self, data: str | bytes) -> str:
        return str(data)


@step(name="return_input")
def return_input(text: str) -> str:
    return text


async def child_echo(ctx: WorkflowContext[Any], text: str) -> str:
    return await ctx.step(return_input, text)


@workflow
async def serdes_child(ctx: WorkflowContext[str]) -> str:
    return await ctx.run_in_child_context(child_echo, ctx.request, serdes=UpperResult())


def test_child_3_14_a_custom_serdes_for_the_child_contexts_result() -> None:
    with runtime(serdes_child) as rt:
        handle = rt.start(serdes_child, "hello child")
        rt.run_until_idle()
        assert handle.result() == "HELLO CHILD"
        ops = {op.kind: op.result for op in handle.history().operations}
    assert ops["step"] == b'"hello child"'  # the child's step: the default serialization
    assert ops["context"] == b'{"v":{"serdes":"UpperResult","text":"HELLO CHILD"}}'
