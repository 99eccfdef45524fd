"""LocalRuntime's API: status, results, history, typed handles, services, events and a
SQLite file shared by two runtimes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from lambda_workflow import (
    InstanceStatus,
    Service,
    WorkflowContext,
    WorkflowError,
    WorkflowNotFinishedError,
    WorkflowNotFoundError,
    workflow,
)
from lambda_workflow._runtime.engine import ActivationReport
from lambda_workflow.backends.memory import DeadLetter
from lambda_workflow.local import LocalRuntime, ServiceInvocation
from lambda_workflow.models import OperationState, parse_call_request


class Parcel(BaseModel):
    sku: str
    qty: int


class Quote(BaseModel):
    price: int


quote = Service("quote", Parcel, Quote)
reserve = Service("reserve", Parcel, None)

PARCEL = Parcel(sku="lamp", qty=2)


def quote_fn(p: Parcel) -> Quote:
    return Quote(price=10 * p.qty)


async def reserve_fn(p: Parcel) -> None:
    await asyncio.sleep(0)


@workflow
async def order(ctx: WorkflowContext[Parcel]) -> Quote:
    q = await ctx.call(quote, ctx.request)
    await ctx.call(reserve, ctx.request)
    return q


def test_status_follows_the_instance_from_running_to_completed(runtime: LocalRuntime) -> None:
    """status() is RUNNING while a call waits and COMPLETED once the workflow returned."""
    runtime.register(order)
    runtime.implement(quote, quote_fn)
    handle = runtime.start(order, PARCEL, workflow_id="o-1")
    assert runtime.status("o-1") is InstanceStatus.RUNNING
    runtime.run_until_idle()
    assert handle.status() is InstanceStatus.RUNNING  # reserve is not implemented yet
    runtime.implement(reserve, reserve_fn)
    runtime.run_until_idle()
    assert runtime.status("o-1") is InstanceStatus.COMPLETED


def test_the_handle_returns_the_typed_result(runtime: LocalRuntime) -> None:
    """WorkflowHandle.result() returns the workflow's result type, not JSON."""
    runtime.register(order)
    runtime.implement(quote, quote_fn)
    runtime.implement(reserve, reserve_fn)
    handle = runtime.start(order, PARCEL, workflow_id="o-1")
    runtime.run_until_idle()
    result: Quote = handle.result()
    assert isinstance(result, Quote)
    assert result == Quote(price=20)
    assert runtime.result("o-1") == Quote(price=20)
    assert repr(handle) == "<WorkflowHandle order 'o-1'>"


def test_result_of_a_running_instance_raises(runtime: LocalRuntime) -> None:
    """Asking for the result of a running instance raises WorkflowNotFinishedError."""
    runtime.register(order)
    handle = runtime.start(order, PARCEL, workflow_id="o-1")
    runtime.run_until_idle()
    with pytest.raises(WorkflowNotFinishedError, match="'o-1' is still running"):
        handle.result()


@pytest.mark.parametrize("method", ["status", "result", "history"])
def test_an_unknown_instance_is_reported(runtime: LocalRuntime, method: str) -> None:
    """status, result and history of an id never started raise WorkflowNotFoundError."""
    with pytest.raises(WorkflowNotFoundError, match="no workflow instance 'nope'"):
        getattr(runtime, method)("nope")


def test_start_without_an_id_makes_one_from_the_workflow_name(runtime: LocalRuntime) -> None:
    """Without workflow_id, start() names the instance after the workflow, uniquely."""
    runtime.register(order)
    first = runtime.start(order, PARCEL)
    second = runtime.start(order, PARCEL)
    assert first.workflow_id.startswith("order-")
    assert first.workflow_id != second.workflow_id


