"""AWS durable-execution requirements for ``map`` (group map, ids 9.x), on the embedded
runtime: ``context.map`` is ``ctx.map(items, fn, max_concurrency=, completion=)``, whose
``BatchResult`` is the one ``ctx.parallel`` returns."""

from __future__ import annotations

from typing import Any

import pytest

from lambda_workflow import BatchResult, Completion, Serdes, WorkflowContext, workflow

from ._support import activations, failure, projection, runtime

RUNS: list[str] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    RUNS.clear()


def greet(name: str) -> str:
    RUNS.append(name)
    return f"Hello, {name}!"


@workflow
async def map_basic(ctx: WorkflowContext[list[str]]) -> list[str]:
    result = await ctx.map(ctx.request, lambda item: ctx.step(greet, item), max_concurrency=1)
    return result.values()


def test_map_9_1_one_step_per_item_returns_in_item_order() -> None:
    with runtime(map_basic) as rt:
        handle = rt.start(map_basic, ["World", "Kiro"])
        rt.run_until_idle()
        assert handle.result() == ["Hello, World!", "Hello, Kiro!"]
        assert [op.result for op in handle.history().operations if op.kind == "step"] == [
            b'"Hello, World!"', b'"Hello, Kiro!"']
    assert RUNS == ["World", "Kiro"]


async def double(item: int) -> int:
    return item * 2


@workflow
async def map_items_only(ctx: WorkflowContext[list[int]]) -> list[int]:
    result = await ctx.map(ctx.request, double, max_concurrency=1)
    return result.values()


def test_map_9_2_items_only_form_returns_each_items_value() -> None:
    with runtime(map_items_only) as rt:
        handle = rt.start(map_items_only, [1, 2])
        rt.run_until_idle()
        assert handle.result() == [2, 4]


async def plus_index(item: int, index: int) -> int:
    return item + index


@workflow
async def map_with_index(ctx: WorkflowContext[list[int]]) -> list[int]:
    result = await ctx.map(ctx.request, plus_index, max_concurrency=1)
    return result.values()


def test_map_9_3_the_function_receives_the_item_and_its_index() -> None:
    """A map function with two required parameters gets (item, index); each item's value is
    recorded as its context's result and replays without running the function again."""
    with runtime(map_with_index) as rt:
        handle = rt.start(map_with_index, [10, 20, 30])
        rt.run_until_idle()
        assert handle.result() == [10, 21, 32]
        assert [op.result for op in handle.history().operations if op.kind == "context"] == [
            b'{"v":10}', b'{"v":21}', b'{"v":32}']


@workflow
async def map_empty(ctx: WorkflowContext[list[int]]) -> dict[str, Any]:
    result: BatchResult[int] = await ctx.map(ctx.request, double)
    return {"values": result.values(), **projection(result)}


def test_map_9_4_no_items_completes_at_once_with_nothing() -> None:
    with runtime(map_empty) as rt:
        handle = rt.start(map_empty, [])
        rt.run_until_idle()
        assert handle.result() == {"values": [], "completionReason": "ALL_COMPLETED",
                                   "status": "SUCCEEDED", "successCount": 0,
                                   "failureCount": 0, "totalCount": 0}


async def outcome(item: str) -> str:
    """``fail...`` items raise; the others return themselves."""
    RUNS.append(item)
    if item.startswith("fail"):
        raise RuntimeError(f"{item} failed")
    return item


def _run_map(name: str, items: list[str], completion: Completion) -> dict[str, Any]:
    async def run(ctx: WorkflowContext[list[str]]) -> dict[str, Any]:
        return projection(await ctx.map(ctx.request, outcome, max_concurrency=1,
                                        completion=completion))
    wf = workflow(name=name)(run)
    with runtime(wf) as rt:
        handle = rt.start(wf, items)
        rt.run_until_idle()
        result: dict[str, Any] = handle.result()
    return result


def _counts(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("completionReason", "successCount", "failureCount",
                                   "totalCount")}


def test_map_9_5_fail_fast_stops_after_the_first_failure() -> None:
    result = _run_map("map_failfast", ["ok", "fail-1", "never"],
                      Completion(tolerated_failure_count=0))
    assert result == {"completionReason": "FAILURE_TOLERANCE_EXCEEDED", "status": "FAILED",
                      "successCount": 1, "failureCount": 1, "totalCount": 2}
    assert "never" not in RUNS


