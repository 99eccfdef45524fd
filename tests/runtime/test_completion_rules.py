"""Completion rules of ctx.parallel and ctx.map, case by case against AWS's durable-execution
requirements (parallel 8.x, map 9.x), on the embedded runtime.

Each item squares its number through a service; a negative number fails. Items run one at a
time (``max_concurrency=1``) as in the requirements, so "never started" is observable: a
never-started item's service was never called.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from lambda_workflow import (
    BatchError,
    Completion,
    ItemStatus,
    Service,
    ServiceError,
    WorkflowContext,
    WorkflowFailedError,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.batch import BatchResult
from lambda_workflow.local import LocalRuntime

square = Service("square", int, int)
CALLS: Counter[int] = Counter()


async def _square(n: int) -> int:
    CALLS[n] += 1
    if n < 0:
        raise ServiceError("Negative", f"{n} is negative")
    return n * n


@pytest.fixture(autouse=True)
def _clear() -> None:
    CALLS.clear()


def _projection(result: BatchResult[int]) -> dict[str, Any]:
    """What the requirements' handlers return from a batch result."""
    return {"completionReason": result.completion_reason.name, "status": result.status.name,
            "successCount": result.success_count, "failureCount": result.failure_count,
            "totalCount": result.total_count, "hasFailure": result.has_failure,
            "errorCount": len(result.errors()), "values": result.values(),
            "statuses": [item.status.value for item in result.items]}


def _batch(kind: str, items: list[int], completion: Completion | None,
           max_concurrency: int | None = 1) -> Any:
    @workflow(name=f"batch-{kind}")
    async def batch(ctx: WorkflowContext[None]) -> dict[str, Any]:
        if kind == "map":
            result = await ctx.map(items, lambda n: ctx.call(square, n),
                                   max_concurrency=max_concurrency, completion=completion)
        else:
            def branch(n: int) -> Any:
                return lambda: ctx.call(square, n)
            result = await ctx.parallel([branch(n) for n in items],
                                        max_concurrency=max_concurrency, completion=completion)
        return _projection(result)
    return batch


def _run(wf: Any) -> dict[str, Any]:
    with LocalRuntime(clock=VirtualClock(1_700_000_000.0)) as rt:
        rt.register(wf)
        rt.implement(square, _square)
        handle = rt.start(wf, None)
        rt.run_until_idle()
        result: dict[str, Any] = handle.result()
        return result


KINDS = pytest.mark.parametrize("kind", ["parallel", "map"])

# (requirement ids, items, completion, reason, status, successes, failures, total, statuses)
CASES = [
    ("parallel 8.6, map 9.5: fail-fast stops at the first failure",
     [1, -2, 3], Completion(tolerated_failure_count=0),
     "FAILURE_TOLERANCE_EXCEEDED", "FAILED", 1, 1, 2, ["succeeded", "failed", "not_started"]),
    ("the default is all successful, like tolerated_failure_count=0",
     [1, -2, 3], None,
     "FAILURE_TOLERANCE_EXCEEDED", "FAILED", 1, 1, 2, ["succeeded", "failed", "not_started"]),
    ("parallel 8.8: min_successful reached stops early; totalCount counts started items",
     [1, 2, 3, 4], Completion(min_successful=2),
     "MIN_SUCCESSFUL_REACHED", "SUCCEEDED", 2, 0, 2,
     ["succeeded", "succeeded", "not_started", "not_started"]),
    ("parallel 8.9: one failure within tolerated_failure_count=1: every item runs",
     [1, -2, 3], Completion(tolerated_failure_count=1),
     "ALL_COMPLETED", "FAILED", 2, 1, 3, ["succeeded", "failed", "succeeded"]),
    ("parallel 8.10: the second failure exceeds tolerated_failure_count=1",
     [-1, -2, 3], Completion(tolerated_failure_count=1),
     "FAILURE_TOLERANCE_EXCEEDED", "FAILED", 0, 2, 2, ["failed", "failed", "not_started"]),
    ("parallel 8.13, map 9.10: 2 of 4 (50%) exceeds 25% of all items",
     [-1, -2, 3, 4], Completion(tolerated_failure_percentage=25),
     "FAILURE_TOLERANCE_EXCEEDED", "FAILED", 0, 2, 2,
     ["failed", "failed", "not_started", "not_started"]),
    ("parallel 8.16: every item fails within tolerance: all completed, status failed",
     [-1, -2, -3], Completion(tolerated_failure_count=3),
     "ALL_COMPLETED", "FAILED", 0, 3, 3, ["failed", "failed", "failed"]),
    ("parallel 8.17: a minimum never reached runs every item: all completed",
     [1, -2, 3], Completion(min_successful=3),
     "ALL_COMPLETED", "FAILED", 2, 1, 3, ["succeeded", "failed", "succeeded"]),
    ("parallel 8.18: the tolerance is exceeded before the minimum is reached",
     [-1, -2, 3, 4], Completion(min_successful=3, tolerated_failure_count=1),
     "FAILURE_TOLERANCE_EXCEEDED", "FAILED", 0, 2, 2,
     ["failed", "failed", "not_started", "not_started"]),
    ("parallel 8.22: 1 of 4 is exactly 25%, which does not exceed 25",
     [-1, 2, 3, 4], Completion(tolerated_failure_percentage=25),
     "ALL_COMPLETED", "FAILED", 3, 1, 4, ["failed", "succeeded", "succeeded", "succeeded"]),
    ("a minimum reached by the last item: every item ended, so all completed",
     [1, 2, 3], Completion(min_successful=3),
     "ALL_COMPLETED", "SUCCEEDED", 3, 0, 3, ["succeeded", "succeeded", "succeeded"]),
    ("parallel 8.5, map 9.4: no items: all completed, nothing counted",
     [], None, "ALL_COMPLETED", "SUCCEEDED", 0, 0, 0, []),
]


