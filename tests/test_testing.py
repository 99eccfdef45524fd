"""lambda_workflow.testing: the test runtime, its time skipping and its always-replay check."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from lambda_workflow import (
    NonDeterminismError,
    Service,
    ServiceError,
    WorkflowContext,
    WorkflowFailedError,
    WorkflowNotFinishedError,
    workflow,
)
from lambda_workflow.backends.memory import MemoryStateStore
from lambda_workflow.callbacks import CallbackTokens
from lambda_workflow.models import InstanceStatus
from lambda_workflow.testing import (
    DEFAULT_START_TIME,
    AlwaysReplayError,
    ServiceImplementations,
    WorkflowTestRuntime,
    check_replay,
    history_from_json,
    history_to_json,
    runtime_fixture,
)


class Order(BaseModel):
    order_id: str
    amount: int


class Quote(BaseModel):
    price: int


class Receipt(BaseModel):
    order_id: str
    charged: int
    at: datetime


quote_service = Service("quote", Order, Quote)
charge_service = Service("charge", Order, None)
audit_service = Service("audit", Order, None)
express_service = Service("express", Order, None)
standard_service = Service("standard", Order, None)


def quote(order: Order) -> Quote:
    """A plain (sync) service implementation."""
    return Quote(price=order.amount * 2)


CHARGED: list[Order] = []


async def charge(order: Order) -> None:
    """An async service implementation."""
    CHARGED.append(order)


SERVICES: ServiceImplementations = {
    quote_service: quote, charge_service: charge, audit_service: lambda order: None,
    express_service: lambda order: None, standard_service: lambda order: None}


@workflow
async def checkout(ctx: WorkflowContext[Order]) -> Receipt:
    order = ctx.request
    price, _ = await asyncio.gather(ctx.call(quote_service, order),
                                    ctx.call(audit_service, order))
    await ctx.call(charge_service, order)
    return Receipt(order_id=order.order_id, charged=price.price, at=ctx.now())


# -- non-deterministic workflows ----------------------------------------------------------------
_counter = 0


@workflow
async def counter_branch(ctx: WorkflowContext[Order]) -> str:
    """Branches on a module-level counter: a different call on every execution."""
    global _counter
    _counter += 1
    if _counter % 2:
        await ctx.call(express_service, ctx.request)
        return "express"
    await ctx.call(standard_service, ctx.request)  # counter_branch: the other call
    return "standard"


@workflow
async def random_branch(ctx: WorkflowContext[Order]) -> str:
    """Chooses a call with random.random() (not ctx.random()): not deterministic."""
    if random.random() < 0.5:
        await ctx.call(express_service, ctx.request)
        return "express"
    await ctx.call(standard_service, ctx.request)
    return "standard"


_greetings = 0


@workflow
async def counter_result(ctx: WorkflowContext[Order]) -> str:
    """No operation at all, but its result depends on how often it ran."""
    global _greetings
    _greetings += 1
    return f"hello #{_greetings}"


@pytest.fixture
def seeded_random() -> Iterator[None]:
    """Seed the global random generator so that its first two draws fall on either side of
    0.5 (seed 1: 0.134, then 0.847), and restore its state afterwards."""
    state = random.getstate()
    random.seed(1)
    try:
        yield
    finally:
        random.setstate(state)


def _line_of(text: str) -> int:
    """The line of this file that contains ``text`` (for asserting call sites)."""
    with open(__file__, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if text in line:
                return number
    raise AssertionError(f"{text!r} not in {__file__}")


def test_always_replay_catches_a_branch_on_a_module_level_counter() -> None:
    """The first activation calls `express`; the replay right after it calls `standard`, so
    `run` raises AlwaysReplayError (a NonDeterminismError) after activation 1, naming the
    instance, the new call site (file:line) and what the history recorded."""
    global _counter
    _counter = 0
    with WorkflowTestRuntime(counter_branch, services=SERVICES) as rt, \
            pytest.raises(NonDeterminismError) as caught:
        rt.run(counter_branch, Order(order_id="o-1", amount=1), workflow_id="counter-1")
    error = caught.value
    assert isinstance(error, AlwaysReplayError)
    assert error.workflow_id == "counter-1" and error.activation == 1
    message = str(error)
    assert "'counter_branch' (counter-1)" in message
    line = _line_of("# counter_branch: the other call")
    assert f"test_testing.py:{line} in counter_branch" in message
    assert "call 'standard'" in message and "recorded call 'express'" in message
    assert not error.check.ok


def test_always_replay_catches_random_random_on_the_first_run(seeded_random: None) -> None:
    """A workflow choosing its call with random.random() fails the first test run: the
    replay after activation 1 draws again and calls the other service."""
    with WorkflowTestRuntime(random_branch, services=SERVICES) as rt:
        with pytest.raises(AlwaysReplayError, match=r"random_branch.*operation #1") as caught:
            rt.run(random_branch, Order(order_id="o-2", amount=1), workflow_id="random-1")
        assert rt.status("random-1") is InstanceStatus.RUNNING
    assert "recorded call 'express'" in str(caught.value)


def test_always_replay_catches_a_different_ending_without_any_operation() -> None:
    """A workflow that completes in its first activation is never replayed by the runtime
    itself; the check still replays it and reports that it returned another result."""
    with WorkflowTestRuntime(counter_result) as rt, \
            pytest.raises(AlwaysReplayError) as caught:
        rt.run(counter_result, Order(order_id="o-3", amount=1), workflow_id="greet-1")
    assert re.search(r'completed with result "hello #\d+", but the history recorded the '
                     r'result "hello #\d+"', str(caught.value))


def test_without_always_replay_the_same_bug_passes_unnoticed() -> None:
    """With always_replay=False the single-activation workflow above completes and the test
    would pass: the bug would surface only when production replays it."""
    with WorkflowTestRuntime(counter_result, always_replay=False) as rt:
        assert rt.run(counter_result, Order(order_id="o-4", amount=1)).startswith("hello #")
        assert rt.replay_checks == []


def test_a_deterministic_workflow_passes_and_every_activation_is_checked() -> None:
    """A correct workflow runs to its typed result; the history was replayed and found
    matching after each of its 3 activations."""
    with WorkflowTestRuntime(checkout, services=SERVICES) as rt:
        receipt = rt.run(checkout, Order(order_id="o-5", amount=21), workflow_id="co-1")
        assert isinstance(receipt, Receipt)
        assert receipt == Receipt(order_id="o-5", charged=42, at=DEFAULT_START_TIME)
        assert [c.ok for c in rt.replay_checks] == [True, True, True]
        assert [c.outcome for c in rt.replay_checks] == ["suspended", "suspended", "completed"]
        assert check_replay(checkout, rt.history("co-1")).ok


def test_services_are_plain_functions_and_errors_reach_the_workflow() -> None:
    """Services are given as plain sync or async functions; a ServiceError raised by one
    reaches the workflow with its type and message, and run() returns the typed result."""

    def refuse(order: Order) -> Quote:
        raise ServiceError("OutOfStock", f"no stock for {order.order_id}")

    @workflow
    async def careful(ctx: WorkflowContext[Order]) -> str:
        try:
            await ctx.call(quote_service, ctx.request)
        except ServiceError as exc:
            return f"{exc.error_type}: {exc.message}"
        return "quoted"

    with WorkflowTestRuntime(services={quote_service: refuse}) as rt:
        assert rt.run(careful, Order(order_id="o-6", amount=1)) == "OutOfStock: no stock for o-6"


def test_run_raises_when_the_workflow_fails_or_waits() -> None:
    """run() raises WorkflowFailedError for a failed workflow, and WorkflowNotFinishedError
    when it waits on a service that has no implementation."""

    @workflow
    async def broken(ctx: WorkflowContext[Order]) -> str:
        raise ValueError(f"bad order {ctx.request.order_id}")

    with WorkflowTestRuntime(checkout, services={quote_service: quote}) as rt:
        with pytest.raises(WorkflowFailedError, match="bad order o-7"):
            rt.run(broken, Order(order_id="o-7", amount=1))
        with pytest.raises(WorkflowNotFinishedError):
            rt.run(checkout, Order(order_id="o-8", amount=1))


@workflow
async def reminder(ctx: WorkflowContext[Order]) -> datetime:
    await ctx.sleep(timedelta(days=30))
    await ctx.call(charge_service, ctx.request)
    return ctx.now()


def test_time_skipping_runs_a_thirty_day_sleep_at_once() -> None:
    """run_until_idle skips the virtual clock to the timer: a 30-day sleep finishes in one
    call, ctx.now() after it is 30 days after the start, and the runtime's clock agrees."""
    start = datetime(2025, 3, 1, tzinfo=UTC)
    with WorkflowTestRuntime(reminder, services=SERVICES, start_time=start,
                             store=MemoryStateStore()) as rt:
        woke = rt.run(reminder, Order(order_id="o-9", amount=1), workflow_id="remind-1")
        assert woke == start + timedelta(days=30)
        assert rt.now == start + timedelta(days=30)
        assert all(c.ok for c in rt.replay_checks) and len(rt.replay_checks) == 3


