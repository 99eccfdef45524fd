"""ctx.run_in_child_context: inline child contexts (issue 12 item 3), on the embedded runtime.

AWS requirement ids cited are from the child-context group of the durable-execution
conformance suite (docs/aws-parity.md)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pydantic
import pytest

from lambda_workflow import (
    ChildContextError,
    Service,
    ServiceError,
    WorkflowContext,
    WorkflowFailedError,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow._runtime.contexts import REPLAY_CHILDREN, SCOPED_SEQ_BASE
from lambda_workflow.local import LocalRuntime

square = Service("square", int, int)
RUNS: Counter[str] = Counter()


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


class Total(pydantic.BaseModel):
    total: int
    parts: list[int]


async def sum_of_squares(ctx: WorkflowContext[Any], a: int, b: int) -> Total:
    RUNS["body"] += 1
    x = await ctx.call(square, a)
    y = await ctx.call(square, b)
    return Total(total=x + y, parts=[x, y])


@workflow
async def grouped(ctx: WorkflowContext[int]) -> dict[str, Any]:
    total = await ctx.run_in_child_context(sum_of_squares, ctx.request, 2, name="sums")
    RUNS["after"] += 1
    last = await ctx.call(square, total.total)
    return {"type": type(total).__name__, "total": total.total, "last": last}


def test_finished_context_returns_its_recorded_result_without_running_its_body() -> None:
    """child 1.1/3.1: the body runs until it finishes; once its result is recorded, the
    replays that follow (one per reply after it) return it without running the body, and
    the value is the annotated type on the first run and on replay alike."""
    with _runtime(grouped) as rt:
        handle = rt.start(grouped, 3)
        rt.run_until_idle()
        assert handle.result() == {"type": "Total", "total": 13, "last": 169}
        ops = handle.history().operations
    # body: activations 1-3 (start, reply to 3, reply to 2); then 1 replay after the last
    # reply, which must not run the body.
    assert RUNS["body"] == 3
    kinds = [(op.op_id, op.kind, op.name) for op in ops]
    assert kinds == [("1", "context", "sums"), ("2", "call", "square"),
                     ("1.1", "call", "square"), ("1.2", "call", "square")]
    context = ops[0]
    assert context.state.value == "completed"
    assert context.result == b'{"v":{"parts":[9,4],"total":13}}'
    assert [op.seq for op in ops[2:]] == [SCOPED_SEQ_BASE, SCOPED_SEQ_BASE + 1]


@workflow
async def nested(ctx: WorkflowContext[None]) -> list[int]:
    async def inner(c: WorkflowContext[Any], n: int) -> int:
        RUNS[f"inner{n}"] += 1
        return await c.call(square, n)

    async def outer(c: WorkflowContext[Any]) -> list[int]:
        RUNS["outer"] += 1
        a = await c.run_in_child_context(inner, 2, name="two")
        b = await c.run_in_child_context(inner, 3, name="three")
        return [a, b]

    values = await ctx.run_in_child_context(outer, name="outer")
    return [*values, await ctx.call(square, 4)]


def test_contexts_nest_with_ids_within_their_parent() -> None:
    """child 2.x: child contexts nest; each operation's id is within its context."""
    with _runtime(nested) as rt:
        handle = rt.start(nested, None)
        rt.run_until_idle()
        assert handle.result() == [4, 9, 16]
        ids = {(op.op_id, op.kind, op.name) for op in handle.history().operations}
    assert ids == {("1", "context", "outer"), ("2", "call", "square"),
                   ("1.1", "context", "two"), ("1.1.1", "call", "square"),
                   ("1.2", "context", "three"), ("1.2.1", "call", "square")}
    # 'two' ran in activations 1 and 2 only; 'three' in 2 and 3; the last replay runs none.
    assert Counter({"outer": 3, "inner2": 2, "inner3": 2}) == RUNS


@workflow
async def concurrent(ctx: WorkflowContext[None]) -> list[int]:
    async def chain(c: WorkflowContext[Any], start: int) -> int:
        RUNS[f"chain{start}"] += 1
        n = start
        for _ in range(start):
            n = await c.call(square, n) % 7 + 1
        return n

    return list(await asyncio.gather(ctx.run_in_child_context(chain, 1, name="short"),
                                     ctx.run_in_child_context(chain, 3, name="long")))


def test_concurrent_contexts_number_their_operations_independently() -> None:
    """Two contexts awaited together: a finished one is not run again while the other goes
    on, and the ids of each depend only on its own operations."""
    with _runtime(concurrent) as rt:
        handle = rt.start(concurrent, None)
        rt.run_until_idle()
        assert handle.result() == [2, 3]
        ids = sorted(op.op_id for op in handle.history().operations)
    assert ids == ["1", "1.1", "2", "2.1", "2.2", "2.3"]
    assert RUNS["chain1"] == 2  # started, then finished on its reply: never run again
    assert RUNS["chain3"] == 4


@workflow
async def failing(ctx: WorkflowContext[None]) -> str:
    async def boom(c: WorkflowContext[Any]) -> int:
        RUNS["boom"] += 1
        await c.call(square, 2)
        raise ValueError("no luck")

    try:
        await ctx.run_in_child_context(boom, name="boom")
    except ChildContextError as exc:
        first = f"{exc.name}|{exc.error_type}|{exc.message}"
    await ctx.call(square, 5)
    return first


