"""The activation engine and its outbox, seen through the local runtime: bad input, duplicate
and late messages, idempotent starts, crashes and redelivery, poison messages, cancellation."""

from __future__ import annotations

import linecache
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import cast

import orjson
import pytest
from pydantic import BaseModel

from lambda_workflow import (
    InstanceStatus,
    InvalidRequestError,
    Service,
    UnknownWorkflowError,
    WorkflowAlreadyStartedError,
    WorkflowContext,
    WorkflowFailedError,
    workflow,
)
from lambda_workflow._runtime.engine import call_request_body, start_message_body
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import (
    CallRequestMessage,
    OperationRecord,
    OperationState,
    StartMessage,
    parse_call_request,
    parse_workflow_message,
)

PostMessage = Callable[[dict[str, object]], None]  # the post_message fixture (conftest.py)


class Parcel(BaseModel):
    sku: str
    qty: int


class Quote(BaseModel):
    price: int


class Label(BaseModel):
    barcode: str


quote = Service("quote", Parcel, Quote)
label = Service("label", Parcel, Label)

PARCEL = Parcel(sku="lamp", qty=2)


def quote_fn(p: Parcel) -> Quote:
    return Quote(price=10 * p.qty)


@workflow
async def priced(ctx: WorkflowContext[Parcel]) -> int:
    return (await ctx.call(quote, ctx.request)).price


@workflow
async def labelled(ctx: WorkflowContext[Parcel]) -> str:
    q = await ctx.call(quote, ctx.request)
    lab = await ctx.call(label, ctx.request)
    return f"{q.price}:{lab.barcode}"


def reply(workflow_id: str, call_id: str, value: object) -> dict[str, object]:
    return {"kind": "call_result", "workflow_id": workflow_id, "call_id": call_id, "ok": True,
            "value": value}


def snapshot(
    rt: LocalRuntime, workflow_id: str
) -> list[tuple[str, str, OperationState, bytes | None]]:
    return [(op.op_id, op.name, op.state, op.result)
            for op in rt.history(workflow_id).operations]


def reasons(rt: LocalRuntime) -> list[str]:
    return [letter.reason for letter in rt.dead_letters()]



def test_starting_an_unregistered_workflow_is_refused(runtime: LocalRuntime) -> None:
    """start() of a workflow the runtime does not know raises and records nothing."""
    runtime.register(labelled)
    with pytest.raises(UnknownWorkflowError) as info:
        runtime.start(priced, PARCEL, workflow_id="w")
    assert "workflow 'priced' is not registered" in str(info.value)
    assert "registered: labelled" in str(info.value)
    assert "runtime.register(" in str(info.value)
    assert runtime.store.list_instances() == []
    assert len(runtime.queue) == 0


def test_starting_with_an_invalid_request_is_refused(runtime: LocalRuntime) -> None:
    """start() with an input that does not validate raises InvalidRequestError, records
    nothing."""
    runtime.register(priced)
    bad: Parcel = {"sku": "lamp", "qty": "many"}  # type: ignore[assignment]  # deliberately bad
    with pytest.raises(InvalidRequestError) as info:
        runtime.start(priced, bad, workflow_id="w")
    text = str(info.value)
    assert "the input of workflow 'priced' is not a valid Parcel" in text
    assert "qty" in text
    assert runtime.store.get_instance("w") is None
    assert len(runtime.queue) == 0


