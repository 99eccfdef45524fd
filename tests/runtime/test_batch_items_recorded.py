"""Map items and parallel branches run as child contexts (issue 12 items 4 and 8), on the
embedded runtime: a finished item returns its recorded value and its code never runs again;
``flat=True`` (and every batch recorded before nesting) keeps today's shape."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from lambda_workflow import (
    BatchError,
    Completion,
    Service,
    ServiceError,
    WorkflowContext,
    WorkflowFailedError,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.local import LocalRuntime

square = Service("square", int, int)
RUNS: Counter[int] = Counter()
FLAT = {"flat": False}


async def _square(n: int) -> int:
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
    RUNS.clear()
    FLAT["flat"] = False


@workflow
async def squares(ctx: WorkflowContext[list[int]]) -> list[int]:
    async def item(n: int) -> int:
        RUNS[n] += 1
        return await ctx.call(square, n)

    result = await ctx.map(ctx.request, item, max_concurrency=3, flat=FLAT["flat"])
    result.raise_if_error()
    return result.values()


def _run(items: list[int]) -> tuple[list[int], int, list[Any]]:
    with _runtime(squares) as rt:
        handle = rt.start(squares, items)
        activations = len([r for r in rt.run_until_idle() if r.workflow_name == "squares"])
        return handle.result(), activations, handle.history().operations


def test_a_finished_item_never_runs_again() -> None:
    """Nested (the default): each item's function runs in the activation that starts it and
    in the one that delivers its reply, never after, however many activations follow."""
    items = list(range(1, 13))
    values, activations, ops = _run(items)
    assert values == [n * n for n in items]
    assert activations > 3
    assert Counter(dict.fromkeys(items, 2)) == RUNS
    contexts = [op for op in ops if op.kind == "context"]
    assert [op.name for op in contexts] == [f"map[{i}]" for i in range(12)]
    assert all(op.state.value == "completed" for op in contexts)
    assert {op.op_id.rpartition(".")[0] for op in ops if op.kind == "call"} == {
        op.op_id for op in contexts}


def test_flat_items_run_again_on_every_replay() -> None:
    """flat=True: no context operations; the calls are the parent's own, and every started
    item's function runs again in every activation after it started."""
    FLAT["flat"] = True
    items = list(range(1, 13))
    values, activations, ops = _run(items)
    assert values == [n * n for n in items]
    assert {op.kind for op in ops} == {"call"}
    assert [op.op_id for op in ops] == [str(i) for i in range(1, 13)]
    assert sum(RUNS.values()) > 2 * len(items)
    assert RUNS[1] == activations  # the first item ran in every activation


def test_a_batch_recorded_flat_replays_flat_under_nested_code() -> None:
    """A history whose batch recorded its branches' operations directly (flat, as every
    batch before nesting did) goes on flat when the code's default is nested."""
    FLAT["flat"] = True
    with _runtime(squares) as rt:
        handle = rt.start(squares, [1, 2, 3, 4, 5])
        assert rt.step_workflows()  # the start: three calls recorded flat
        assert rt.step_services()
        assert rt.step_workflows()  # their replies: two more calls, still flat
        FLAT["flat"] = False
        rt.run_until_idle()
        assert handle.result() == [1, 4, 9, 16, 25]
        assert {op.kind for op in handle.history().operations} == {"call"}


@workflow
async def named(ctx: WorkflowContext[None]) -> list[int]:
    result = await ctx.parallel([lambda: ctx.call(square, 2), lambda: ctx.call(square, -3)],
                                names=["two", "minus three"],
                                completion=Completion(all_completed=True))
    try:
        result.raise_if_error()
    except BatchError as exc:
        assert "minus three" not in str(exc)  # the branch's error is the service's
        return [[e.status.value == "failed" for e in result.items].count(True), 0]
    return [0]


def test_branch_names_are_recorded_and_errors_stay_the_services() -> None:
    with _runtime(named) as rt:
        handle = rt.start(named, None)
        rt.run_until_idle()
        assert handle.result() == [1, 0]
        ops = handle.history().operations
    assert [(op.op_id, op.name) for op in ops if op.kind == "context"] == [
        ("1", "two"), ("2", "minus three")]
    failed = next(op for op in ops if op.name == "minus three")
    assert failed.state.value == "failed"


@workflow
async def item_named(ctx: WorkflowContext[list[str]]) -> list[str]:
    async def shout(word: str) -> str:
        await ctx.sleep(5)
        return word.upper()

    result = await ctx.map(ctx.request, shout, item_name=lambda word, i: f"{i}:{word}")
    return result.values()