def test_advance_time_moves_the_clock_by_hand() -> None:
    """Without time skipping the sleeping instance waits; advance_time (a timedelta) fires
    the timer only once the full 30 days have passed."""
    with WorkflowTestRuntime(reminder, services=SERVICES) as rt:
        handle = rt.start(reminder, Order(order_id="o-10", amount=1))
        rt.run_until_idle(skip_time=False)
        rt.advance_time(timedelta(days=29, hours=23))
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        rt.advance_time(3600)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == DEFAULT_START_TIME + timedelta(days=30)


def test_the_replay_check_never_runs_a_recorded_step_again() -> None:
    """A ctx.step runs once: replaying after every activation returns its recorded result
    instead of running the local code again."""
    runs: list[int] = []

    def reserve(amount: int) -> int:
        runs.append(amount)
        return amount + 1

    @workflow
    async def reserving(ctx: WorkflowContext[Order]) -> int:
        reserved = await ctx.step(reserve, ctx.request.amount)
        await ctx.call(charge_service, ctx.request)
        return reserved

    with WorkflowTestRuntime(services=SERVICES) as rt:
        assert rt.run(reserving, Order(order_id="o-11", amount=4)) == 5
        assert runs == [4]
        assert len(rt.replay_checks) == 2


def test_check_replay_reports_a_changed_workflow_with_its_call_site() -> None:
    """A history stored as JSON (history_to_json, history_from_json) replays OK against the
    code that recorded it; against a changed workflow, check_replay names the new line."""
    with WorkflowTestRuntime(checkout, services=SERVICES) as rt:
        rt.run(checkout, Order(order_id="o-12", amount=1), workflow_id="co-2")
        history = history_from_json(history_to_json(rt.history("co-2")))
    assert check_replay(checkout, history).ok

    @workflow
    async def checkout_v2(ctx: WorkflowContext[Order]) -> Receipt:
        price = await ctx.call(quote_service, ctx.request)
        await ctx.call(charge_service, ctx.request)  # the audit call is gone
        return Receipt(order_id="x", charged=price.price, at=ctx.now())

    check = check_replay(checkout_v2, history)
    assert not check.ok
    line = _line_of("# the audit call is gone")
    assert f"test_testing.py:{line} in " in check.message
    assert "recorded call 'audit'" in check.message