def test_a_failure_is_recorded_and_raised_the_same_way_on_replay() -> None:
    """child 4.x: the body's error is recorded on the context; the replay after the next
    reply raises the same ChildContextError from the record without running the body."""
    with _runtime(failing) as rt:
        handle = rt.start(failing, None)
        rt.run_until_idle()
        assert handle.result() == "boom|ValueError|no luck"
        context = handle.history().operations[0]
    assert context.state.value == "failed"
    assert RUNS["boom"] == 2


@workflow
async def service_failure(ctx: WorkflowContext[None]) -> str:
    async def negative(c: WorkflowContext[Any]) -> int:
        return await c.call(square, -1)

    try:
        await ctx.run_in_child_context(negative)
    except ServiceError as exc:
        first = f"{exc.error_type}|{exc.message}|{exc.service}|{exc.call_id}"
    await ctx.call(square, 5)
    return first


def test_a_service_error_comes_back_as_the_service_error_on_replay_too() -> None:
    with _runtime(service_failure) as rt:
        handle = rt.start(service_failure, None)
        rt.run_until_idle()
        assert handle.result() == "Negative|-1 is negative|square|1.1"


@workflow
async def big(ctx: WorkflowContext[None]) -> int:
    async def many(c: WorkflowContext[Any]) -> list[int]:
        RUNS["many"] += 1
        n = await c.call(square, 9)
        return [n] * 200

    values = await ctx.run_in_child_context(many)
    return sum(values) + await ctx.call(square, 1)


def test_a_result_over_the_payload_limit_reruns_the_body_on_replay() -> None:
    """child (ReplayChildren): a result too large to record is recorded as such; every
    replay runs the body again over its recorded operations, with the same result."""
    with _runtime(big) as rt:
        rt.engine.payload_limit = 256
        handle = rt.start(big, None)
        rt.run_until_idle()
        assert handle.result() == 81 * 200 + 1
        context = handle.history().operations[0]
        calls = [op for op in handle.history().operations if op.kind == "call"]
    assert context.result == REPLAY_CHILDREN
    assert len(calls) == 2  # the body's call was not made again
    assert RUNS["many"] == 3  # start, its reply, and the replay after the last reply


@workflow
async def shrinking(ctx: WorkflowContext[None]) -> int:
    async def body(c: WorkflowContext[Any]) -> int:
        a = await c.call(square, 2)
        if RUNS["shrink"]:
            return a
        b = await c.call(square, 3)
        RUNS["shrink"] += 1
        await c.call(square, 4)
        return a + b

    return await ctx.run_in_child_context(body)


def test_a_body_that_creates_fewer_operations_than_recorded_is_nondeterministic() -> None:
    with _runtime(shrinking) as rt:
        handle = rt.start(shrinking, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError, match=r"child context 'body' \(1\) finished "
                           r"after creating 1 operation\(s\), but its history recorded 3"):
            handle.result()


def test_bad_names_are_refused_before_anything_runs() -> None:
    @workflow
    async def unnamed(ctx: WorkflowContext[None]) -> int:
        async def body(c: WorkflowContext[Any]) -> int:
            return 1

        return await ctx.run_in_child_context(body, name="")

    with _runtime(unnamed) as rt:
        handle = rt.start(unnamed, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError, match=r"ctx\.run_in_child_context must be a "
                                                      r"non-empty printable string, got ''"):
            handle.result()


def test_the_cli_shows_contexts_and_the_operations_inside_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`history` lists a context by its name and the operations inside it by their ids
    within it, in the order the history stores them (the root's first)."""
    from lambda_workflow.cli import main

    db = tmp_path / "contexts.sqlite3"
    with LocalRuntime(db, clock=VirtualClock(1_700_000_000.0)) as rt:
        rt.register(grouped)
        rt.implement(square, _square)
        rt.start(grouped, 3, workflow_id="g1")
        rt.run_until_idle()
    assert main(["history", "--db", str(db), "g1"]) == 0
    lines = [line.split()[:3] for line in capsys.readouterr().out.splitlines()
             if line.lstrip().startswith("#")]
    assert lines == [["#1", "context", "sums"], ["#2", "call", "square"],
                     ["#1.1", "call", "square"], ["#1.2", "call", "square"]]


CLEANUP: list[str] = []


async def waits_then_cleans_up(ctx: WorkflowContext[Any]) -> int:
    try:
        await ctx.sleep(100)
    except asyncio.CancelledError:
        CLEANUP.append("body")
        await ctx.call(square, 3)  # a compensating call inside the context
        raise
    return 1


@workflow
async def cancellable(ctx: WorkflowContext[None]) -> int:
    try:
        return await ctx.run_in_child_context(waits_then_cleans_up, name="cleanup")
    except asyncio.CancelledError:
        await ctx.call(square, 4)
        raise


def test_a_cancel_reaches_the_body_of_an_unfinished_context() -> None:
    """A cancel arriving while a context's body waits (and nothing under it replied) is
    raised inside the body, whose compensating call is recorded within the context."""
    CLEANUP.clear()
    with _runtime(cancellable) as rt:
        handle = rt.start(cancellable, None, workflow_id="c-1")
        assert rt.step_workflows()
        rt.queue.send(b'{"v":1,"kind":"cancel","workflow_id":"c-1","reason":"stop"}',
                      group_id="c-1", dedup_id="cancel-1")
        rt.run_until_idle(skip_time=False)
        assert handle.status().value == "cancelled"
        ops = {(op.op_id, op.kind, op.name) for op in handle.history().operations}
    assert ("1.2", "call", "square") in ops
    assert ("2", "call", "square") in ops
    assert CLEANUP[0] == "body"