def test_map_takes_an_item_namer() -> None:
    with _runtime(item_named) as rt:
        handle = rt.start(item_named, ["a", "b"])
        rt.run_until_idle()
        assert handle.result() == ["A", "B"]
        ops = handle.history().operations
    assert [(op.op_id, op.kind, op.name) for op in ops] == [
        ("1", "context", "0:a"), ("2", "context", "1:b"),
        ("1.1", "timer", "sleep"), ("2.1", "timer", "sleep")]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"names": ["only one"]}, "ctx.parallel got 1 names for 2 branches"),
    ({"names": ["a", ""]}, "a parallel branch's name must be a non-empty printable string"),
    ({"flat": "yes"}, "flat must be a bool, got 'yes'"),
    ({"names": "ab"}, "names must be one string per branch, not a string: 'ab'"),
])
def test_bad_batch_options_are_named(kwargs: dict[str, Any], message: str) -> None:
    @workflow
    async def bad(ctx: WorkflowContext[None]) -> int:
        await ctx.parallel([lambda: ctx.call(square, 1), lambda: ctx.call(square, 2)],
                           **kwargs)
        return 0

    with _runtime(bad) as rt:
        handle = rt.start(bad, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError, match=message):
            handle.result()


def test_an_item_namer_returning_a_non_string_is_named() -> None:
    @workflow
    async def bad(ctx: WorkflowContext[None]) -> int:
        namer: Any = lambda n, i: n  # noqa: E731
        await ctx.map([1], lambda n: ctx.call(square, n), item_name=namer)
        return 0

    with _runtime(bad) as rt:
        handle = rt.start(bad, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError, match=r"item_name\(item 0\) must be a "
                                                      r"non-empty printable string, got 1"):
            handle.result()


PREFIX = {"p": "item"}


@workflow
async def renamed(ctx: WorkflowContext[None]) -> list[int]:
    async def wait(n: int) -> int:
        await ctx.sleep(5)
        return n

    result = await ctx.map([0, 1, 2], wait, item_name=lambda n, i: f"{PREFIX['p']} {n}")
    return result.values()


def test_renamed_items_fail_the_replay_naming_the_first() -> None:
    """Every branch meets the renamed context; the workflow fails with the first one's
    error (operation #1), not the last branch's."""
    PREFIX["p"] = "item"
    with _runtime(renamed) as rt:
        handle = rt.start(renamed, None)
        assert rt.step_workflows()
        PREFIX["p"] = "renamed"
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError, match=r"at operation #1: .* created context "
                                                      r"'renamed 0', but the history recorded "
                                                      r"context 'item 0'"):
            handle.result()


CLEANED: list[str] = []


@workflow
async def fail_fast(ctx: WorkflowContext[None]) -> str:
    async def fails() -> int:
        await ctx.sleep(10)
        raise ValueError("late failure")

    async def cleans_up() -> int:
        try:
            await ctx.sleep(1000)
        except asyncio.CancelledError:
            CLEANED.append("b")
            await ctx.call(square, 9)  # compensate inside the branch
            raise
        return 0

    result = await ctx.parallel([fails, cleans_up, cleans_up], names=["a", "b", "c"])
    return ",".join(item.status.value for item in result.items)


def test_branches_waiting_without_running_still_see_the_batch_cancel_them() -> None:
    """Branches b and c wait on a long sleep; nothing under them replies when a's timer
    fires, so their bodies do not run in that activation. When a fails, the batch cancels
    both: each body runs to its sleep and is cancelled there, and its compensating call is
    recorded inside it (two at once: neither waits for the other to stop running)."""
    CLEANED.clear()
    with _runtime(fail_fast) as rt:
        handle = rt.start(fail_fast, None)
        rt.run_until_idle()
        assert handle.result() == "failed,cancelled,cancelled"
        ops = {(op.op_id, op.kind) for op in handle.history().operations}
    assert {("2.2", "call"), ("3.2", "call")} <= ops
    assert CLEANED and set(CLEANED) == {"b"}


@workflow
async def staggered(ctx: WorkflowContext[int]) -> list[int]:
    async def item(n: int) -> int:
        RUNS[n] += 1
        await ctx.sleep(10 * (n + 1))
        return n

    result = await ctx.map(list(range(ctx.request)), item)
    return result.values()


def test_an_item_waiting_across_many_activations_does_not_run_at_each_suspension() -> None:
    """Items whose timers fire one per activation: an item still waiting runs its function
    only where it starts and where its timer fires, however many activations it waits
    through. (A regression ran the function of every waiting item once more at each
    suspension, when the activation's coroutine was torn down: O(items) of user code per
    activation again.)"""
    with _runtime(staggered) as rt:
        handle = rt.start(staggered, 6)
        activations = len([r for r in rt.run_until_idle() if r.workflow_name == "staggered"])
        assert handle.result() == list(range(6))
    assert activations == 7
    assert Counter(dict.fromkeys(range(6), 2)) == RUNS
