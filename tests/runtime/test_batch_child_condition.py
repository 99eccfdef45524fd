"""ctx.parallel and ctx.map (concurrency, completion rules, batch results), child workflows
and ctx.wait_for_condition, on the embedded runtime."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from lambda_workflow import (
    BatchError,
    ChildWorkflowError,
    Completion,
    CompletionReason,
    ConditionNotMetError,
    ItemStatus,
    Service,
    ServiceError,
    WorkflowContext,
    WorkflowFailedError,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.local import LocalRuntime

square = Service("square", int, int)
CALLS: Counter[int] = Counter()


async def _square(n: int) -> int:
    CALLS[n] += 1
    if n < 0:
        raise ServiceError("Negative", f"{n} is negative")
    return n * n


def _runtime(*workflows: Any) -> LocalRuntime:
    rt = LocalRuntime(clock=VirtualClock(1_700_000_000.0))
    rt.register(*workflows)
    rt.implement(square, _square)
    return rt


@pytest.fixture(autouse=True)
def _clear() -> None:
    CALLS.clear()


@workflow
async def three_branches(ctx: WorkflowContext[None]) -> list[int]:
    result = await ctx.parallel([
        lambda: ctx.call(square, 3),
        lambda: ctx.call(square, 1),
        lambda: ctx.call(square, 2),
    ])
    result.raise_if_error()
    return result.values()


def test_parallel_returns_results_in_branch_order_and_never_reruns_siblings() -> None:
    """Three branches: values come back in branch order; each service call happened once
    although the workflow replayed after each reply."""
    with _runtime(three_branches) as rt:
        handle = rt.start(three_branches, None)
        rt.run_until_idle()
        assert handle.result() == [9, 1, 4]
    assert Counter({3: 1, 1: 1, 2: 1}) == CALLS


@workflow
async def squares(ctx: WorkflowContext[list[int]]) -> dict[str, Any]:
    result = await ctx.map(ctx.request, lambda n: ctx.call(square, n), max_concurrency=2)
    return {"values": result.values(), "reason": result.completion_reason.value,
            "started": result.started}


def test_map_respects_max_concurrency() -> None:
    """With max_concurrency=2 no activation ever has more than two calls outstanding; all
    five items complete, in item order."""
    with _runtime(squares) as rt:
        handle = rt.start(squares, [1, 2, 3, 4, 5])
        rt.run_until_idle()
        assert handle.result() == {"values": [1, 4, 9, 16, 25], "reason": "all_completed",
                                   "started": 5}
        # calls only: each item is also a child context (a `context` operation)
        ops = [op for op in handle.history().operations if op.kind == "call"]
    outstanding = 0
    peak = 0
    events = sorted([(op.created_in, 1) for op in ops] + [(op.resolved_in or 0, -1)
                                                         for op in ops],
                    key=lambda e: (e[0], e[1]))
    for _, delta in events:
        outstanding += delta
        peak = max(peak, outstanding)
    assert peak <= 2


def _batch_workflow(items: list[int], completion: Completion | None,
                    max_concurrency: int | None = None) -> Any:
    @workflow(name="batch")
    async def batch(ctx: WorkflowContext[None]) -> dict[str, Any]:
        result = await ctx.map(items, lambda n: ctx.call(square, n),
                               max_concurrency=max_concurrency, completion=completion)
        return {"reason": result.completion_reason.value,
                "statuses": [item.status.value for item in result.items],
                "succeeded": result.succeeded, "failed": result.failed,
                "started": result.started}
    return batch


@pytest.mark.parametrize(("items", "completion", "concurrency", "reason", "statuses"), [
    # the default: all successful, fail-fast (one at a time makes "not started" visible)
    ([1, -2, 3], None, 1, CompletionReason.FAILURE_TOLERANCE_EXCEEDED,
     ["succeeded", "failed", "not_started"]),
    # a tolerated failure count: 2 failures > 1
    ([-1, 2, -3, 4], Completion(tolerated_failure_count=1), None,
     CompletionReason.FAILURE_TOLERANCE_EXCEEDED, ["failed", "succeeded", "failed", "succeeded"]),
    # a tolerated percentage, strictly exceeded: 2 of 4 failing is 50%, not over 50%
    ([-1, 2, -3, 4], Completion(tolerated_failure_percentage=50), None,
     CompletionReason.ALL_COMPLETED, ["failed", "succeeded", "failed", "succeeded"]),
    ([-1, 2, -3, 4], Completion(tolerated_failure_percentage=49.9), None,
     CompletionReason.FAILURE_TOLERANCE_EXCEEDED, ["failed", "succeeded", "failed", "succeeded"]),
    # a minimum successful, reached with items left over
    ([1, 2, 3, 4], Completion(min_successful=2), 1, CompletionReason.MIN_SUCCESSFUL_REACHED,
     ["succeeded", "succeeded", "not_started", "not_started"]),
    # all completed: every item runs whatever fails
    ([-1, -2, 3], Completion(all_completed=True), 1, CompletionReason.ALL_COMPLETED,
     ["failed", "failed", "succeeded"]),
])
def test_completion_rules(items: list[int], completion: Completion | None,
                          concurrency: int | None, reason: CompletionReason,
                          statuses: list[str]) -> None:
    """Each completion rule ends the batch when and how it says, with per-item statuses."""
    wf = _batch_workflow(items, completion, concurrency)
    with _runtime(wf) as rt:
        handle = rt.start(wf, None)
        rt.run_until_idle()
        result = handle.result()
    assert result["reason"] == reason.value
    assert result["statuses"] == statuses
    assert result["succeeded"] == statuses.count("succeeded")
    assert result["failed"] == statuses.count("failed")


def test_min_successful_cancels_branches_still_running() -> None:
    """When the minimum is reached, branches still waiting are cancelled (their replies are
    recorded and ignored later)."""
    wf = _batch_workflow([1, 2, 3], Completion(min_successful=1))
    with _runtime(wf) as rt:
        rt.implement(square, _square)
        handle = rt.start(wf, None)
        rt.run_until_idle()
        result = handle.result()
    assert result["reason"] == "min_successful_reached"
    assert result["statuses"].count("succeeded") >= 1
    assert set(result["statuses"]) <= {"succeeded", "cancelled"}


def test_raise_if_error_names_the_failed_items() -> None:
    """raise_if_error raises BatchError listing every failed item's index and error."""
    @workflow
    async def strict(ctx: WorkflowContext[None]) -> str:
        result = await ctx.map([1, -2, -3], lambda n: ctx.call(square, n),
                               completion=Completion(all_completed=True))
        try:
            result.raise_if_error()
        except BatchError as exc:
            return ";".join(f"{i}:{type(e).__name__}" for i, e in exc.errors)
        return "no error"

    with _runtime(strict) as rt:
        handle = rt.start(strict, None)
        rt.run_until_idle()
        assert handle.result() == "1:ServiceError;2:ServiceError"