@workflow
async def map_throwing(ctx: WorkflowContext[list[str]]) -> list[str]:
    result = await ctx.map(ctx.request, outcome, max_concurrency=1,
                           completion=Completion(tolerated_failure_count=0))
    result.raise_if_error()
    return result.values()


def test_map_9_6_raise_if_error_fails_the_execution_with_the_item_failure() -> None:
    with runtime(map_throwing) as rt:
        handle = rt.start(map_throwing, ["fail-0", "never"])
        rt.run_until_idle()
        error = failure(handle)
    assert error.error_type == "BatchError"
    assert "fail-0 failed" in error.message
    assert "never" not in RUNS


def test_map_9_7_min_successful_completes_early() -> None:
    result = _run_map("map_min", ["a", "b", "c", "d"], Completion(min_successful=2))
    assert {k: result[k] for k in ("completionReason", "successCount", "totalCount")} == {
        "completionReason": "MIN_SUCCESSFUL_REACHED", "successCount": 2, "totalCount": 2}
    assert set(RUNS) == {"a", "b"}


def test_map_9_8_failures_within_the_tolerated_count_run_every_item() -> None:
    result = _run_map("map_tolerated", ["a", "fail-b", "c"],
                      Completion(tolerated_failure_count=1))
    assert result == {"completionReason": "ALL_COMPLETED", "status": "FAILED",
                      "successCount": 2, "failureCount": 1, "totalCount": 3}


def test_map_9_9_more_failures_than_tolerated_stop_early() -> None:
    result = _run_map("map_exceeded", ["fail-a", "fail-b", "c"],
                      Completion(tolerated_failure_count=1))
    assert _counts(result) == {"completionReason": "FAILURE_TOLERANCE_EXCEEDED",
                               "successCount": 0, "failureCount": 2, "totalCount": 2}
    assert "c" not in RUNS


def test_map_9_10_failures_over_the_tolerated_percentage_stop_early() -> None:
    result = _run_map("map_pct", ["fail-a", "fail-b", "c", "d"],
                      Completion(tolerated_failure_percentage=25))
    assert _counts(result) == {"completionReason": "FAILURE_TOLERANCE_EXCEEDED",
                               "successCount": 0, "failureCount": 2, "totalCount": 2}
    assert set(RUNS) == {"fail-a", "fail-b"}


def label(item: str) -> str:
    return item


@workflow
async def map_concurrent(ctx: WorkflowContext[list[str]]) -> list[str]:
    result = await ctx.map(ctx.request, lambda item: ctx.step(label, item), max_concurrency=2)
    return result.values()


def test_map_9_11_concurrent_items_return_in_item_order() -> None:
    with runtime(map_concurrent) as rt:
        handle = rt.start(map_concurrent, ["r0", "r1", "r2"])
        rt.run_until_idle()
        assert handle.result() == ["r0", "r1", "r2"]


async def _suspending(ctx: WorkflowContext[list[str]], item: str) -> str:
    if item == "r1":
        await ctx.sleep(1)
    return await ctx.step(label_once, item)


def label_once(item: str) -> str:
    RUNS.append(item)
    return item


@workflow
async def map_suspends(ctx: WorkflowContext[list[str]]) -> list[str]:
    result = await ctx.map(ctx.request, lambda item: _suspending(ctx, item), max_concurrency=1)
    return result.values()


def test_map_9_15_a_wait_inside_an_item_suspends_and_replay_skips_finished_items() -> None:
    with runtime(map_suspends) as rt:
        handle = rt.start(map_suspends, ["r0", "r1"])
        rt.run_until_idle()
        assert handle.result() == ["r0", "r1"]
        assert activations(handle) == 2
    assert RUNS == ["r0", "r1"]  # item 0's step did not run again after the wait


async def large(item: str) -> str:
    return item * 70_000


@workflow
async def map_large(ctx: WorkflowContext[list[str]]) -> dict[str, int]:
    result = await ctx.map(ctx.request, large, max_concurrency=1)
    assert all(len(value) == 70_000 for value in result.values())
    return {"successCount": result.success_count, "totalCount": result.total_count}


