"""ctx.step: local code run once and recorded, retries on durable timers, at-least-once and
at-most-once attempts across crashes, on the embedded runtime."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from lambda_workflow import (
    InvalidRequestError,
    NonDeterminismError,
    RetryPolicy,
    Service,
    StepError,
    WorkflowContext,
    WorkflowFailedError,
    current_step,
    step,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import OperationState

START = 1_700_000_000.0
echo = Service("echo", str, str)


async def _echo(text: str) -> str:
    return text


def _runtime(*workflows: Any) -> LocalRuntime:
    rt = LocalRuntime(clock=VirtualClock(START))
    rt.register(*workflows)
    rt.implement(echo, _echo)
    return rt


class Receipt(BaseModel):
    amount: int
    reference: str


RUNS: list[str] = []


def charge(amount: int, *, reference: str) -> Receipt:
    RUNS.append(f"charge {amount} {reference} attempt {current_step().attempt}")
    return Receipt(amount=amount, reference=reference)


def ratio() -> float:
    return 2  # an int: its JSON round trip through the float annotation makes it 2.0


@workflow
async def checkout(ctx: WorkflowContext[int]) -> str:
    receipt = await ctx.step(charge, ctx.request, reference="r-1")
    await ctx.call(echo, "suspend here")
    again = await ctx.step(ratio)
    return f"{receipt.reference}:{receipt.amount}:{again!r}"


@pytest.fixture(autouse=True)
def _clear_runs() -> None:
    RUNS.clear()


def test_a_step_runs_once_and_replays_from_its_record() -> None:
    """The body runs in the first activation only; later activations replay its recorded,
    typed result. The first execution already returns the JSON round trip (an int returned
    for a float annotation comes back as the float replay returns)."""
    with _runtime(checkout) as rt:
        handle = rt.start(checkout, 30, workflow_id="c-1")
        rt.run_until_idle()
        assert handle.result() == "r-1:30:2.0"
        ops = handle.history().operations
    assert RUNS == ["charge 30 r-1 attempt 1"]
    assert [(op.kind, op.name, op.state) for op in ops] == [
        ("step", "charge", OperationState.COMPLETED), ("call", "echo", OperationState.COMPLETED),
        ("step", "ratio", OperationState.COMPLETED)]
    assert ops[0].request == b'{"args":[30],"kwargs":{"reference":"r-1"},"attempt":1}'


FLAKY_FAILURES: list[int] = []


@step(retry=RetryPolicy(max_attempts=4, initial_delay=10, backoff_rate=2, jitter="none"))
def flaky() -> str:
    attempt = current_step().attempt
    RUNS.append(f"flaky {attempt}")
    if attempt <= FLAKY_FAILURES[0]:
        raise ConnectionError(f"refused on attempt {attempt}")
    return f"ok on {attempt}"


@workflow
async def retrying(ctx: WorkflowContext[None]) -> str:
    try:
        return await ctx.step(flaky)
    except StepError as exc:
        return f"gave up: {exc.error_type}: {exc.message} after {exc.attempts}"


def test_retries_wait_on_durable_timers_with_backoff() -> None:
    """Two failures then success: each retry delay is a timer (10 s, then 20 s) that suspends
    the workflow; the body sees attempts 1, 2, 3; the history records every attempt."""
    FLAKY_FAILURES[:] = [2]
    with _runtime(retrying) as rt:
        handle = rt.start(retrying, None, workflow_id="r-1")
        rt.run_until_idle(skip_time=False)
        assert RUNS == ["flaky 1"]
        rt.advance_time(9)
        rt.run_until_idle(skip_time=False)
        assert RUNS == ["flaky 1"]
        rt.advance_time(1)
        rt.run_until_idle(skip_time=False)
        assert RUNS == ["flaky 1", "flaky 2"]
        rt.advance_time(20)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "ok on 3"
        history = handle.history().operations
    assert RUNS == ["flaky 1", "flaky 2", "flaky 3"]
    assert [(op.kind, op.name, op.state.value) for op in history] == [
        ("step", "flaky", "failed"), ("timer", "retry:flaky", "completed"),
        ("step", "flaky", "failed"), ("timer", "retry:flaky", "completed"),
        ("step", "flaky", "completed")]
    assert [op.request for op in history if op.kind == "timer"] == [
        b'{"seconds":10.0}', b'{"seconds":20.0}']


def test_exhausted_retries_raise_step_error_with_the_original_type() -> None:
    """When every attempt fails, the workflow gets a StepError carrying the original error
    type name, message and the number of attempts; it may catch it."""
    FLAKY_FAILURES[:] = [99]
    with _runtime(retrying) as rt:
        handle = rt.start(retrying, None)
        rt.run_until_idle()
        assert handle.result() == "gave up: ConnectionError: refused on attempt 4 after 4"


@step(retry=RetryPolicy(max_attempts=5, non_retryable=[ValueError]))
def strict() -> int:
    RUNS.append("strict")
    raise ValueError("bad card number")


@workflow
async def non_retryable(ctx: WorkflowContext[None]) -> int:
    return await ctx.step(strict)


def test_a_non_retryable_error_fails_the_step_at_once() -> None:
    """An error the policy does not retry fails the step on its first attempt; uncaught, the
    workflow fails with StepError naming the original type."""
    with _runtime(non_retryable) as rt:
        handle = rt.start(non_retryable, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            handle.result()
    assert RUNS == ["strict"]
    assert failed.value.error_type == "StepError"
    assert "ValueError: bad card number" in failed.value.message


@step(name="debit", semantics="at_most_once",
      retry=RetryPolicy(max_attempts=3, initial_delay=5, jitter="none"))
def debit_once(amount: int) -> int:
    RUNS.append(f"debit {amount} attempt {current_step().attempt}")
    return amount


@step(name="debit")
def debit_again(amount: int) -> int:
    RUNS.append(f"debit {amount} attempt {current_step().attempt}")
    return amount


def _crash_first_commit(rt: LocalRuntime, nth: int = 1) -> None:
    """The ``nth`` write of the store's commit_activation dies (an at-most-once attempt's
    record before it runs is the first; the activation's commit after it the second)."""
    real = rt.store.commit_activation
    calls: list[bool] = []

    def commit(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(True)
        if len(calls) == nth:
            raise OSError("the process died before recording the activation")
        return real(*args, **kwargs)

    rt.store.commit_activation = commit  # type: ignore[method-assign]


def test_an_at_most_once_attempt_interrupted_by_a_crash_counts_as_failed() -> None:
    """At-most-once: the attempt is recorded before it runs. The process dies after the body
    ran: the next activation finds the attempt started but unfinished, records it as failed
    (StepInterrupted) and retries after the delay; the body ran once per attempt."""
    @workflow(name="pay")
    async def pay(ctx: WorkflowContext[int]) -> int:
        return await ctx.step(debit_once, ctx.request)

    with _runtime(pay) as rt:
        _crash_first_commit(rt, nth=2)  # after the attempt's record and its body
        handle = rt.start(pay, 7)
        rt.run_until_idle()
        assert handle.result() == 7
        ops = handle.history().operations
    assert RUNS == ["debit 7 attempt 1", "debit 7 attempt 2"]
    assert [(op.kind, op.state.value) for op in ops] == [
        ("step", "failed"), ("timer", "completed"), ("step", "completed")]
    assert b"StepInterrupted" in (ops[0].result or b"")


def test_an_at_least_once_attempt_interrupted_by_a_crash_runs_again() -> None:
    """At-least-once (the default): nothing is recorded before the body runs, so after the
    crash the same attempt runs again and only its final outcome is recorded."""
    @workflow(name="pay")
    async def pay(ctx: WorkflowContext[int]) -> int:
        return await ctx.step(debit_again, ctx.request)

    with _runtime(pay) as rt:
        _crash_first_commit(rt)
        handle = rt.start(pay, 8)
        rt.run_until_idle()
        assert handle.result() == 8
        ops = handle.history().operations
    assert RUNS == ["debit 8 attempt 1", "debit 8 attempt 1"]
    assert [(op.kind, op.state.value) for op in ops] == [("step", "completed")]


async def fetch_rate(currency: str) -> float:
    await asyncio.sleep(0)
    RUNS.append(f"rate {currency}")
    return 1.25


@workflow
async def convert(ctx: WorkflowContext[int]) -> float:
    rate = await ctx.step(fetch_rate, "EUR")
    await ctx.call(echo, "x")
    return ctx.request * rate


def test_an_async_step_body_runs_on_its_own_loop() -> None:
    """An ``async def`` body may await real coroutines: it runs on its own event loop (the
    workflow's loop does no I/O), once."""
    with _runtime(convert) as rt:
        handle = rt.start(convert, 4)
        rt.run_until_idle()
        assert handle.result() == 5.0
    assert RUNS == ["rate EUR"]


def test_changed_step_arguments_are_nondeterminism() -> None:
    """A step called with other arguments than the recorded ones fails the replay with
    NonDeterminismError."""
    with _runtime(checkout) as rt:
        rt.start(checkout, 30, workflow_id="c-2")
        rt.step_workflows()  # records the step, sends the call

        @workflow(name="checkout")
        async def changed(ctx: WorkflowContext[int]) -> str:
            await ctx.step(charge, ctx.request + 1, reference="r-1")
            await ctx.call(echo, "suspend here")
            return ""

        rt._workflows["checkout"] = changed
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            rt.result("c-2")
    assert failed.value.error_type == NonDeterminismError.__name__


def test_arguments_that_are_not_json_fail_before_anything_is_recorded() -> None:
    """Arguments JSON cannot hold raise InvalidRequestError at the step, nothing recorded."""
    @workflow
    async def bad_args(ctx: WorkflowContext[None]) -> None:
        await ctx.step(charge, object(), reference="x")  # type: ignore[arg-type]

    with _runtime(bad_args) as rt:
        handle = rt.start(bad_args, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            handle.result()
        assert failed.value.error_type == InvalidRequestError.__name__
        assert handle.history().operations == []
    assert RUNS == []


@pytest.mark.parametrize(("options", "message"), [
    ({"retry": RetryPolicy}, "RetryPolicy"),
    ({"semantics": "sometimes"}, "semantics"),
])
def test_bad_step_options_are_refused_at_decoration(options: dict[str, Any],
                                                    message: str) -> None:
    """step(...) checks its options when applied, before any workflow runs."""
    with pytest.raises((TypeError, ValueError), match=message):
        step(**options)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_attempts": 0}, "max_attempts"), ({"initial_delay": -1}, "initial_delay"),
    ({"backoff_rate": 0.5}, "backoff_rate"), ({"jitter": "some"}, "jitter"),
    ({"retryable": [42]}, "retryable"),
])
def test_bad_retry_policies_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """RetryPolicy refuses out-of-range values with a message naming the option."""
    with pytest.raises((TypeError, ValueError), match=message):
        RetryPolicy(**kwargs)


def test_jitter_is_deterministic_and_bounded() -> None:
    """Delays grow by the backoff rate up to max_delay; full jitter stays in [1, delay], half
    in [delay/2, delay], and the same key always gives the same delay."""
    none = RetryPolicy(initial_delay=4, backoff_rate=3, max_delay=100, jitter="none")
    assert [none.delay(n, "k") for n in (1, 2, 3, 4)] == [4, 12, 36, 100]
    full = RetryPolicy(initial_delay=100, jitter="full")
    half = RetryPolicy(initial_delay=100, jitter="half")
    for key in ("a", "b", "c", "d"):
        assert 1 <= full.delay(1, key) <= 100
        assert 50 <= half.delay(1, key) <= 100
        assert full.delay(1, key) == full.delay(1, key)
    assert len({full.delay(1, k) for k in "abcdefgh"}) > 1
