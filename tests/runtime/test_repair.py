"""Repairing instances on the embedded runtime: ``resume`` after a failed deploy or an
unregistered workflow, ``reset`` to a recorded operation, late messages of dropped operations,
crashes in the middle of a repair. On the SQLite and the memory store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from lambda_workflow import (
    InstanceStatus,
    Service,
    WorkflowContext,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow._runtime.engine import child_workflow_id
from lambda_workflow._runtime.repair import RepairError, Repairs
from lambda_workflow.backends.memory import MemoryStateStore
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.errors import WorkflowNotFoundError
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import OperationState

T0 = 1_700_000_000.0

reserve = Service("reserve", str, int)
ship = Service("ship", str, str)
quote = Service("quote", str, int)
book = Service("book", str, str)


def _reserve(item: str) -> int:
    return len(item)


def _ship(item: str) -> str:
    return f"shipped {item}"


# -- the order workflow, as deployed (v1), as broken by a deploy (v2) ------------------------
@workflow(name="order")
async def order_v1(ctx: WorkflowContext[str]) -> str:
    units = await ctx.call(reserve, ctx.request)
    label = await ctx.call(ship, f"{ctx.request} x{units}")
    return f"{label} ({units} units)"


@workflow(name="order")
async def order_v2(ctx: WorkflowContext[str]) -> str:
    # A deploy that reordered the calls: histories recorded by v1 no longer match.
    label = await ctx.call(ship, ctx.request)
    units = await ctx.call(reserve, ctx.request)
    return f"{label} ({units} units)"


def _uninterrupted(wf: Any, request: str,
                   services: dict[Service[Any, Any], Callable[[Any], Any]]) -> object:
    with LocalRuntime(clock=VirtualClock(T0)) as rt:
        rt.register(wf)
        for service, fn in services.items():
            rt.implement(service, fn)
        handle = rt.start(wf, request, workflow_id="reference")
        rt.run_until_idle()
        return handle.result()


def test_rolling_back_a_deploy_and_resuming_completes_as_an_uninterrupted_run(
        tmp_path: Path) -> None:
    """The user story: v1 runs an instance to its first call; v2 (reordered calls) is
    deployed and fails it with NonDeterminismError when the reply arrives; rolling back to v1
    alone does not revive it; resume does, and it completes with the result an uninterrupted
    v1 run gives, with the history kept (the reply that arrived under v2 is used)."""
    db = tmp_path / "state.sqlite3"
    with LocalRuntime(db, clock=VirtualClock(T0)) as rt:
        rt.register(order_v1)
        rt.start(order_v1, "lamp", workflow_id="order-1")
        rt.run_until_idle()  # no services yet: waits on reserve
        assert rt.status("order-1") is InstanceStatus.RUNNING
    with LocalRuntime(db, clock=VirtualClock(T0 + 60)) as rt:  # the bad deploy
        rt.register(order_v2)
        rt.implement(reserve, _reserve)
        rt.implement(ship, _ship)
        rt.run_until_idle()
        assert rt.status("order-1") is InstanceStatus.FAILED
        assert b"NonDeterminismError" in (rt.history("order-1").instance.error or b"")
        # Resuming under the same bad code fails the same way, and harms nothing.
        rt.resume("order-1")
        rt.run_until_idle()
        assert rt.status("order-1") is InstanceStatus.FAILED
    with LocalRuntime(db, clock=VirtualClock(T0 + 120)) as rt:  # the rollback
        rt.register(order_v1)
        rt.implement(reserve, _reserve)
        rt.implement(ship, _ship)
        rt.run_until_idle()
        assert rt.status("order-1") is InstanceStatus.FAILED  # rollback alone: still failed
        result = rt.resume("order-1")
        assert (result.command, result.repair, result.status_before) == (
            "resume", 2, InstanceStatus.FAILED)
        rt.run_until_idle()
        assert rt.status("order-1") is InstanceStatus.COMPLETED
        assert rt.result("order-1") == _uninterrupted(order_v1, "lamp",
                                                      {reserve: _reserve, ship: _ship})
        assert rt.result("order-1") == "shipped lamp x4 (4 units)"
        ops = rt.history("order-1").operations
        assert [(op.op_id, op.kind) for op in ops] == [
            ("repair:2", "repair"), ("repair:1", "repair"), ("1", "call"), ("2", "call")]
        # reserve ran once: its reply, recorded while the instance was failed, was kept.
        assert [i.call_id for i in rt.invocations if i.service == "reserve"] == []


@pytest.fixture(params=["sqlite", "memory"])
def make_runtime(request: pytest.FixtureRequest, tmp_path: Path
                 ) -> Iterator[Callable[..., LocalRuntime]]:
    made: list[LocalRuntime] = []

    def make(*workflows: Any, max_receives: int = 5) -> LocalRuntime:
        store = (SQLiteStateStore(tmp_path / f"s{len(made)}.sqlite3")
                 if request.param == "sqlite" else MemoryStateStore())
        rt = LocalRuntime(store=store, clock=VirtualClock(T0), max_receives=max_receives)
        rt.register(*workflows)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


def test_resume_after_an_unregistered_workflow_loses_no_reply(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """A deployment that lost the workflow (unregistered): the reply to its pending call is
    poison, dead-lettered, and fails the instance (PoisonMessage). Registered again, resume
    re-sends the pending request (services are idempotent per call id) and the instance
    completes as if nothing happened."""
    rt = make_runtime(order_v1, max_receives=2)
    rt.start(order_v1, "desk", workflow_id="order-2")
    rt.run_until_idle()
    rt._workflows.clear()  # the workflow is no longer deployed
    rt.implement(reserve, _reserve)
    rt.implement(ship, _ship)
    rt.run_until_idle()
    assert rt.status("order-2") is InstanceStatus.FAILED
    assert orjson.loads(rt.history("order-2").instance.error or b"{}")["type"] == (
        "PoisonMessage")
    assert [letter.group_id for letter in rt.dead_letters()] == ["order-2"]
    rt.register(order_v1)
    # An operator's repair comes minutes later: past the queue's deduplication window, the
    # re-sent request (same deduplication id) is not dropped as a duplicate of the first.
    rt.advance_time(301)
    result = rt.resume("order-2")
    assert result.resent == ["1"]
    rt.run_until_idle()
    assert rt.result("order-2") == "shipped desk x4 (4 units)"
    assert [i.call_id for i in rt.invocations if i.service == "reserve"] == ["1", "1"]


# -- reset -------------------------------------------------------------------------------------
RATES = {"calls": 0}


def pick_class(price: int) -> str:
    """A step with a bug on its first run: it picks first class for any price."""
    RATES["calls"] += 1
    return "first" if RATES["calls"] == 1 else ("economy" if price > 100 else "business")


@workflow
async def trip(ctx: WorkflowContext[str]) -> str:
    price = await ctx.call(quote, ctx.request)
    cabin = await ctx.step(pick_class, price)
    return await ctx.call(book, f"{ctx.request}:{cabin}")


def _book(request: str) -> str:
    return f"booked {request}"


def test_reset_after_a_bad_step_result_re_runs_from_there(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """The step recorded a wrong result and the workflow completed with it. reset to the
    operation before the step drops the step and what followed, reopens the instance, and
    the workflow runs the step again and completes with the right result. Operations made
    after the reset have ids of their own (r1.*); the repair is in the history."""
    RATES["calls"] = 0
    rt = make_runtime(trip)
    rt.implement(quote, lambda dest: 250)
    rt.implement(book, _book)
    handle = rt.start(trip, "lisbon", workflow_id="trip-1")
    rt.run_until_idle()
    assert handle.result() == "booked lisbon:first"  # the bug
    result = rt.reset("trip-1", to="1")
    assert (result.status_before, result.dropped) == (InstanceStatus.COMPLETED, ["2", "3"])
    assert rt.status("trip-1") is InstanceStatus.RUNNING
    rt.run_until_idle()
    assert handle.result() == "booked lisbon:economy"
    ops = handle.history().operations
    assert [(op.op_id, op.kind, op.state) for op in ops] == [
        ("repair:1", "repair", OperationState.COMPLETED),
        ("1", "call", OperationState.COMPLETED),
        ("r1.2", "step", OperationState.COMPLETED),
        ("r1.3", "call", OperationState.COMPLETED)]
    assert [i.call_id for i in rt.invocations if i.service == "quote"] == ["1"]


def test_a_late_reply_to_a_dropped_call_never_reaches_the_new_call(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """The request of the dropped booking (call 3, first class) is still on the service's
    queue when the instance is reset; the service answers it after the reset, together with
    the new booking. The old reply is dropped as a duplicate (not dead-lettered, not applied
    to the new call, which has another id): the result is the new booking."""
    RATES["calls"] = 0
    rt = make_runtime(trip)
    rt.implement(quote, lambda dest: 80)
    rt.run_until_idle()
    rt.start(trip, "porto", workflow_id="trip-2")
    rt.run_until_idle()  # book is not deployed yet: its request waits on the queue
    assert [op.op_id for op in rt.history("trip-2").operations] == ["1", "2", "3"]
    rt.reset("trip-2", to="1")
    reports = rt.run_until_idle()
    assert [op.op_id for op in rt.history("trip-2").operations] == [
        "repair:1", "1", "r1.2", "r1.3"]
    assert reports[-1].pending == ["r1.3"]  # what the CLI prints as "waiting on call ..."
    rt.implement(book, _book)
    reports = rt.run_until_idle()
    served = [(i.call_id, i.request) for i in rt.invocations if i.service == "book"]
    assert served == [("3", b'"porto:first"'), ("r1.3", b'"porto:business"')]
    assert rt.result("trip-2") == "booked porto:business"
    assert "3" in [d for r in reports for d in r.duplicates]
    assert rt.dead_letters() == []


def hand_out(token: str) -> str:
    """Gives the token to the approver (here: records it as the step's result)."""
    return token


@workflow
async def wait_then_book(ctx: WorkflowContext[str]) -> str:
    price = await ctx.call(quote, ctx.request)
    cb = ctx.create_callback("approval", bool)
    await ctx.step(hand_out, cb.token)
    await ctx.sleep(3600)
    approved = await cb
    return await ctx.call(book, f"{ctx.request}:{price}:{approved}")


def test_late_timer_and_callback_of_dropped_operations_are_duplicates(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """A timer and a callback dropped by a reset: the timer's firing and the old token's
    completion arrive after the reset. Both are dropped as duplicates: the new callback and
    timer (new ids, a new token) decide the result."""
    rt = make_runtime(wait_then_book)
    rt.implement(quote, lambda dest: 10)
    rt.implement(book, _book)
    rt.start(wait_then_book, "faro", workflow_id="trip-3")
    rt.run_until_idle(skip_time=False)
    old_ops = rt.history("trip-3").operations
    old_token = orjson.loads(next(op.result for op in old_ops if op.kind == "step") or b"")
    assert [op.op_id for op in old_ops] == ["1", "2", "3", "4"]
    rt.reset("trip-3", to="1")
    rt.run_until_idle(skip_time=False)
    new_ops = rt.history("trip-3").operations
    assert [op.op_id for op in new_ops] == ["repair:1", "1", "r1.2", "r1.3", "r1.4"]
    new_token = orjson.loads(next(op.result for op in new_ops if op.kind == "step") or b"")
    assert new_token != old_token
    # The old callback's completion, as its external system sends it (a queue message).
    from lambda_workflow._runtime.instances import callback_message
    rt.queue.send(orjson.dumps({"v": 1, "kind": "callback_completed", "workflow_id": "trip-3",
                                "token": old_token, "ok": True, "value": False}),
                  group_id="trip-3", dedup_id="late-completion")
    rt.advance_time(3600)  # both timers (old "4" and new "r1.4") fire
    reports = rt.run_until_idle(skip_time=False)
    duplicates = [d for r in reports for d in r.duplicates]
    assert "2" in duplicates and "4" in duplicates
    assert rt.dead_letters() == []
    assert rt.status("trip-3") is InstanceStatus.RUNNING  # still waits on the new callback
    with pytest.raises(Exception, match="callback"):
        callback_message(rt.store, rt.tokens, old_token, value=False)
    rt.complete_callback(new_token, True)
    rt.run_until_idle()
    assert rt.result("trip-3") == "booked faro:10:True"


def shout(text: str) -> str:
    return text.upper()


@workflow
async def pair(ctx: WorkflowContext[str]) -> str:
    first = ctx.call(quote, ctx.request)
    second = ctx.call(reserve, ctx.request)
    price = await first
    note = await ctx.step(shout, ctx.request)
    units = await second
    return f"{note} {price} {units}"


def test_reset_keeps_outcomes_recorded_after_the_dropped_operation_was_made(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """Call 2's reply arrived after step 3 was made. A reset to operation 2 keeps that reply
    and drops the step: the workflow makes the step again before the later reply is
    delivered (the replay allows it right after a reset) and completes."""
    rt = make_runtime(pair)
    rt.implement(quote, lambda dest: 5)
    rt.start(pair, "x", workflow_id="pair-1")
    rt.run_until_idle()
    rt.implement(reserve, _reserve)
    rt.run_until_idle()
    assert rt.result("pair-1") == "X 5 1"
    ops = rt.history("pair-1").operations
    assert [(op.op_id, op.created_in, op.resolved_in) for op in ops] == [
        ("1", 1, 2), ("2", 1, 3), ("3", 2, 2)]
    rt.reset("pair-1", to="2")
    rt.run_until_idle()
    assert rt.status("pair-1") is InstanceStatus.COMPLETED, rt.history("pair-1").instance.error
    assert rt.result("pair-1") == "X 5 1"
    assert [op.op_id for op in rt.history("pair-1").operations] == [
        "repair:1", "1", "2", "r1.3"]


@workflow
async def parent_of_one(ctx: WorkflowContext[str]) -> str:
    price = await ctx.call(quote, ctx.request)
    return await ctx.child(trip, f"{ctx.request}-{price}")


def test_reset_cancels_a_running_child_it_dropped_and_starts_a_new_one(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """A child made by a dropped operation is cancelled (it would report to an operation
    that no longer exists); the re-run makes a new child under a new id."""
    RATES["calls"] = 1  # no bug this time
    rt = make_runtime(parent_of_one, trip)
    rt.implement(quote, lambda dest: 300)
    rt.start(parent_of_one, "oslo", workflow_id="p-1")
    rt.run_until_idle()  # the child waits on book, not deployed
    old_child = child_workflow_id("p-1", "2", None)
    assert rt.status(old_child) is InstanceStatus.RUNNING
    result = rt.reset("p-1", to="1")
    assert result.cancelled_children == [old_child]
    rt.implement(book, _book)
    rt.run_until_idle()
    assert rt.status(old_child) is InstanceStatus.CANCELLED
    new_child = child_workflow_id("p-1", "r1.2", None)
    assert rt.result(new_child) == "booked oslo-300:economy"
    assert rt.result("p-1") == "booked oslo-300:economy"
    assert rt.dead_letters() == []


@workflow
async def cancellable(ctx: WorkflowContext[str]) -> str:
    price = await ctx.call(quote, ctx.request)
    await ctx.sleep(60)
    return f"{ctx.request} {price}"


def test_reset_of_a_cancelled_instance_drops_the_cancellation(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """A cancelled instance reset to an operation runs again: the recorded cancellation is
    dropped with the later records (cancel it again if it should stop)."""
    rt = make_runtime(cancellable)
    rt.implement(quote, lambda dest: 3)
    rt.start(cancellable, "a", workflow_id="c-1")
    rt.run_until_idle(skip_time=False)
    rt.queue.send(orjson.dumps({"v": 1, "kind": "cancel", "workflow_id": "c-1"}),
                  group_id="c-1", dedup_id="cancel-c-1")
    rt.run_until_idle(skip_time=False)
    assert rt.status("c-1") is InstanceStatus.CANCELLED
    result = rt.reset("c-1", to="1")
    assert result.dropped == ["2", "cancel"]
    rt.run_until_idle()
    assert rt.result("c-1") == "a 3"


def test_reset_to_the_start_and_to_the_last_operation(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """Operation "0" is the start: everything is dropped and the workflow runs from the top
    (its calls under new ids). Resetting to the last operation reopens a completed instance,
    which completes again with the same result, making nothing new."""
    rt = make_runtime(order_v1)
    rt.implement(reserve, _reserve)
    rt.implement(ship, _ship)
    rt.start(order_v1, "cup", workflow_id="o-3")
    rt.run_until_idle()
    rt.reset("o-3", to="2")
    rt.run_until_idle()
    assert rt.result("o-3") == "shipped cup x3 (3 units)"
    assert [op.op_id for op in rt.history("o-3").operations] == ["repair:1", "1", "2"]
    rt.reset("o-3", to="0")
    rt.run_until_idle()
    assert rt.result("o-3") == "shipped cup x3 (3 units)"
    assert [op.op_id for op in rt.history("o-3").operations] == [
        "repair:2", "repair:1", "r2.1", "r2.2"]


# -- refusals ------------------------------------------------------------------------------------
@workflow
async def raises(ctx: WorkflowContext[str]) -> str:
    await ctx.call(quote, ctx.request)
    raise ValueError("no stock")


def test_resume_refuses_instances_that_did_not_fail_by_the_deployment(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """resume applies only to failures the workflow's code did not cause; otherwise the error
    names the state, and nothing changes."""
    rt = make_runtime(order_v1, raises)
    with pytest.raises(WorkflowNotFoundError, match="nobody"):
        rt.resume("nobody")
    rt.start(order_v1, "pen", workflow_id="running-1")
    rt.run_until_idle()
    with pytest.raises(RepairError, match="'running-1' is running"):
        rt.resume("running-1")
    rt.implement(reserve, _reserve)
    rt.implement(ship, _ship)
    rt.run_until_idle()
    with pytest.raises(RepairError, match="'running-1' is completed"):
        rt.resume("running-1")
    rt.implement(quote, lambda dest: 1)
    rt.start(raises, "pen", workflow_id="raises-1")
    rt.run_until_idle()
    before = rt.history("raises-1")
    with pytest.raises(RepairError, match="failed with ValueError, which its own code raised"):
        rt.resume("raises-1")
    assert rt.history("raises-1") == before


def test_reset_refuses_an_operation_the_instance_does_not_have(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """Unknown op ids, records outside the numbering and unknown instances are refused
    with an error naming what exists; nothing changes."""
    rt = make_runtime(order_v1)
    rt.implement(reserve, _reserve)
    rt.implement(ship, _ship)
    rt.start(order_v1, "mug", workflow_id="o-4")
    rt.run_until_idle()
    before = rt.history("o-4")
    for bad in ("3", "parent", "repair:1", "", "r1.1"):
        with pytest.raises(RepairError, match=r"has no operation .* operations are 1, 2 \(2;"):
            rt.reset("o-4", to=bad)
    with pytest.raises(WorkflowNotFoundError):
        rt.reset("nobody", to="1")
    assert rt.history("o-4") == before


# -- crashes in the middle of a repair --------------------------------------------------------
def _crashing(rt: LocalRuntime) -> Repairs:
    def send(workflow_id: str, dedup_id: str, body: bytes) -> None:
        if b'"resume"' in body:
            raise ConnectionError("crash before the wake-up left")
        rt.transport.send_to_workflow(workflow_id, dedup_id, body)
    return Repairs(rt.store, send, rt.clock.now, child_workflow_id)


def test_a_reset_interrupted_before_its_wake_up_is_finished_by_repeating_it(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """The store write happened, the wake-up did not: the instance is running with nothing
    to wake it. Repeating the command sends the wake-up without a second reset, and the
    instance completes."""
    RATES["calls"] = 0
    rt = make_runtime(trip)
    rt.implement(quote, lambda dest: 250)
    rt.implement(book, _book)
    rt.start(trip, "rome", workflow_id="trip-4")
    rt.run_until_idle()
    with pytest.raises(ConnectionError):
        _crashing(rt).reset("trip-4", to="1")
    assert rt.run_until_idle() == []  # nothing woke it
    assert rt.status("trip-4") is InstanceStatus.RUNNING
    again = rt.reset("trip-4", to="1")
    assert again.repair == 1
    rt.run_until_idle()
    assert rt.result("trip-4") == "booked rome:economy"
    assert [op.op_id for op in rt.history("trip-4").operations] == [
        "repair:1", "1", "r1.2", "r1.3"]


def test_an_interrupted_resume_is_finished_by_any_later_command(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """A resume that crashed before its wake-up: resuming again sends it (one repair)."""
    rt = make_runtime(order_v1, max_receives=1)
    rt.start(order_v1, "jar", workflow_id="o-5")
    rt.run_until_idle()
    rt._workflows.clear()
    rt.implement(reserve, _reserve)
    rt.implement(ship, _ship)
    rt.run_until_idle()
    assert rt.status("o-5") is InstanceStatus.FAILED
    rt.register(order_v1)
    rt.advance_time(301)
    with pytest.raises(ConnectionError):
        _crashing(rt).resume("o-5")
    assert rt.run_until_idle() == []
    assert rt.resume("o-5").repair == 1
    rt.run_until_idle()
    assert rt.result("o-5") == "shipped jar x3 (3 units)"


def test_a_request_id_makes_a_retried_reset_apply_once(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """A client that retries a reset it saw no answer to (the reset went through) does not
    reset twice when it passes the same request id; another command under that id is
    refused."""
    RATES["calls"] = 0
    rt = make_runtime(trip)
    rt.implement(quote, lambda dest: 250)
    rt.implement(book, _book)
    rt.start(trip, "nice", workflow_id="trip-5")
    rt.run_until_idle()
    first = rt.reset("trip-5", to="1", request_id="ticket-42")
    rt.run_until_idle()
    again = rt.reset("trip-5", to="1", request_id="ticket-42")
    assert again.repair == first.repair == 1
    rt.run_until_idle()
    assert rt.result("trip-5") == "booked nice:economy"
    assert RATES["calls"] == 2
    with pytest.raises(RepairError, match="request id 'ticket-42' was used"):
        rt.reset("trip-5", to="2", request_id="ticket-42")


def test_a_resume_message_for_an_unknown_instance_is_dead_lettered() -> None:
    """The new message kind is validated like the others."""
    with LocalRuntime(clock=VirtualClock(T0)) as rt:
        rt.queue.send(orjson.dumps({"v": 1, "kind": "resume", "workflow_id": "ghost",
                                    "repair": 1}), group_id="ghost", dedup_id="r")
        rt.queue.send(orjson.dumps({"v": 1, "kind": "resume", "workflow_id": "ghost",
                                    "repair": 0}), group_id="ghost", dedup_id="r0")
        rt.run_until_idle()
        reasons = [d.reason for d in rt.dead_letters()]
        assert "no workflow instance 'ghost' exists" in reasons[1]
        assert "malformed resume message: repair" in reasons[0]


def test_a_repair_computed_from_a_stale_history_is_refused(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """An activation runs between the command's read and its write (another process, a
    Lambda): the store refuses the write (the counter moved), the command says so, and the
    history is what the activation made of it."""
    RATES["calls"] = 0
    rt = make_runtime(trip)
    rt.implement(quote, lambda dest: 250)
    rt.start(trip, "bern", workflow_id="trip-6")
    rt.run_until_idle()  # waits on book
    store = rt.store
    real_load = store.load_history

    def load_then_activate(workflow_id: str) -> Any:
        history = real_load(workflow_id)
        rt.implement(book, _book)
        rt.run_until_idle()  # the concurrent activation completes the instance
        return history

    store.load_history = load_then_activate  # type: ignore[method-assign]
    with pytest.raises(RepairError, match="changed while it was being repaired"):
        rt.reset("trip-6", to="1")
    store.load_history = real_load  # type: ignore[method-assign]
    assert rt.status("trip-6") is InstanceStatus.COMPLETED
    assert [op.op_id for op in rt.history("trip-6").operations] == ["1", "2", "3"]


def test_an_unsent_resume_of_an_instance_that_failed_again_does_not_block_the_next(
        tmp_path: Path) -> None:
    """A resume crashed before its wake-up; a runtime opening the file woke the instance
    anyway (recovery), and under the still-broken code it failed again. The next resume,
    after the rollback, is a new repair that revives it (not the old unsent one returned)."""
    db = tmp_path / "state.sqlite3"
    with LocalRuntime(db, clock=VirtualClock(T0)) as rt:
        rt.register(order_v1)
        rt.start(order_v1, "vase", workflow_id="o-6")
        rt.run_until_idle()
    with LocalRuntime(db, clock=VirtualClock(T0 + 60)) as rt:
        rt.register(order_v2)
        rt.implement(reserve, _reserve)
        rt.implement(ship, _ship)
        rt.run_until_idle()
        assert rt.status("o-6") is InstanceStatus.FAILED
        with pytest.raises(ConnectionError):
            _crashing(rt).resume("o-6")
    with LocalRuntime(db, clock=VirtualClock(T0 + 120)) as rt:  # recovery wakes it
        rt.register(order_v2)
        rt.run_until_idle()
        assert rt.status("o-6") is InstanceStatus.FAILED
    with LocalRuntime(db, clock=VirtualClock(T0 + 180)) as rt:
        rt.register(order_v1)
        rt.implement(reserve, _reserve)
        rt.implement(ship, _ship)
        assert rt.resume("o-6").repair == 2
        rt.run_until_idle()
        assert rt.result("o-6") == "shipped vase x4 (4 units)"


def test_the_replay_check_replays_a_reset_history_and_its_leftovers(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """`lambda-workflow replay` on a history after a reset: the code replays it (ids r1.*,
    the repair record outside the numbering). A record the reset dropped but a store had not
    deleted yet (DynamoDB, a crash between the repair's transaction and its batch deletes)
    is not part of the history for the check either, as it is not for the engine."""
    from dataclasses import replace

    from lambda_workflow._runtime.history import history_from_json, history_to_json
    from lambda_workflow._runtime.replay_check import check_replay
    from lambda_workflow.models import History

    RATES["calls"] = 0
    rt = make_runtime(trip)
    rt.implement(quote, lambda dest: 250)
    rt.implement(book, _book)
    rt.start(trip, "oslo", workflow_id="trip-9")
    rt.run_until_idle()
    dropped = [op for op in rt.history("trip-9").operations if op.op_id in ("2", "3")]
    rt.reset("trip-9", to="1")
    rt.run_until_idle()
    history = rt.history("trip-9")
    assert check_replay(trip, history).ok
    assert check_replay(trip, history_from_json(history_to_json(history))).ok
    leftovers = History(history.instance, sorted(
        [*history.operations, *(replace(op) for op in dropped)], key=lambda op: op.seq))
    check = check_replay(trip, leftovers)
    assert check.ok, check.message


# -- child contexts ------------------------------------------------------------------------------
async def _reserve_then_ship(ctx: WorkflowContext[str], item: str) -> str:
    units = await ctx.call(reserve, item)
    return await ctx.call(ship, f"{item} x{units}")


@workflow
async def in_a_context(ctx: WorkflowContext[str]) -> str:
    label = await ctx.run_in_child_context(_reserve_then_ship, ctx.request, name="pack")
    price = await ctx.call(quote, ctx.request)
    return f"{label} for {price}"


def test_reset_keeps_the_operations_inside_a_kept_child_context(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """A reset to a child context that is still running keeps the operations inside it, and
    the context's body finds them (before: the replay after the reset failed the instance
    with "ValueError: list.remove(x): x not in list", the kept context being looked up under
    the reset's new id "r1.1"; and a reset by seq alone would drop every operation inside a
    context, so its reply-recorded call would go to the service again)."""
    rt = make_runtime(in_a_context)
    rt.implement(reserve, _reserve)
    rt.start(in_a_context, "cup", workflow_id="c-1")
    rt.run_until_idle()  # reserve replied; ship has no implementation yet: pending
    ids = [op.op_id for op in rt.history("c-1").operations]
    assert ids == ["1", "1.1", "1.2"]
    rt.reset("c-1", to="1")
    rt.implement(ship, _ship)
    rt.implement(quote, _reserve)
    rt.run_until_idle()
    assert rt.result("c-1") == "shipped cup x3 for 3"
    assert [i.service for i in rt.invocations].count("reserve") == 1
    ids = [op.op_id for op in rt.history("c-1").operations if op.kind != "repair"]
    assert sorted(ids) == ["1", "1.1", "1.2", "r1.2"]  # the quote after the reset is new


def test_reset_before_a_child_context_drops_it_with_everything_inside(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """A reset to the start drops the context and its operations: it runs again from the
    top, its calls under new ids."""
    rt = make_runtime(in_a_context)
    rt.implement(reserve, _reserve)
    rt.implement(ship, _ship)
    rt.implement(quote, _reserve)
    rt.start(in_a_context, "mug", workflow_id="c-2")
    rt.run_until_idle()
    done = rt.reset("c-2", to="0")
    assert sorted(done.dropped) == ["1", "1.1", "1.2", "2"]
    rt.run_until_idle()
    assert rt.result("c-2") == "shipped mug x3 for 3"


def test_reset_to_an_operation_inside_a_child_context_is_refused(
        make_runtime: Callable[..., LocalRuntime]) -> None:
    """A reset keeps or drops a child context whole: `--to` an operation inside one is
    refused with the context to name instead, and nothing changes."""
    rt = make_runtime(in_a_context)
    rt.implement(reserve, _reserve)
    rt.start(in_a_context, "jar", workflow_id="c-3")
    rt.run_until_idle()
    with pytest.raises(RepairError, match=r"operation '1\.1' is inside child context '1'"):
        rt.reset("c-3", to="1.1")
    assert [op.op_id for op in rt.history("c-3").operations] == ["1", "1.1", "1.2"]
