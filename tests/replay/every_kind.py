"""One workflow per kind of durable operation, for the export round trip (run on a state store,
``history --json``, ``replay --workflow`` this file): calls, steps with a retry, sleeps,
callbacks (completed, timed out), children, parallel and map, wait_for_condition, patches,
timeouts and cancellation.

The CLI loads this file by path as the module ``every_kind``; the tests register the same
workflows with their runtime through :func:`setup`.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import orjson
from pydantic import BaseModel

from lambda_workflow import (
    CallbackTimeoutError,
    CallTimeoutError,
    Completion,
    RetryPolicy,
    Service,
    StepError,
    Workflow,
    WorkflowContext,
    current_step,
    step,
    workflow,
)
from lambda_workflow._runtime.history import history_from_json
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import History


class Item(BaseModel):
    sku: str
    qty: int
    note: str = "é ✓ \"quoted\""  # non-ASCII and escapes in every request


class Quote(BaseModel):
    sku: str
    cents: int
    ratio: float


price_service = Service("price", Item, Quote)
ship_service = Service("ship", Item, None)
# Nothing implements it: a call to it waits until its timeout.
slow_service = Service("slow", Item, Quote)

# The tokens of callbacks the workflows created, for the tests to complete.
TOKENS: dict[str, str] = {}


def price_of(item: Item) -> Quote:
    return Quote(sku=item.sku, cents=item.qty * 250, ratio=item.qty / 3)


def ship(item: Item) -> None:
    return None


@step(name="weigh", retry=RetryPolicy(max_attempts=3, initial_delay=5))
def weigh(item: Item, factor: float = 1.0, *, unit: str = "kg") -> dict[str, float | str]:
    if current_step().attempt == 1:
        raise RuntimeError("the scale is busy")
    return {"weight": item.qty * factor, "unit": unit}


@step(name="refuse", retry=RetryPolicy(max_attempts=1))
def refuse(item: Item) -> int:
    raise ValueError(f"{item.sku} is not sold")


@workflow
async def calls(ctx: WorkflowContext[Item]) -> Quote:
    quote, _ = await asyncio.gather(ctx.call(price_service, ctx.request),
                                    ctx.call(ship_service, ctx.request))
    return quote


@workflow
async def steps(ctx: WorkflowContext[Item]) -> dict[str, float | str]:
    return await ctx.step(weigh, ctx.request, 2.5, unit="lb")


@workflow
async def failing_step(ctx: WorkflowContext[Item]) -> int:
    return await ctx.step(refuse, ctx.request)


@workflow
async def sleeps(ctx: WorkflowContext[Item]) -> str:
    before = ctx.now()
    await ctx.sleep(timedelta(hours=2))
    await ctx.sleep(90)
    return f"{(ctx.now() - before).total_seconds():.0f}"


def _remember(token: str) -> None:
    TOKENS[current_step().workflow_id] = token


@workflow
async def callbacks(ctx: WorkflowContext[Item]) -> str:
    approved = await ctx.wait_for_callback("approve", _remember, bool, timeout=3600,
                                           heartbeat_timeout=600)
    late = ctx.create_callback("late", str, timeout=60)
    try:
        await late
    except CallbackTimeoutError:
        return f"approved={approved}, late timed out"
    return "late came"


@workflow
async def children(ctx: WorkflowContext[Item]) -> int:
    quote = await ctx.child(calls, ctx.request)
    other = await ctx.child(calls, Item(sku="pen", qty=3), workflow_id=f"{ctx.workflow_id}-pen")
    return quote.cents + other.cents


@workflow
async def batches(ctx: WorkflowContext[Item]) -> list[int]:
    item = ctx.request

    async def quote(qty: int) -> int:
        return (await ctx.call(price_service, Item(sku=item.sku, qty=qty))).cents

    both = await ctx.parallel([lambda: quote(1), lambda: quote(2)])
    mapped = await ctx.map(range(3, 7), quote, max_concurrency=2,
                           completion=Completion(min_successful=3))
    return [*both.values(), *mapped.values()]


def _count_up(state: int) -> int:
    return state + 1


def _every_minute(state: int, attempt: int) -> float | None:
    return None if state >= 3 else 60.0


@workflow
async def conditions(ctx: WorkflowContext[Item]) -> int:
    return await ctx.wait_for_condition(_count_up, 0, _every_minute, name="stock")


@workflow
async def versions(ctx: WorkflowContext[Item]) -> str:
    if ctx.patched("ship-first"):
        await ctx.call(ship_service, ctx.request)
    quote = await ctx.call(price_service, ctx.request)
    ctx.deprecate_patch("old-pricing")
    return f"{quote.cents}"


@workflow
async def timeouts(ctx: WorkflowContext[Item]) -> str:
    try:
        await ctx.call(slow_service, ctx.request, timeout=timedelta(minutes=5))
    except CallTimeoutError as exc:
        return f"timed out: {type(exc).__name__}"
    return "answered"


@workflow
async def cancellable(ctx: WorkflowContext[Item]) -> str:
    try:
        await ctx.sleep(timedelta(days=1))
    except asyncio.CancelledError:
        # Clean up after the cancellation: one more recorded call, then end cancelled.
        await ctx.call(ship_service, Item(sku=ctx.request.sku, qty=0))
        raise
    return "slept"


@workflow
async def failing(ctx: WorkflowContext[Item]) -> int:
    try:
        return await ctx.step(refuse, ctx.request)
    except StepError as exc:
        raise RuntimeError(f"gave up: {exc.message}") from None


WORKFLOWS: list[Workflow[Item, Any]] = [
    calls, steps, failing_step, sleeps, callbacks, children, batches, conditions, versions,
    timeouts, cancellable, failing]


def setup(runtime: LocalRuntime) -> None:
    runtime.register(*WORKFLOWS)
    runtime.implement(price_service, price_of)
    runtime.implement(ship_service, ship)


def assert_loader_gives_back(recorded: History, exported: str) -> None:
    """history_from_json(history --json) gives back exactly what the store holds: every
    request and result, the instance's input, result and error, byte for byte."""
    loaded = history_from_json(exported)
    assert loaded.instance.input == recorded.instance.input
    assert loaded.instance.result == recorded.instance.result
    assert loaded.instance.error == recorded.instance.error
    assert loaded.instance.status == recorded.instance.status
    assert len(loaded.operations) == len(recorded.operations)
    for got, want in zip(loaded.operations, recorded.operations, strict=True):
        assert (got.op_id, got.kind, got.name, got.state) == (want.op_id, want.kind,
                                                              want.name, want.state)
        assert got.request == want.request, (want.kind, want.name)
        assert got.request_digest == want.request_digest
        assert got.result == want.result, (want.kind, want.name)