def test_a_call_with_a_request_of_the_wrong_type_fails_the_workflow(
    runtime: LocalRuntime,
) -> None:
    """ctx.call with a request of another type fails the workflow, naming service and site;
    nothing is recorded or sent."""

    @workflow
    async def confused(ctx: WorkflowContext[Parcel]) -> int:
        wrong = cast(Parcel, Label(barcode="123"))  # the mistake mypy would have caught
        return (await ctx.call(quote, wrong)).price

    runtime.register(confused)
    handle = runtime.start(confused, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    with pytest.raises(WorkflowFailedError) as info:
        handle.result()
    err = info.value
    assert err.error_type == "InvalidRequestError"
    site = re.search(r"the request to service 'quote' at test_engine\.py:(\d+) in \S+confused "
                     r"is not a valid Parcel", err.message)
    assert site is not None, err.message
    assert "ctx.call(quote, wrong)" in linecache.getline(__file__, int(site[1]))
    assert runtime.history("w").operations == []
    assert len(runtime.service_queue("quote")) == 0



def test_a_malformed_message_is_dead_lettered_with_the_reason(runtime: LocalRuntime) -> None:
    """A body that is not JSON goes to the dead letters, kept as it was, with the reason."""
    runtime.queue.send(b"{oops", group_id="w", dedup_id="d1")
    assert runtime.run_until_idle() == []
    (letter,) = runtime.dead_letters()
    assert letter.body == b"{oops"
    assert "workflow message is not valid JSON" in letter.reason
    assert len(runtime.queue) == 0


def test_an_unknown_message_kind_is_dead_lettered(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """A message of an unknown kind is dead-lettered, naming the kind."""
    post_message({"kind": "pause", "workflow_id": "w"})
    runtime.run_until_idle()
    assert len(reasons(runtime)) == 1
    assert "unknown message kind 'pause'" in reasons(runtime)[0]


def test_a_message_in_another_group_is_dead_lettered(runtime: LocalRuntime) -> None:
    """A message whose workflow id is not its FIFO group is refused (it would break ordering)."""
    runtime.queue.send(b'{"v":1,"kind":"cancel","workflow_id":"a"}', group_id="b", dedup_id="d")
    runtime.run_until_idle()
    assert reasons(runtime) == ["message for workflow 'a' arrived in group 'b'; the group id "
                                "must be the workflow id"]


def test_a_start_message_for_an_unknown_workflow_is_dead_lettered(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """A start message naming an unregistered workflow creates nothing and is dead-lettered."""
    runtime.register(priced)
    post_message({"kind": "start", "workflow_id": "w", "workflow": "nope", "input": {}})
    reports = runtime.run_until_idle()
    assert [r.status for r in reports] == ["rejected"]
    assert reasons(runtime) == ["unknown workflow 'nope' for instance 'w'; registered: priced"]
    assert runtime.store.get_instance("w") is None


def test_a_start_message_with_an_invalid_input_is_dead_lettered(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """A start message whose input does not validate creates nothing and names the type."""
    runtime.register(priced)
    post_message({"kind": "start", "workflow_id": "w", "workflow": "priced",
                  "input": {"sku": "lamp"}})
    runtime.run_until_idle()
    (reason,) = reasons(runtime)
    assert "the input of workflow 'priced' (w) is not a valid Parcel" in reason
    assert runtime.store.get_instance("w") is None


def test_a_start_message_repeating_an_id_with_another_input_is_dead_lettered(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """A raw start message for an existing id with a different input is rejected with the
    reason; one with the same input (even with keys in another order) is a harmless wake-up."""
    runtime.register(priced)
    runtime.start(priced, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    post_message({"kind": "start", "workflow_id": "w", "workflow": "priced",
                  "input": {"sku": "lamp", "qty": 3}})
    post_message({"kind": "start", "workflow_id": "w", "workflow": "priced",
                  "input": {"qty": 2, "sku": "lamp"}})
    runtime.run_until_idle()
    assert reasons(runtime) == ["workflow id 'w' is already used by an instance of 'priced' "
                                "with a different input; a start message may only repeat the "
                                "original input"]
    inst = runtime.store.get_instance("w")
    assert inst is not None and orjson.loads(inst.input) == {"sku": "lamp", "qty": 2}


def test_a_message_for_an_instance_never_started_is_dead_lettered(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """A reply to an instance that does not exist is dead-lettered, saying so."""
    post_message(reply("ghost", "1", {"price": 1}))
    runtime.run_until_idle()
    assert reasons(runtime) == ["no workflow instance 'ghost' exists (a message for an instance "
                                "that was never started)"]


def test_a_reply_for_an_unknown_call_id_is_dead_lettered_and_changes_nothing(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """A reply naming a call the workflow never made is dead-lettered; the history stays."""
    runtime.register(priced)
    runtime.start(priced, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    before = snapshot(runtime, "w")
    post_message(reply("w", "7", {"price": 1}))
    runtime.run_until_idle()
    assert reasons(runtime) == ["reply for unknown call id '7' of workflow instance 'w' "
                                "(priced); it has 1 calls"]
    assert snapshot(runtime, "w") == before
    assert runtime.status("w") is InstanceStatus.RUNNING


def test_a_duplicate_reply_is_a_no_op(runtime: LocalRuntime, post_message: PostMessage) -> None:
    """A second reply to an answered call changes nothing and is not an error."""
    runtime.register(labelled)
    runtime.implement(quote, quote_fn)
    runtime.start(labelled, PARCEL, workflow_id="w")
    runtime.run_until_idle()  # call 1 answered, call 2 (label) waits
    before = snapshot(runtime, "w")
    post_message(reply("w", "1", {"price": 999}))
    (report,) = runtime.run_until_idle()
    assert report.duplicates == ["1"]
    assert report.applied == []
    assert snapshot(runtime, "w") == before
    assert runtime.dead_letters() == []


def test_two_replies_to_one_call_in_one_batch_keep_the_first(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """When one batch holds two replies to the same call, the first is recorded."""
    runtime.register(priced)
    handle = runtime.start(priced, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    post_message(reply("w", "1", {"price": 1}))
    post_message(reply("w", "1", {"price": 2}))
    (report,) = runtime.run_until_idle()
    assert report.applied == ["1"]
    assert report.duplicates == ["1"]
    assert handle.result() == 1


def test_a_reply_that_does_not_validate_is_dead_lettered_and_the_call_stays_pending(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """An invalid reply is refused naming the type; a later valid reply completes the call."""
    runtime.register(priced)
    handle = runtime.start(priced, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    post_message(reply("w", "1", {"price": "a lot"}))
    runtime.run_until_idle()
    (reason,) = reasons(runtime)
    assert "reply to call 1 of workflow 'w' (service 'quote') is not a valid Quote" in reason
    assert "price" in reason
    ((_, _, state, result),) = snapshot(runtime, "w")
    assert (state, result) == (OperationState.PENDING, None)
    assert handle.status() is InstanceStatus.RUNNING

    post_message(reply("w", "1", {"price": 30}))
    runtime.run_until_idle()
    assert handle.result() == 30
    assert len(runtime.dead_letters()) == 1


def test_an_error_reply_is_recorded_with_its_type_message_and_details(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """A reply with ok=false, as another language would send it, records the error."""
    runtime.register(priced)
    runtime.start(priced, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    post_message({"kind": "call_result", "workflow_id": "w", "call_id": "1", "ok": False,
                  "error": {"type": "NoPrice", "message": "unlisted", "details": [1]}})
    runtime.run_until_idle()
    (op,) = runtime.history("w").operations
    assert op.state is OperationState.FAILED
    assert orjson.loads(op.result or b"") == {"type": "NoPrice", "message": "unlisted",
                                              "details": [1]}
    with pytest.raises(WorkflowFailedError, match="NoPrice: unlisted"):
        runtime.result("w")


def test_a_timer_message_for_an_unknown_timer_is_dead_lettered(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """A timer that the workflow never created is dead-lettered, naming the timer."""
    runtime.register(priced)
    runtime.start(priced, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    post_message({"kind": "timer_fired", "workflow_id": "w", "timer_id": "9"})
    runtime.run_until_idle()
    assert reasons(runtime) == ["unknown timer id '9' for workflow instance 'w'"]



def test_starting_twice_with_the_same_input_returns_the_same_instance(
    runtime: LocalRuntime,
) -> None:
    """The same id and input give one instance, which runs once."""
    runtime.register(priced)
    runtime.implement(quote, quote_fn)
    first = runtime.start(priced, PARCEL, workflow_id="w")
    second = runtime.start(priced, Parcel(sku="lamp", qty=2), workflow_id="w")
    runtime.run_until_idle()
    assert first.workflow_id == second.workflow_id == "w"
    assert [i.workflow_id for i in runtime.store.list_instances()] == ["w"]
    assert len(runtime.invocations) == 1
    assert second.result() == 20


def test_starting_a_finished_instance_again_does_not_rerun_it(runtime: LocalRuntime) -> None:
    """A start after completion (even past the queue's deduplication window) changes
    nothing."""
    runtime.register(priced)
    runtime.implement(quote, quote_fn)
    runtime.start(priced, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    runtime.advance_time(3600)  # the start message's deduplication id is forgotten
    again = runtime.start(priced, PARCEL, workflow_id="w")
    reports = runtime.run_until_idle()
    assert [r.status for r in reports] == ["finished-earlier"]
    assert again.result() == 20
    assert len(runtime.invocations) == 1


def test_starting_an_id_again_with_another_input_is_refused(runtime: LocalRuntime) -> None:
    """The same id with a different input raises and leaves the instance as it was."""
    runtime.register(priced)
    runtime.start(priced, PARCEL, workflow_id="w")
    with pytest.raises(WorkflowAlreadyStartedError, match="'w' is already used by an instance "
                                                           "with a different input"):
        runtime.start(priced, Parcel(sku="lamp", qty=3), workflow_id="w")
    inst = runtime.store.get_instance("w")
    assert inst is not None
    assert orjson.loads(inst.input) == {"sku": "lamp", "qty": 2}


def test_starting_an_id_again_with_another_workflow_is_refused(runtime: LocalRuntime) -> None:
    """The same id for another workflow raises, naming the workflow that owns the id."""
    runtime.register(priced, labelled)
    runtime.start(priced, PARCEL, workflow_id="w")
    with pytest.raises(WorkflowAlreadyStartedError, match="instance with workflow 'priced'"):
        runtime.start(labelled, PARCEL, workflow_id="w")



def make_send_fail(rt: LocalRuntime, monkeypatch: pytest.MonkeyPatch, failures: int,
                   attempts: list[str]) -> None:
    """Make the transport raise on its next ``failures`` sends to a service."""
    send = rt.transport.send_to_service

    def flaky(service: str, dedup_id: str, body: bytes) -> None:
        attempts.append(parse_call_request(body).call_id)
        if len(attempts) <= failures:
            raise ConnectionError("service queue unavailable")
        send(service, dedup_id, body)

    monkeypatch.setattr(rt.transport, "send_to_service", flaky)


def test_a_send_that_crashes_is_retried_with_the_same_call_id(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a crash in send, redelivery sends the same call id, and the service runs once."""
    attempts: list[str] = []
    make_send_fail(runtime, monkeypatch, 2, attempts)
    runtime.register(priced)
    runtime.implement(quote, quote_fn)
    handle = runtime.start(priced, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    assert attempts == ["1", "1", "1"]
    assert [(i.service, i.call_id) for i in runtime.invocations] == [("quote", "1")]
    assert handle.result() == 20
    assert [op.op_id for op in runtime.history("w").operations] == ["1"]


def test_a_crash_after_send_does_not_run_the_service_twice(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If marking a request sent fails, the re-send carries the same deduplication id and
    is dropped, so the service sees the call once."""
    mark_sent = runtime.store.mark_sent
    failures = [RuntimeError("database is locked")]

    def flaky_mark_sent(workflow_id: str, op_ids: Sequence[str]) -> None:
        if failures:
            raise failures.pop()
        mark_sent(workflow_id, op_ids)

    monkeypatch.setattr(runtime.store, "mark_sent", flaky_mark_sent)
    runtime.register(priced)
    runtime.implement(quote, quote_fn)
    handle = runtime.start(priced, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    assert failures == []
    assert handle.result() == 20
    assert Counter(i.call_id for i in runtime.invocations) == {"1": 1}


def test_a_message_that_keeps_crashing_is_dead_lettered_and_fails_the_instance(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message whose activation always crashes ends in the dead letters; the instance is
    failed with PoisonMessage, naming the last error."""
    attempts: list[str] = []
    make_send_fail(runtime, monkeypatch, 1_000, attempts)
    runtime.register(priced)
    handle = runtime.start(priced, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    assert len(attempts) == runtime.queue.max_receives
    (letter,) = runtime.dead_letters()
    assert isinstance(parse_workflow_message(letter.body), StartMessage)
    assert letter.reason == f"received {runtime.queue.max_receives} times without being deleted"
    assert handle.status() is InstanceStatus.FAILED
    with pytest.raises(WorkflowFailedError) as info:
        handle.result()
    assert info.value.error_type == "PoisonMessage"
    assert f"a start message failed {runtime.queue.max_receives} times" in info.value.message
    assert "last error: ConnectionError: service queue unavailable" in info.value.message



def test_cancel_ends_the_instance_as_cancelled(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """A cancel message marks a running instance cancelled with the given reason."""
    runtime.register(priced)
    handle = runtime.start(priced, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    post_message({"kind": "cancel", "workflow_id": "w", "reason": "customer changed their mind"})
    (report,) = runtime.run_until_idle()
    assert report.status == "cancelled"
    assert handle.status() is InstanceStatus.CANCELLED
    with pytest.raises(WorkflowFailedError) as info:
        handle.result()
    assert (info.value.error_type, info.value.message) == ("Cancelled",
                                                           "customer changed their mind")


def test_a_late_reply_is_recorded_and_does_not_rerun_the_workflow(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """A reply arriving after the instance ended is kept in history; the code does not run."""
    runs: list[str] = []

    @workflow
    async def counted(ctx: WorkflowContext[Parcel]) -> int:
        runs.append(ctx.workflow_id)
        return (await ctx.call(quote, ctx.request)).price

    runtime.register(counted)
    handle = runtime.start(counted, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    post_message({"kind": "cancel", "workflow_id": "w"})
    runtime.run_until_idle()
    assert runs == ["w", "w"]  # replayed once, to deliver the cancellation at the await

    runtime.implement(quote, quote_fn)  # the request was waiting on the service's queue
    reports = runtime.run_until_idle()
    assert [(r.status, r.applied) for r in reports] == [("finished-earlier", ["1"])]
    assert runs == ["w", "w"]
    assert snapshot(runtime, "w") == [
        ("cancel", "cancel", OperationState.COMPLETED, b"null"),
        ("1", "quote", OperationState.COMPLETED, b'{"price":20}')]
    assert handle.status() is InstanceStatus.CANCELLED


def test_a_call_left_pending_at_completion_is_still_sent_and_its_reply_recorded(
    runtime: LocalRuntime,
) -> None:
    """A call made but not awaited before returning is sent; its reply lands in history."""

    @workflow
    async def fire_and_forget(ctx: WorkflowContext[Parcel]) -> str:
        ctx.call(quote, ctx.request)
        return "returned"

    runtime.register(fire_and_forget)
    runtime.implement(quote, quote_fn)
    handle = runtime.start(fire_and_forget, PARCEL, workflow_id="w")
    reports = runtime.run_until_idle()
    assert [r.status for r in reports] == ["completed", "finished-earlier"]
    assert handle.result() == "returned"
    assert snapshot(runtime, "w")[0][2] is OperationState.COMPLETED



def test_the_engine_writes_messages_the_protocol_parsers_accept() -> None:
    """Start and call request bodies parse back with the public parsers, unchanged."""
    start = parse_workflow_message(start_message_body("w", "priced", b'{"qty":2,"sku":"lamp"}'))
    assert start == StartMessage(workflow_id="w", workflow="priced",
                                 input={"qty": 2, "sku": "lamp"})
    op = OperationRecord(workflow_id="w", op_id="3", seq=2, kind="call", name="quote",
                         request=b'{"qty":2,"sku":"lamp"}', request_digest="d")
    assert parse_call_request(call_request_body(op, "queue-url")) == CallRequestMessage(
        workflow_id="w", call_id="3", service="quote", request={"qty": 2, "sku": "lamp"},
        reply_to="queue-url")