@KINDS
@pytest.mark.parametrize(("case", "items", "completion", "reason", "status", "successes",
                          "failures", "total", "statuses"), CASES, ids=[c[0] for c in CASES])
def test_completion_matches_aws(kind: str, case: str, items: list[int],
                                completion: Completion | None, reason: str, status: str,
                                successes: int, failures: int, total: int,
                                statuses: list[str]) -> None:
    """Each requirement's case reports AWS's completionReason, status, successCount,
    failureCount and totalCount, and never runs the items AWS never starts."""
    result = _run(_batch(kind, items, completion))
    assert (result["completionReason"], result["status"], result["successCount"],
            result["failureCount"], result["totalCount"]) == (
        reason, status, successes, failures, total), case
    assert result["statuses"] == statuses
    started = [n for n, s in zip(items, statuses, strict=True) if s != "not_started"]
    assert Counter(started) == CALLS  # never-started items were never called
    assert result["values"] == [n * n for n, s in zip(items, statuses, strict=True)
                                if s == "succeeded"]


@KINDS
def test_batch_result_accessors(kind: str) -> None:
    """parallel 8.20: hasFailure, the success and failure counts and the error count."""
    result = _run(_batch(kind, [1, -2, 3], Completion(tolerated_failure_count=1)))
    assert (result["hasFailure"], result["successCount"], result["failureCount"],
            result["errorCount"]) == (True, 2, 1, 1)


@KINDS
def test_rethrow_fails_the_workflow(kind: str) -> None:
    """parallel 8.7: fail-fast stops at the first failure; raise_if_error rethrows it and the
    workflow fails; the second item never ran."""
    @workflow(name=f"rethrow-{kind}")
    async def rethrow(ctx: WorkflowContext[None]) -> list[int]:
        if kind == "map":
            result = await ctx.map([-1, 2], lambda n: ctx.call(square, n), max_concurrency=1,
                                   completion=Completion(tolerated_failure_count=0))
        else:
            result = await ctx.parallel([lambda: ctx.call(square, -1),
                                         lambda: ctx.call(square, 2)], max_concurrency=1,
                                        completion=Completion(tolerated_failure_count=0))
        result.raise_if_error()
        return result.values()

    with LocalRuntime(clock=VirtualClock(1_700_000_000.0)) as rt:
        rt.register(rethrow)
        rt.implement(square, _square)
        handle = rt.start(rethrow, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            handle.result()
    assert failed.value.error_type == BatchError.__name__
    assert "item 0" in str(failed.value)
    assert Counter({-1: 1}) == CALLS


@KINDS
def test_max_concurrency_zero_fails_before_any_item(kind: str) -> None:
    """parallel 8.19: max_concurrency=0 is a validation error; no item runs."""
    with pytest.raises(WorkflowFailedError, match="max_concurrency"):
        _run(_batch(kind, [1, 2], None, max_concurrency=0))
    assert not CALLS


def test_completed_batch_with_a_failure_replays_after_a_wait() -> None:
    """map 9.18: a batch that ran every item and recorded a failure, then a sleep: the replay
    after the sleep reports the same result without calling any item again."""
    @workflow(name="fail-then-wait")
    async def fail_then_wait(ctx: WorkflowContext[None]) -> dict[str, Any]:
        result = await ctx.map([1, -2], lambda n: ctx.call(square, n), max_concurrency=1,
                               completion=Completion(tolerated_failure_count=1))
        await ctx.sleep(1)
        return _projection(result)

    result = _run(fail_then_wait)
    assert (result["completionReason"], result["status"], result["successCount"],
            result["failureCount"], result["totalCount"]) == (
        "ALL_COMPLETED", "FAILED", 1, 1, 2)
    assert Counter({1: 1, -2: 1}) == CALLS


@KINDS
def test_min_successful_with_concurrency_counts_cancelled_items(kind: str) -> None:
    """With every item running at once, reaching the minimum cancels the items still
    waiting; they started, so totalCount counts them (AWS reports them as started)."""
    result = _run(_batch(kind, [1, 2, 3], Completion(min_successful=1), max_concurrency=None))
    assert result["completionReason"] == "MIN_SUCCESSFUL_REACHED"
    assert result["totalCount"] == 3
    assert result["successCount"] >= 1
    assert set(result["statuses"]) <= {ItemStatus.SUCCEEDED.value, ItemStatus.CANCELLED.value}


@pytest.mark.parametrize(("completion", "failed", "total", "too_often"), [
    (Completion(), 1, 5, True),
    (Completion(min_successful=2), 4, 5, False),  # only a minimum: failures never stop it
    (Completion(tolerated_failure_count=2), 2, 5, False),
    (Completion(tolerated_failure_count=2), 3, 5, True),
    (Completion(tolerated_failure_percentage=40), 2, 5, False),
    (Completion(tolerated_failure_percentage=40), 3, 5, True),
    (Completion(all_completed=True), 5, 5, False),
])
def test_failed_too_often(completion: Completion, failed: int, total: int,
                          too_often: bool) -> None:
    """The tolerance check alone, on counts."""
    assert completion.failed_too_often(failed, total) is too_often