def _cancel(runtime: LocalRuntime, workflow_id: str, reason: str) -> None:
    body = orjson.dumps({"v": 1, "kind": "cancel", "workflow_id": workflow_id,
                         "reason": reason})
    runtime.queue.send(body, group_id=workflow_id, dedup_id=f"cancel-{workflow_id}")


def record(runtime: LocalRuntime) -> dict[str, str]:
    """Run every kind on ``runtime`` (its store is what gets exported) and return the
    instances made, by workflow id, with the status each must have ended in."""
    setup(runtime)
    item = Item(sku="book", qty=4)
    starts: list[tuple[Workflow[Item, Any], str]] = [
        (calls, "calls-1"), (steps, "steps-1"), (failing_step, "failing-step-1"),
        (sleeps, "sleeps-1"), (children, "children-1"), (batches, "batches-1"),
        (conditions, "conditions-1"), (versions, "versions-1"), (timeouts, "timeouts-1"),
        (failing, "failing-1"), (callbacks, "callbacks-timed-out")]
    for wf, wid in starts:
        runtime.start(wf, item, workflow_id=wid)
    runtime.run_until_idle()
    # Callbacks: one completed after a heartbeat (its "late" callback then times out), one
    # left waiting. A cancellation while sleeping, cleaned up with one more call.
    runtime.start(callbacks, item, workflow_id="callbacks-1")
    runtime.start(callbacks, item, workflow_id="callbacks-waiting")
    runtime.start(cancellable, item, workflow_id="cancelled-1")
    runtime.run_until_idle(skip_time=False)
    runtime.heartbeat_callback(TOKENS["callbacks-1"])
    runtime.complete_callback(TOKENS["callbacks-1"], True)
    _cancel(runtime, "cancelled-1", "the order was withdrawn")
    runtime.run_until_idle(skip_time=False)
    runtime.advance_time(120)
    runtime.run_until_idle(skip_time=False)
    return {
        "calls-1": "completed", "steps-1": "completed", "failing-step-1": "failed",
        "sleeps-1": "completed", "children-1": "completed", "children-1~1": "completed",
        "children-1-pen": "completed", "batches-1": "completed",
        "conditions-1": "completed", "versions-1": "completed", "timeouts-1": "completed",
        "failing-1": "failed", "callbacks-timed-out": "failed", "callbacks-1": "completed",
        "callbacks-waiting": "running", "cancelled-1": "cancelled",
    }