def test_history_records_each_call_with_its_request_and_result(runtime: LocalRuntime) -> None:
    """history() lists the calls in order with request, outcome and activations."""
    runtime.register(order)
    runtime.implement(quote, quote_fn)
    runtime.implement(reserve, reserve_fn)
    handle = runtime.start(order, PARCEL, workflow_id="o-1")
    runtime.run_until_idle()
    history = handle.history()
    assert history.instance.workflow_name == "order"
    assert history.instance.status is InstanceStatus.COMPLETED
    assert orjson.loads(history.instance.result or b"") == {"price": 20}
    assert history.instance.activations == 3
    rows = [(op.op_id, op.kind, op.name, orjson.loads(op.request), op.state, op.result,
             op.sent, op.created_in, op.resolved_in) for op in history.operations]
    assert rows == [
        ("1", "call", "quote", {"sku": "lamp", "qty": 2}, OperationState.COMPLETED,
         b'{"price":20}', True, 1, 2),
        ("2", "call", "reserve", {"sku": "lamp", "qty": 2}, OperationState.COMPLETED,
         b"null", True, 2, 3),
    ]
    assert history.operations[0].site.startswith("test_local.py:")
    assert history.operations[0].site.endswith(" in order")


def test_services_may_be_plain_or_async_functions(runtime: LocalRuntime) -> None:
    """A sync and an async implementation both serve requests with validated input."""
    received: list[Parcel] = []

    def sync_quote(p: Parcel) -> Quote:
        received.append(p)
        return Quote(price=1)

    async def async_reserve(p: Parcel) -> None:
        received.append(p)
        await asyncio.sleep(0)

    runtime.register(order)
    runtime.implement(quote, sync_quote)
    runtime.implement(reserve, async_reserve)
    handle = runtime.start(order, PARCEL, workflow_id="o-1")
    runtime.run_until_idle()
    assert handle.result() == Quote(price=1)
    assert received == [PARCEL, PARCEL]
    assert all(isinstance(p, Parcel) for p in received)


def test_an_unimplemented_service_leaves_its_request_queued(runtime: LocalRuntime) -> None:
    """A request to a service without an implementation waits on that service's queue."""
    runtime.register(order)
    runtime.start(order, PARCEL, workflow_id="o-1")
    runtime.run_until_idle()
    assert len(runtime.service_queue("quote")) == 1
    (message,) = runtime.service_queue("quote").receive(1)
    request = parse_call_request(message.body)
    assert (request.workflow_id, request.call_id, request.service) == ("o-1", "1", "quote")
    assert request.request == {"sku": "lamp", "qty": 2}
    assert request.reply_to == runtime.transport.reply_address


def test_on_event_receives_every_event_in_order() -> None:
    """on_event sees activation reports, service invocations and dead letters as they occur."""
    events: list[ActivationReport | ServiceInvocation | DeadLetter] = []
    with LocalRuntime(on_event=events.append) as rt:
        rt.register(order)
        rt.implement(quote, quote_fn)
        rt.implement(reserve, reserve_fn)
        rt.start(order, PARCEL, workflow_id="o-1")
        rt.run_until_idle()
        rt.queue.send(b"garbage", group_id="o-1", dedup_id="g")
        rt.run_until_idle()
    summary = [
        (type(e).__name__, e.status if isinstance(e, ActivationReport)
         else e.service if isinstance(e, ServiceInvocation) else e.body)
        for e in events
    ]
    assert summary == [
        ("ActivationReport", "suspended"),
        ("ServiceInvocation", "quote"),
        ("ActivationReport", "suspended"),
        ("ServiceInvocation", "reserve"),
        ("ActivationReport", "completed"),
        ("DeadLetter", b"garbage"),
    ]


def test_register_refuses_another_workflow_under_a_taken_name(runtime: LocalRuntime) -> None:
    """Two different workflows cannot share a name; registering the same one again is fine."""

    @workflow(name="order")
    async def impostor(ctx: WorkflowContext[Parcel]) -> Quote:
        return Quote(price=0)

    runtime.register(order)
    runtime.register(order)
    with pytest.raises(ValueError, match="already registered as 'order'"):
        runtime.register(impostor)


def test_register_refuses_a_plain_function(runtime: LocalRuntime) -> None:
    """register() takes only @workflow objects."""

    async def not_decorated(ctx: WorkflowContext[Parcel]) -> None:
        return None

    not_a_workflow: Any = not_decorated
    with pytest.raises(TypeError, match="takes @workflow objects"):
        runtime.register(not_a_workflow)


