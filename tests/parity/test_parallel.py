"""AWS durable-execution requirements for ``parallel`` (group parallel, ids 8.x), on the
embedded runtime: ``context.parallel`` is ``ctx.parallel(branches, max_concurrency=,
completion=Completion(...))``; AWS's batch result fields are ``BatchResult``'s
``completion_reason``, ``status``, ``success_count``, ``failure_count``, ``total_count``,
``has_failure``, ``values()`` and ``errors()``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from lambda_workflow import BatchResult, Completion, Serdes, WorkflowContext, workflow

from ._support import activations, failure, projection, recorded, runtime

RUNS: list[str] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    RUNS.clear()


def task(value: str) -> str:
    RUNS.append(value)
    return value


def returns(value: Any) -> Callable[[], Awaitable[Any]]:
    """A branch that returns ``value`` directly (no operation of its own). Such code runs
    again whenever the workflow is replayed (the always-replay check replays every
    activation); recording branches is issue 12 item 4."""
    async def branch() -> Any:
        RUNS.append(f"ran {value}")
        return value
    return branch


def raises(label: str) -> Callable[[], Awaitable[Any]]:
    """A branch that fails."""
    async def branch() -> Any:
        RUNS.append(f"ran {label}")
        raise RuntimeError(f"{label} failed")
    return branch


@workflow
async def parallel_basic(ctx: WorkflowContext[None]) -> list[str]:
    result = await ctx.parallel([lambda: ctx.step(task, "task-1"),
                                 lambda: ctx.step(task, "task-2")], max_concurrency=1)
    return result.values()


def test_parallel_8_1_two_branches_of_one_step_each_return_in_branch_order() -> None:
    with runtime(parallel_basic) as rt:
        handle = rt.start(parallel_basic, None)
        rt.run_until_idle()
        assert handle.result() == ["task-1", "task-2"]
        assert [op.result for op in handle.history().operations if op.kind == "step"] == [
            b'"task-1"', b'"task-2"']
    assert RUNS == ["task-1", "task-2"]


@workflow
async def parallel_unnamed(ctx: WorkflowContext[None]) -> list[str]:
    result = await ctx.parallel([returns("alpha"), returns("beta")], max_concurrency=1)
    return result.values()


def test_parallel_8_2_branches_only_form_returns_the_branch_values() -> None:
    with runtime(parallel_unnamed) as rt:
        handle = rt.start(parallel_unnamed, None)
        rt.run_until_idle()
        assert handle.result() == ["alpha", "beta"]


@workflow
async def parallel_hetero(ctx: WorkflowContext[None]) -> list[Any]:
    result = await ctx.parallel([returns("hello"), returns(42), returns({"k": "v"})],
                                max_concurrency=1)
    return result.values()


def test_parallel_8_4_branches_of_different_result_types_keep_their_types() -> None:
    with runtime(parallel_hetero) as rt:
        handle = rt.start(parallel_hetero, None)
        rt.run_until_idle()
        assert handle.result() == ["hello", 42, {"k": "v"}]


@workflow
async def parallel_empty(ctx: WorkflowContext[None]) -> dict[str, Any]:
    result: BatchResult[Any] = await ctx.parallel([])
    return {"values": result.values(), **projection(result)}


def test_parallel_8_5_no_branches_completes_at_once_with_nothing() -> None:
    with runtime(parallel_empty) as rt:
        handle = rt.start(parallel_empty, None)
        rt.run_until_idle()
        assert handle.result() == {"values": [], "completionReason": "ALL_COMPLETED",
                                   "status": "SUCCEEDED", "successCount": 0,
                                   "failureCount": 0, "totalCount": 0}
        assert activations(handle) == 1


def _batch(branches: list[Callable[[], Awaitable[Any]]], completion: Completion
           ) -> Callable[[WorkflowContext[None]], Awaitable[dict[str, Any]]]:
    async def run(ctx: WorkflowContext[None]) -> dict[str, Any]:
        return projection(await ctx.parallel(branches, max_concurrency=1,
                                             completion=completion))
    return run


def _run_batch(name: str, branches: list[Callable[[], Awaitable[Any]]],
               completion: Completion) -> dict[str, Any]:
    wf = workflow(name=name)(_batch(branches, completion))
    with runtime(wf) as rt:
        handle = rt.start(wf, None)
        rt.run_until_idle()
        result: dict[str, Any] = handle.result()
    return result


def test_parallel_8_6_fail_fast_stops_after_the_first_failure() -> None:
    result = _run_batch("failfast", [returns("ok"), raises("b1"), returns("never")],
                        Completion(tolerated_failure_count=0))
    assert result == {"completionReason": "FAILURE_TOLERANCE_EXCEEDED", "status": "FAILED",
                      "successCount": 1, "failureCount": 1, "totalCount": 2}
    assert "ran never" not in RUNS


@workflow
async def parallel_throwing(ctx: WorkflowContext[None]) -> list[Any]:
    result = await ctx.parallel([raises("b0"), returns("never")], max_concurrency=1,
                                completion=Completion(tolerated_failure_count=0))
    result.raise_if_error()
    return result.values()


def test_parallel_8_7_raise_if_error_fails_the_execution_with_the_branch_failure() -> None:
    with runtime(parallel_throwing) as rt:
        handle = rt.start(parallel_throwing, None)
        rt.run_until_idle()
        error = failure(handle)
    assert error.error_type == "BatchError"
    assert "b0 failed" in error.message
    assert set(RUNS) == {"ran b0"}  # the second branch never started


def test_parallel_8_8_min_successful_completes_early() -> None:
    result = _run_batch("min_successful", [returns("a"), returns("b"), returns("c"),
                                           returns("d")], Completion(min_successful=2))
    assert {k: result[k] for k in ("completionReason", "successCount", "totalCount")} == {
        "completionReason": "MIN_SUCCESSFUL_REACHED", "successCount": 2, "totalCount": 2}
    assert set(RUNS) == {"ran a", "ran b"}  # the later branches never started


def test_parallel_8_9_failures_within_the_tolerated_count_run_every_branch() -> None:
    result = _run_batch("tolerated", [returns("a"), raises("b"), returns("c")],
                        Completion(tolerated_failure_count=1))
    assert result == {"completionReason": "ALL_COMPLETED", "status": "FAILED",
                      "successCount": 2, "failureCount": 1, "totalCount": 3}


def test_parallel_8_10_more_failures_than_tolerated_stop_early() -> None:
    result = _run_batch("tolerated_exceeded", [raises("a"), raises("b"), returns("c")],
                        Completion(tolerated_failure_count=1))
    assert {k: result[k] for k in ("completionReason", "successCount", "failureCount",
                                   "totalCount")} == {
        "completionReason": "FAILURE_TOLERANCE_EXCEEDED", "successCount": 0,
        "failureCount": 2, "totalCount": 2}
    assert "ran c" not in RUNS


@workflow
async def parallel_concurrent(ctx: WorkflowContext[None]) -> list[str]:
    result = await ctx.parallel([lambda: ctx.step(task, "r0"), lambda: ctx.step(task, "r1"),
                                 lambda: ctx.step(task, "r2")], max_concurrency=2)
    return result.values()


def test_parallel_8_11_concurrent_branches_return_in_branch_order() -> None:
    with runtime(parallel_concurrent) as rt:
        handle = rt.start(parallel_concurrent, None)
        rt.run_until_idle()
        assert handle.result() == ["r0", "r1", "r2"]


def test_parallel_8_13_failures_over_the_tolerated_percentage_stop_early() -> None:
    result = _run_batch("tolerated_pct", [raises("a"), raises("b"), returns("c"),
                                          returns("d")],
                        Completion(tolerated_failure_percentage=25))
    assert {k: result[k] for k in ("completionReason", "successCount", "failureCount",
                                   "totalCount")} == {
        "completionReason": "FAILURE_TOLERANCE_EXCEEDED", "successCount": 0,
        "failureCount": 2, "totalCount": 2}
    assert set(RUNS) == {"ran a", "ran b"}  # the later branches never started


async def _wait_then(ctx: WorkflowContext[None], value: str) -> str:
    await ctx.sleep(2)
    return value


@workflow
async def parallel_replay(ctx: WorkflowContext[None]) -> list[str]:
    result = await ctx.parallel([lambda: ctx.step(task, "b0"), lambda: _wait_then(ctx, "b1")],
                                max_concurrency=1)
    return result.values()


def test_parallel_8_14_replay_skips_finished_branches_across_a_wait() -> None:
    with runtime(parallel_replay) as rt:
        handle = rt.start(parallel_replay, None)
        rt.run_until_idle()
        assert handle.result() == ["b0", "b1"]
        assert activations(handle) == 2
    assert RUNS == ["b0"]  # branch 0's step ran once, not again on the replay


def test_parallel_8_16_every_branch_failing_within_tolerance_is_all_completed() -> None:
    result = _run_batch("all_fail", [raises("a"), raises("b"), raises("c")],
                        Completion(tolerated_failure_count=3))
    assert result == {"completionReason": "ALL_COMPLETED", "status": "FAILED",
                      "successCount": 0, "failureCount": 3, "totalCount": 3}


def test_parallel_8_17_min_successful_not_reached_runs_every_branch() -> None:
    result = _run_batch("min_not_reached", [returns("a"), raises("b"), returns("c")],
                        Completion(min_successful=3))
    assert result == {"completionReason": "ALL_COMPLETED", "status": "FAILED",
                      "successCount": 2, "failureCount": 1, "totalCount": 3}


def test_parallel_8_18_the_failure_tolerance_stops_it_before_min_successful() -> None:
    result = _run_batch("combined", [raises("a"), raises("b"), returns("c"), returns("d")],
                        Completion(min_successful=3, tolerated_failure_count=1))
    assert {k: result[k] for k in ("completionReason", "successCount", "failureCount",
                                   "totalCount")} == {
        "completionReason": "FAILURE_TOLERANCE_EXCEEDED", "successCount": 0,
        "failureCount": 2, "totalCount": 2}


@workflow
async def parallel_bad_concurrency(ctx: WorkflowContext[None]) -> list[Any]:
    result = await ctx.parallel([returns("a"), returns("b")], max_concurrency=0)
    return result.values()


def test_parallel_8_19_max_concurrency_0_is_a_validation_error_before_any_branch() -> None:
    with runtime(parallel_bad_concurrency) as rt:
        handle = rt.start(parallel_bad_concurrency, None)
        rt.run_until_idle()
        error = failure(handle)
        assert recorded(handle) == []
    assert error.error_type == "ValueError"
    assert "max_concurrency" in error.message
    assert RUNS == []


@workflow
async def parallel_accessors(ctx: WorkflowContext[None]) -> dict[str, Any]:
    result = await ctx.parallel([returns("a"), raises("b"), returns("c")], max_concurrency=1,
                                completion=Completion(tolerated_failure_count=1))
    return {"hasFailure": result.has_failure, "successCount": len(result.values()),
            "failureCount": result.failure_count, "errorCount": len(result.errors())}


def test_parallel_8_20_the_batch_results_accessors() -> None:
    with runtime(parallel_accessors) as rt:
        handle = rt.start(parallel_accessors, None)
        rt.run_until_idle()
        assert handle.result() == {"hasFailure": True, "successCount": 2, "failureCount": 1,
                                   "errorCount": 1}


@workflow
async def parallel_nested(ctx: WorkflowContext[None]) -> list[list[str]]:
    async def inner() -> list[str]:
        result = await ctx.parallel([lambda: ctx.step(task, "i1"), lambda: ctx.step(task, "i2")],
                                    max_concurrency=1)
        return result.values()
    outer = await ctx.parallel([inner], max_concurrency=1)
    return outer.values()


def test_parallel_8_21_a_parallel_inside_a_parallel_branch() -> None:
    with runtime(parallel_nested) as rt:
        handle = rt.start(parallel_nested, None)
        rt.run_until_idle()
        assert handle.result() == [["i1", "i2"]]


def test_parallel_8_22_failures_at_exactly_the_tolerated_percentage_run_every_branch(
) -> None:
    result = _run_batch("pct_boundary", [raises("a"), returns("b"), returns("c"),
                                         returns("d")],
                        Completion(tolerated_failure_percentage=25))
    assert result == {"completionReason": "ALL_COMPLETED", "status": "FAILED",
                      "successCount": 3, "failureCount": 1, "totalCount": 4}


@workflow
async def parallel_named(ctx: WorkflowContext[None]) -> list[str]:
    result = await ctx.parallel([returns("one"), returns("two")], max_concurrency=1,
                                names=["first", "second"])
    return result.values()


def test_parallel_8_3_named_branches_record_their_names() -> None:
    with runtime(parallel_named) as rt:
        handle = rt.start(parallel_named, None)
        rt.run_until_idle()
        assert handle.result() == ["one", "two"]
        assert recorded(handle) == [("context", "first", "completed"),
                                    ("context", "second", "completed")]


@workflow
async def parallel_flat(ctx: WorkflowContext[None]) -> list[str]:
    result = await ctx.parallel([lambda: ctx.step(task, "fa"), lambda: ctx.step(task, "fb")],
                                max_concurrency=1, flat=True)
    return result.values()


def test_parallel_8_12_flat_branches_record_their_steps_directly() -> None:
    with runtime(parallel_flat) as rt:
        handle = rt.start(parallel_flat, None)
        rt.run_until_idle()
        assert handle.result() == ["fa", "fb"]
        assert recorded(handle) == [("step", "task", "completed")] * 2


class WrapSerdes(Serdes[Any]):
    """parallel 8.15's serdes: ``{"wrapped": v}`` when recorded, ``v`` when read."""

    def serialize(self, value: Any) -> str:
        return json.dumps({"wrapped": value})

    def deserialize(self, data: str | bytes) -> Any:
        return json.loads(data)["wrapped"]


@workflow
async def parallel_serdes(ctx: WorkflowContext[None]) -> list[Any]:
    result = await ctx.parallel([returns("x"), returns("y")], max_concurrency=1,
                                item_serdes=WrapSerdes())
    return result.values()


def test_parallel_8_15_a_per_branch_serdes_round_trips_the_results() -> None:
    with runtime(parallel_serdes) as rt:
        handle = rt.start(parallel_serdes, None)
        rt.run_until_idle()
        assert handle.result() == ["x", "y"]
        recorded_values = [json.loads(op.result or b"")["v"]["text"]
                           for op in handle.history().operations if op.kind == "context"]
    assert recorded_values == ['{"wrapped": "x"}', '{"wrapped": "y"}']