def test_map_9_16_an_aggregate_result_over_256_kb() -> None:
    with runtime(map_large) as rt:
        handle = rt.start(map_large, ["a", "b", "c", "d"])
        rt.run_until_idle()
        assert handle.result() == {"successCount": 4, "totalCount": 4}


async def upper(item: str) -> str:
    return item.upper()


@workflow
async def map_then_wait(ctx: WorkflowContext[list[str]]) -> list[str]:
    result = await ctx.map(ctx.request, upper, max_concurrency=1)
    await ctx.sleep(1)
    return result.values()


def test_map_9_17_a_wait_after_a_finished_map() -> None:
    with runtime(map_then_wait) as rt:
        handle = rt.start(map_then_wait, ["a", "b"])
        rt.run_until_idle()
        assert handle.result() == ["A", "B"]
        assert activations(handle) == 2


@workflow
async def map_failed_then_wait(ctx: WorkflowContext[list[str]]) -> dict[str, Any]:
    result = await ctx.map(ctx.request, outcome, max_concurrency=1,
                           completion=Completion(tolerated_failure_count=1))
    await ctx.sleep(1)
    return projection(result)


def test_map_9_18_a_wait_after_a_map_that_completed_with_a_failure() -> None:
    with runtime(map_failed_then_wait) as rt:
        handle = rt.start(map_failed_then_wait, ["ok", "fail"])
        rt.run_until_idle()
        assert handle.result() == {"completionReason": "ALL_COMPLETED", "status": "FAILED",
                                   "successCount": 1, "failureCount": 1, "totalCount": 2}
        assert activations(handle) == 2


def label_flat(item: str) -> str:
    return item


@workflow
async def map_flat(ctx: WorkflowContext[list[str]]) -> list[str]:
    result = await ctx.map(ctx.request, lambda item: ctx.step(label_flat, item),
                           max_concurrency=1, flat=True)
    return result.values()


def test_map_9_12_flat_items_record_their_steps_directly() -> None:
    with runtime(map_flat) as rt:
        handle = rt.start(map_flat, ["fa", "fb"])
        rt.run_until_idle()
        assert handle.result() == ["fa", "fb"]
        assert [(op.kind, op.name) for op in handle.history().operations] == [
            ("step", "label_flat")] * 2


async def times_ten(item: int) -> int:
    return item * 10


@workflow
async def map_named_items(ctx: WorkflowContext[list[int]]) -> list[int]:
    result = await ctx.map(ctx.request, times_ten, max_concurrency=1,
                           item_name=lambda item, index: f"item-{item}")
    return result.values()


def test_map_9_13_an_item_namer_names_each_items_context() -> None:
    with runtime(map_named_items) as rt:
        handle = rt.start(map_named_items, [1, 2])
        rt.run_until_idle()
        assert handle.result() == [10, 20]
        assert [(op.kind, op.name) for op in handle.history().operations] == [
            ("context", "item-1"), ("context", "item-2")]


class PrefixSerdes(Serdes[str]):
    """map 9.14's per-item serdes: ``wrapped:X`` when recorded, ``X`` when read."""

    def serialize(self, value: str) -> str:
        return f"wrapped:{value}"

    def deserialize(self, data: str | bytes) -> str:
        return str(data).removeprefix("wrapped:")


@workflow
async def map_item_serdes(ctx: WorkflowContext[list[str]]) -> list[str]:
    result = await ctx.map(ctx.request, upper, max_concurrency=1, item_serdes=PrefixSerdes())
    return result.values()


def test_map_9_14_a_per_item_serdes_round_trips_each_items_result() -> None:
    with runtime(map_item_serdes) as rt:
        handle = rt.start(map_item_serdes, ["x", "y"])
        rt.run_until_idle()
        assert handle.result() == ["X", "Y"]
        payloads = [op.result for op in handle.history().operations if op.kind == "context"]
    assert payloads == [b'{"v":{"serdes":"PrefixSerdes","text":"wrapped:X"}}',
                        b'{"v":{"serdes":"PrefixSerdes","text":"wrapped:Y"}}']