def test_implement_refuses_a_second_service_with_the_same_name(runtime: LocalRuntime) -> None:
    """Two Service objects with one name cannot both be implemented."""
    runtime.implement(quote, quote_fn)
    with pytest.raises(ValueError, match="service 'quote' is already implemented"):
        runtime.implement(Service("quote", Parcel, Quote), quote_fn)


def test_async_services_refuse_to_run_inside_a_running_event_loop() -> None:
    """run_until_idle inside an event loop with an async service raises, recording nothing."""

    async def main(rt: LocalRuntime) -> None:
        rt.run_until_idle()

    with LocalRuntime() as rt:
        rt.register(order)
        rt.implement(quote, quote_fn)
        rt.start(order, PARCEL, workflow_id="o-1")
        rt.run_until_idle()  # quote answered; the request to reserve is queued
        rt.implement(reserve, reserve_fn)
        with pytest.raises(WorkflowError, match="call run_until_idle\\(\\) from synchronous"):
            asyncio.run(main(rt))
        assert [op.state for op in rt.history("o-1").operations] == [
            OperationState.COMPLETED, OperationState.PENDING]
        rt.run_until_idle()
        assert rt.status("o-1") is InstanceStatus.COMPLETED


def test_a_sqlite_file_carries_an_instance_from_one_runtime_to_another(tmp_path: Path) -> None:
    """An instance started by one runtime is finished by another on the same file."""
    db = tmp_path / "state.sqlite3"
    with LocalRuntime(db) as first:
        first.register(order)
        first.start(order, PARCEL, workflow_id="o-1")  # the process stops before it runs

    with LocalRuntime(db) as second:
        second.register(order)
        second.implement(quote, quote_fn)
        second.implement(reserve, reserve_fn)
        assert second.status("o-1") is InstanceStatus.RUNNING
        handle = second.start(order, PARCEL, workflow_id="o-1")  # idempotent: wakes it up
        second.run_until_idle()
        assert handle.result() == Quote(price=20)
        assert [i.workflow_id for i in second.store.list_instances()] == ["o-1"]


def test_a_sqlite_file_keeps_recorded_results_for_the_next_runtime(tmp_path: Path) -> None:
    """Results recorded by one runtime are replayed, not re-requested, by the next one."""
    db = tmp_path / "state.sqlite3"
    with LocalRuntime(db) as first:
        first.register(order)
        first.implement(quote, quote_fn)
        first.start(order, PARCEL, workflow_id="o-1")
        first.run_until_idle()  # quote answered; reserve requested, never answered here

    with LocalRuntime(db) as second:
        second.register(order)
        # The reserve service's reply reaches the workflow queue, as from a remote service.
        second.queue.send(b'{"v":1,"kind":"call_result","workflow_id":"o-1","call_id":"2",'
                          b'"ok":true,"value":null}', group_id="o-1", dedup_id="reply-2")
        (report,) = second.run_until_idle()
        assert (report.activation, report.status, report.applied) == (3, "completed", ["2"])
        assert second.result("o-1") == Quote(price=20)
        assert second.invocations == []


def test_a_restart_resends_pending_requests_with_the_same_call_ids(tmp_path: Path) -> None:
    """Requests in flight when the process stopped (the queues live in memory) are sent again
    by the next runtime on the same file, with the same call id, and the workflow completes."""
    db = tmp_path / "state.sqlite3"
    with LocalRuntime(db) as first:
        first.register(order)
        first.implement(quote, quote_fn)
        first.start(order, PARCEL, workflow_id="o-1")
        first.run_until_idle()  # reserve requested; the process "dies" before it is served
        (sent,) = [op for op in first.history("o-1").operations if op.name == "reserve"]
        assert sent.sent and sent.state is OperationState.PENDING

    with LocalRuntime(db) as second:
        second.register(order)
        second.implement(quote, quote_fn)
        second.implement(reserve, reserve_fn)
        second.run_until_idle()
        assert second.result("o-1") == Quote(price=20)
        assert [(i.service, i.call_id) for i in second.invocations] == [("reserve", sent.op_id)]


def test_a_memory_database_does_not_recover_anything() -> None:
    """recover() on a fresh runtime finds nothing to re-send."""
    with LocalRuntime() as rt:
        assert rt.recover() == 0
        assert len(rt.queue) == 0