fixture_rt = runtime_fixture(checkout, services=SERVICES)


def test_runtime_fixture_gives_a_ready_runtime(fixture_rt: WorkflowTestRuntime) -> None:
    """runtime_fixture(...) assigned in a module is a pytest fixture named after the
    variable, yielding a WorkflowTestRuntime with the workflows and services set up."""
    assert isinstance(fixture_rt, WorkflowTestRuntime)
    assert fixture_rt.run(checkout, Order(order_id="o-13", amount=3)).charged == 6


notify_service = Service("notify", str, None)
confirm_service = Service("confirm", str, str)
refund_service = Service("refund", str, None)


@workflow
async def approval(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback("manager", str, timeout=3600)
    await ctx.call(notify_service, cb.token)  # the token is part of the recorded request
    return await cb


def test_callback_tokens_replay_whatever_the_key() -> None:
    """A workflow that sends its callback token in a request passes always_replay; the token
    is recorded with its callback, so the history replays the same under another key or
    none (rotating the callback key changes no replay)."""
    sent: list[str] = []
    with WorkflowTestRuntime(approval, services={notify_service: sent.append},
                             callback_key=b"a test callback key, 32 bytes..") as rt:
        handle = rt.start(approval, "expense-7", workflow_id="ap-1")
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(sent[0], "approved")
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "approved"
        assert rt.replay_checks and all(c.ok for c in rt.replay_checks)
        history = rt.history("ap-1")
    other = check_replay(approval, history,
                         tokens=CallbackTokens(b"another key of 32 bytes......."))
    assert other.ok, other.message
    assert check_replay(approval, history).ok


@workflow
async def booking(ctx: WorkflowContext[str]) -> str:
    try:
        await ctx.call(confirm_service, ctx.request)
    except asyncio.CancelledError:
        await ctx.call(refund_service, ctx.request)  # clean up, then stay cancelled
        raise
    return "booked"


def test_a_cancelled_instance_replays_its_cancellation() -> None:
    """A cancel delivered while the workflow waits, a compensating call, then the end as
    cancelled: every activation, the cancelling ones included, replays as recorded."""
    with WorkflowTestRuntime(booking, services={refund_service: lambda order: None}) as rt:
        handle = rt.start(booking, "order-1", workflow_id="b-1")
        rt.run_until_idle()
        rt.queue.send(b'{"v":1,"kind":"cancel","workflow_id":"b-1","reason":"customer left"}',
                      group_id="b-1", dedup_id="cancel-1")
        rt.run_until_idle()
        assert handle.status() is InstanceStatus.CANCELLED
        assert [c.outcome for c in rt.replay_checks] == ["suspended", "suspended", "cancelled"]
        assert all(c.ok for c in rt.replay_checks)