@pytest.mark.parametrize("bad", [{"max_concurrency": 0}, {"max_concurrency": -1},
                                 {"completion": "all"}])
def test_bad_batch_options_raise_before_anything_is_recorded(bad: dict[str, Any]) -> None:
    """max_concurrency below 1 (or a completion that is not a Completion) fails the workflow
    before any operation is recorded."""
    @workflow
    async def bad_batch(ctx: WorkflowContext[None]) -> None:
        await ctx.map([1, 2], lambda n: ctx.call(square, n), **bad)

    with _runtime(bad_batch) as rt:
        handle = rt.start(bad_batch, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError):
            handle.result()
        assert handle.history().operations == []


@pytest.mark.parametrize("kwargs", [{"min_successful": 0}, {"tolerated_failure_count": -1},
                                    {"tolerated_failure_percentage": 101}])
def test_bad_completion_rules_are_refused(kwargs: dict[str, Any]) -> None:
    """Completion refuses out-of-range rules, naming the option."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Completion(**kwargs)


@workflow
async def child_square(ctx: WorkflowContext[int]) -> int:
    return await ctx.call(square, ctx.request)


@workflow
async def parent(ctx: WorkflowContext[list[int]]) -> str:
    total = 0
    for n in ctx.request:
        try:
            total += await ctx.child(child_square, n)
        except ChildWorkflowError as exc:
            return f"child {exc.workflow_id} failed: {exc.error_type}: {exc.message}"
    return f"total {total}"


def test_a_child_workflow_runs_with_its_own_history() -> None:
    """Each child is an instance with its own id (<parent>/<op id>) and history; its result
    comes back to the parent's await."""
    with _runtime(parent, child_square) as rt:
        handle = rt.start(parent, [2, 3], workflow_id="p")
        rt.run_until_idle()
        assert handle.result() == "total 13"
        assert rt.result("p~1") == 4
        assert rt.result("p~2") == 9
        child_ops = [op.kind for op in rt.history("p~1").operations]
        parent_ops = [(op.kind, op.name) for op in handle.history().operations]
    assert child_ops == ["parent", "call"]
    assert parent_ops == [("child", "child_square"), ("child", "child_square")]


def test_a_failed_child_surfaces_its_original_error() -> None:
    """A child that fails raises ChildWorkflowError in the parent with the child's error
    type and message."""
    with _runtime(parent, child_square) as rt:
        handle = rt.start(parent, [2, -5], workflow_id="p2")
        rt.run_until_idle()
        assert handle.result() == ("child p2~2 failed: ServiceError: Negative: -5 is negative "
                                   "(service 'square', call 1)")


@workflow
async def poll_until_ready(ctx: WorkflowContext[int]) -> int:
    def check(state: int) -> int:
        return state + 1

    return await ctx.wait_for_condition(
        check, 0, lambda state, attempt: None if state >= ctx.request else 10.0,
        name="ready", max_attempts=5)


def test_wait_for_condition_polls_on_timers_with_recorded_state() -> None:
    """Each check is a recorded step and each wait a timer; the condition met after three
    checks returns the state."""
    with _runtime(poll_until_ready) as rt:
        handle = rt.start(poll_until_ready, 3)
        rt.run_until_idle()
        assert handle.result() == 3
        kinds = [(op.kind, op.name) for op in handle.history().operations]
    assert kinds == [("step", "ready"), ("timer", "poll:ready"), ("step", "ready"),
                     ("timer", "poll:ready"), ("step", "ready")]


def test_wait_for_condition_gives_up_after_max_attempts() -> None:
    """A condition never met raises ConditionNotMetError after max_attempts checks."""
    with _runtime(poll_until_ready) as rt:
        handle = rt.start(poll_until_ready, 99)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            handle.result()
        assert failed.value.error_type == ConditionNotMetError.__name__
        assert len([op for op in handle.history().operations if op.kind == "step"]) == 5


def test_statuses_are_an_enum() -> None:
    """Item statuses are the documented strings."""
    assert {s.value for s in ItemStatus} == {"succeeded", "failed", "cancelled", "not_started"}
