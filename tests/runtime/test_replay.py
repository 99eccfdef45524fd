"""Replay semantics, seen through the local runtime: operation ids, recorded results, errors,
suspension, sealing, the replay-aware logger and non-determinism."""

from __future__ import annotations

import asyncio
import linecache
import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel, field_validator

from lambda_workflow import (
    InstanceStatus,
    NonDeterminismError,
    Service,
    ServiceError,
    Workflow,
    WorkflowContext,
    WorkflowFailedError,
    workflow,
)
from lambda_workflow._runtime.engine import ActivationReport
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import OperationState
from lambda_workflow.models import Outcome as RecordedOutcome

PostMessage = Callable[[dict[str, object]], None]  # the post_message fixture (conftest.py)


class Parcel(BaseModel):
    sku: str
    qty: int


class Quote(BaseModel):
    price: int


quote = Service("quote", Parcel, Quote)
stock = Service("stock", Parcel, int)
ship = Service("ship", Parcel, str)
cleanup = Service("cleanup", Parcel, None)

PARCEL = Parcel(sku="lamp", qty=2)


def quote_fn(p: Parcel) -> Quote:
    return Quote(price=10 * p.qty)


def stock_fn(p: Parcel) -> int:
    return 5


def ship_fn(p: Parcel) -> str:
    return f"shipped {p.qty} {p.sku}"


def op_names(rt: LocalRuntime, workflow_id: str) -> list[tuple[str, str]]:
    return [(op.op_id, op.name) for op in rt.history(workflow_id).operations]


def cited_lines(message: str) -> list[str]:
    """The lines of this file that an error message cites as ``test_replay.py:N``."""
    return [linecache.getline(__file__, int(n)).strip()
            for n in re.findall(r"test_replay\.py:(\d+)", message)]


def redeploy(rt: LocalRuntime, new: Workflow[Parcel, str]) -> None:
    """Swap the code behind a registered name, as a deployment between activations would."""
    rt._workflows[new.name] = new


def reply(workflow_id: str, call_id: str, value: object) -> dict[str, object]:
    return {"kind": "call_result", "workflow_id": workflow_id, "call_id": call_id, "ok": True,
            "value": value}



def test_calls_passed_to_gather_leave_in_one_activation(runtime: LocalRuntime) -> None:
    """Both calls of a gather are recorded and sent by the first activation."""

    @workflow
    async def both(ctx: WorkflowContext[Parcel]) -> str:
        q, n = await asyncio.gather(ctx.call(quote, ctx.request), ctx.call(stock, ctx.request))
        return f"{q.price}/{n}"

    runtime.register(both)
    runtime.start(both, PARCEL, workflow_id="w")
    reports: list[ActivationReport] = []
    runtime.step_workflows(reports)
    assert len(reports) == 1
    assert op_names(runtime, "w") == [("1", "quote"), ("2", "stock")]
    assert len(runtime.service_queue("quote")) == 1
    assert len(runtime.service_queue("stock")) == 1


def test_call_ids_follow_creation_order_not_await_order(runtime: LocalRuntime) -> None:
    """Ids are "1", "2" in the order the calls are created, even when the second is awaited
    first."""

    @workflow
    async def backwards(ctx: WorkflowContext[Parcel]) -> str:
        first = ctx.call(quote, ctx.request)
        second = ctx.call(stock, ctx.request)
        n = await second
        q = await first
        return f"{q.price}/{n}"

    runtime.register(backwards)
    runtime.implement(quote, quote_fn)
    runtime.implement(stock, stock_fn)
    handle = runtime.start(backwards, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    assert handle.result() == "20/5"
    assert op_names(runtime, "w") == [("1", "quote"), ("2", "stock")]
    assert {(i.service, i.call_id) for i in runtime.invocations} == {("quote", "1"),
                                                                    ("stock", "2")}


def test_call_ids_under_gather_of_coroutines_follow_argument_order(
    runtime: LocalRuntime,
) -> None:
    """Coroutines passed to gather create their calls in argument order."""

    async def priced(ctx: WorkflowContext[Parcel], service: Service[Parcel, Quote]) -> int:
        await asyncio.sleep(0)
        return (await ctx.call(service, ctx.request)).price

    quote_b = Service("quote-b", Parcel, Quote)
    quote_c = Service("quote-c", Parcel, Quote)

    @workflow
    async def three(ctx: WorkflowContext[Parcel]) -> str:
        prices = await asyncio.gather(
            priced(ctx, quote_c), priced(ctx, quote), priced(ctx, quote_b))
        return ",".join(map(str, prices))

    runtime.register(three)
    for svc in (quote, quote_b, quote_c):
        runtime.implement(svc, quote_fn)
    handle = runtime.start(three, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    assert handle.result() == "20,20,20"
    assert op_names(runtime, "w") == [("1", "quote-c"), ("2", "quote"), ("3", "quote-b")]


def test_a_recorded_call_is_never_sent_again_on_replay(runtime: LocalRuntime) -> None:
    """Across all activations, each call reaches its service exactly once."""

    @workflow
    async def chain(ctx: WorkflowContext[Parcel]) -> str:
        q = await ctx.call(quote, ctx.request)
        n = await ctx.call(stock, ctx.request)
        if n < ctx.request.qty:
            return "out of stock"
        return f"{q.price}: " + await ctx.call(ship, ctx.request)

    runtime.register(chain)
    runtime.implement(quote, quote_fn)
    runtime.implement(stock, stock_fn)
    runtime.implement(ship, ship_fn)
    handle = runtime.start(chain, PARCEL, workflow_id="w")
    reports = runtime.run_until_idle()
    assert handle.result() == "20: shipped 2 lamp"
    assert [r.status for r in reports] == ["suspended", "suspended", "suspended", "completed"]
    assert Counter(i.call_id for i in runtime.invocations) == {"1": 1, "2": 1, "3": 1}
    assert [[op.op_id for op in r.sent] for r in reports] == [["1"], ["2"], ["3"], []]


def test_a_pending_call_is_not_sent_again_when_another_reply_arrives(
    runtime: LocalRuntime,
) -> None:
    """A replay triggered by one reply does not re-send the call still waiting for another."""

    @workflow
    async def both(ctx: WorkflowContext[Parcel]) -> str:
        q, n = await asyncio.gather(ctx.call(quote, ctx.request), ctx.call(stock, ctx.request))
        return f"{q.price}/{n}"

    runtime.register(both)
    runtime.implement(quote, quote_fn)  # stock stays unimplemented: its request waits
    runtime.start(both, PARCEL, workflow_id="w")
    reports = runtime.run_until_idle()
    assert [r.status for r in reports] == ["suspended", "suspended"]
    assert reports[1].applied == ["1"]
    assert reports[1].sent == []
    assert reports[1].pending == ["2"]
    assert len(runtime.service_queue("stock")) == 1



def test_except_exception_does_not_swallow_suspension(runtime: LocalRuntime) -> None:
    """A broad ``except Exception`` around a pending call does not run at suspension."""

    @workflow
    async def guarded(ctx: WorkflowContext[Parcel]) -> str:
        try:
            q = await ctx.call(quote, ctx.request)
        except Exception:
            await ctx.call(ship, ctx.request)
            return "swallowed"
        return f"quoted {q.price}"

    runtime.register(guarded)
    handle = runtime.start(guarded, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    assert handle.status() is InstanceStatus.RUNNING
    assert op_names(runtime, "w") == [("1", "quote")]
    assert len(runtime.service_queue("ship")) == 0
    runtime.implement(quote, quote_fn)
    runtime.run_until_idle()
    assert handle.result() == "quoted 20"
    assert op_names(runtime, "w") == [("1", "quote")]


def test_a_service_error_can_be_caught_and_is_the_same_on_replay(runtime: LocalRuntime) -> None:
    """A caught ServiceError carries type, message and details, and replay sees it again."""
    seen: list[tuple[object, ...]] = []

    def out_of_stock(p: Parcel) -> int:
        raise ServiceError("OutOfStock", f"no {p.sku} left", {"sku": p.sku, "left": 0})

    @workflow
    async def careful(ctx: WorkflowContext[Parcel]) -> str:
        try:
            await ctx.call(stock, ctx.request)
        except ServiceError as err:
            seen.append((err.error_type, err.message, err.details, err.service, err.call_id))
            await ctx.call(cleanup, ctx.request)
            return "refunded"
        return await ctx.call(ship, ctx.request)

    runtime.register(careful)
    runtime.implement(stock, out_of_stock)
    runtime.implement(cleanup, lambda p: None)
    handle = runtime.start(careful, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    assert handle.result() == "refunded"
    expected = ("OutOfStock", "no lamp left", {"sku": "lamp", "left": 0}, "stock", "1")
    assert seen == [expected, expected]  # first execution, then the replay that completes
    assert op_names(runtime, "w") == [("1", "stock"), ("2", "cleanup")]
    assert runtime.history("w").operations[0].state is OperationState.FAILED


def test_an_exception_in_a_service_arrives_as_a_service_error_with_its_class_name(
    runtime: LocalRuntime,
) -> None:
    """Any exception a service raises reaches the workflow as ServiceError(type=class name)."""

    def broken(p: Parcel) -> Quote:
        raise KeyError("price list")

    @workflow
    async def asks(ctx: WorkflowContext[Parcel]) -> str:
        try:
            await ctx.call(quote, ctx.request)
        except ServiceError as err:
            return f"{err.error_type}|{err.message}"
        return "no error"

    runtime.register(asks)
    runtime.implement(quote, broken)
    handle = runtime.start(asks, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    assert handle.result() == "KeyError|'price list'"


def test_a_workflow_that_raises_is_recorded_failed(runtime: LocalRuntime) -> None:
    """An exception escaping the workflow fails the instance with its type name and message."""

    @workflow
    async def grumpy(ctx: WorkflowContext[Parcel]) -> str:
        q = await ctx.call(quote, ctx.request)
        raise ValueError(f"price {q.price} is too high")

    runtime.register(grumpy)
    runtime.implement(quote, quote_fn)
    handle = runtime.start(grumpy, PARCEL, workflow_id="w")
    reports = runtime.run_until_idle()
    assert reports[-1].status == "failed"
    assert handle.status() is InstanceStatus.FAILED
    with pytest.raises(WorkflowFailedError) as info:
        runtime.result("w")
    assert info.value.error_type == "ValueError"
    assert info.value.message == "price 20 is too high"
    assert info.value.workflow_id == "w"
    assert "workflow 'w' failed with ValueError: price 20 is too high" in str(info.value)


def test_an_uncaught_service_error_fails_the_workflow_with_its_details(
    runtime: LocalRuntime,
) -> None:
    """A ServiceError the workflow does not catch fails it, keeping the service's error."""

    def refuse(p: Parcel) -> str:
        raise ServiceError("Embargo", "cannot ship there", ["EU"])

    @workflow
    async def shipper(ctx: WorkflowContext[Parcel]) -> str:
        return await ctx.call(ship, ctx.request)

    runtime.register(shipper)
    runtime.implement(ship, refuse)
    handle = runtime.start(shipper, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    with pytest.raises(WorkflowFailedError) as info:
        handle.result()
    assert info.value.error_type == "ServiceError"
    assert "Embargo: cannot ship there" in info.value.message
    assert info.value.details == {"error_type": "Embargo", "message": "cannot ship there",
                                  "details": ["EU"], "service": "ship", "call_id": "1"}



def test_teardown_at_suspension_records_and_sends_nothing(runtime: LocalRuntime) -> None:
    """A ``finally`` that calls a service runs for real only when the workflow really ends."""
    finally_runs: list[bool] = []

    @workflow
    async def tidy(ctx: WorkflowContext[Parcel]) -> str:
        try:
            q = await ctx.call(quote, ctx.request)
            return f"quoted {q.price}"
        finally:
            finally_runs.append(ctx.is_replaying)
            await ctx.call(cleanup, ctx.request)

    runtime.register(tidy)
    handle = runtime.start(tidy, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    assert finally_runs, "the finally block runs when the suspended coroutine is torn down"
    assert op_names(runtime, "w") == [("1", "quote")]
    assert len(runtime.service_queue("cleanup")) == 0

    runtime.implement(quote, quote_fn)
    runtime.implement(cleanup, lambda p: None)
    runtime.run_until_idle()
    assert handle.result() == "quoted 20"
    assert op_names(runtime, "w") == [("1", "quote"), ("2", "cleanup")]
    assert Counter(i.service for i in runtime.invocations) == {"quote": 1, "cleanup": 1}


def test_the_logger_does_not_repeat_lines_on_replay(
    runtime: LocalRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    """Each ctx.logger line appears once although the workflow replays three times."""

    @workflow
    async def chatty(ctx: WorkflowContext[Parcel]) -> str:
        ctx.logger.info("start %s", ctx.request.sku)
        try:
            q = await ctx.call(quote, ctx.request)
            ctx.logger.info("quoted %d", q.price)
            n = await ctx.call(stock, ctx.request)
            ctx.logger.info("stock %d", n)
        finally:
            ctx.logger.info("done")
        return "ok"

    caplog.set_level(logging.INFO, logger="lambda_workflow.workflow")
    runtime.register(chatty)
    runtime.implement(quote, quote_fn)
    runtime.implement(stock, stock_fn)
    runtime.start(chatty, PARCEL, workflow_id="w")
    reports = runtime.run_until_idle()
    assert len(reports) == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "lambda_workflow.workflow"]
    assert lines == ["start lamp", "quoted 20", "stock 5", "done"]


def test_is_replaying_is_true_until_the_first_new_result(runtime: LocalRuntime) -> None:
    """is_replaying is True while recorded results are returned and False after that."""
    marks: list[tuple[str, bool]] = []

    @workflow
    async def probe(ctx: WorkflowContext[Parcel]) -> str:
        marks.append(("before", ctx.is_replaying))
        await ctx.call(quote, ctx.request)
        marks.append(("after", ctx.is_replaying))
        return "ok"

    runtime.register(probe)
    runtime.implement(quote, quote_fn)
    runtime.start(probe, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    assert marks[0] == ("before", False)  # first activation: no history yet
    assert marks[-2:] == [("before", True), ("after", False)]  # the reply is new here



class Price(BaseModel):
    currency: str
    cents: int

    @field_validator("currency")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


pricing = Service("pricing", Parcel, Price)


def test_the_first_execution_sees_the_value_replay_will_see(runtime: LocalRuntime) -> None:
    """A service's unvalidated return value reaches the workflow validated, on every run."""
    seen: list[Price] = []

    @workflow
    async def priced(ctx: WorkflowContext[Parcel]) -> str:
        price = await ctx.call(pricing, ctx.request)
        seen.append(price)
        await ctx.call(stock, ctx.request)
        return f"{price.cents} {price.currency}"

    runtime.register(priced)
    # model_construct skips validation: the raw object has a lower-case currency.
    runtime.implement(pricing, lambda p: Price.model_construct(currency="eur", cents=999))
    runtime.implement(stock, stock_fn)
    handle = runtime.start(priced, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    assert handle.result() == "999 EUR"
    assert len(seen) == 2
    assert seen[0] == seen[1] == Price(currency="EUR", cents=999)



@workflow(name="shipping")
async def ship_v1(ctx: WorkflowContext[Parcel]) -> str:
    q = await ctx.call(quote, ctx.request)
    n = await ctx.call(stock, ctx.request)
    return f"{q.price}/{n}"


@workflow(name="shipping")
async def ship_v2_other_service(ctx: WorkflowContext[Parcel]) -> str:
    q = await ctx.call(pricing, ctx.request)  # was: quote
    n = await ctx.call(stock, ctx.request)
    return f"{q.cents}/{n}"


@workflow(name="shipping")
async def ship_v2_other_request(ctx: WorkflowContext[Parcel]) -> str:
    bigger = Parcel(sku=ctx.request.sku, qty=ctx.request.qty + 1)
    q = await ctx.call(quote, bigger)  # was: ctx.request
    n = await ctx.call(stock, ctx.request)
    return f"{q.price}/{n}"


@workflow(name="shipping")
async def ship_v2_fewer_calls(ctx: WorkflowContext[Parcel]) -> str:
    q = await ctx.call(quote, ctx.request)
    return f"{q.price}"  # the stock call was removed


def failed_with(rt: LocalRuntime, workflow_id: str) -> WorkflowFailedError:
    with pytest.raises(WorkflowFailedError) as info:
        rt.result(workflow_id)
    return info.value


def test_a_changed_service_name_is_non_determinism(tmp_path: Path) -> None:
    """New code on the same database calling another service fails the instance, naming the
    new line and what was recorded."""
    db = tmp_path / "state.sqlite3"
    with LocalRuntime(db) as before:
        before.register(ship_v1)
        before.start(ship_v1, PARCEL, workflow_id="w")
        before.run_until_idle()  # quote is not implemented: call 1 stays pending
    with LocalRuntime(db) as after:
        after.register(ship_v2_other_service)
        after.queue.send(b'{"v":1,"kind":"call_result","workflow_id":"w","call_id":"1",'
                         b'"ok":true,"value":{"price":7}}', group_id="w", dedup_id="r1")
        reports = after.run_until_idle()
        assert reports[-1].status == "failed"
        err = failed_with(after, "w")
        assert len(after.service_queue("pricing")) == 0
        assert [op.name for op in after.history("w").operations] == ["quote"]
    assert err.error_type == NonDeterminismError.__name__
    assert "no longer matches its history at operation #1" in err.message
    assert "created call 'pricing', but the history recorded call 'quote'" in err.message
    new_line, recorded_line = cited_lines(err.message)
    assert "ctx.call(pricing" in new_line
    assert "ctx.call(quote" in recorded_line


def test_a_changed_request_is_non_determinism_with_a_field_diff(runtime: LocalRuntime) -> None:
    """A call whose request differs from the recorded one fails with a field-by-field diff."""
    runtime.register(ship_v1)
    runtime.implement(quote, quote_fn)
    runtime.start(ship_v1, PARCEL, workflow_id="w")
    runtime.run_until_idle()  # call 1 done, call 2 (stock) pending
    redeploy(runtime, ship_v2_other_request)
    runtime.implement(stock, stock_fn)
    runtime.run_until_idle()
    err = failed_with(runtime, "w")
    assert err.error_type == "NonDeterminismError"
    assert "at operation #1 (call 'quote' at test_replay.py:" in err.message
    assert "the request differs from the recorded one: qty: recorded 2, now 3" in err.message
    assert "not the clock or random numbers" in err.message
    assert "ctx.call(quote, bigger)" in cited_lines(err.message)[0]


def test_fewer_operations_than_recorded_is_non_determinism(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """Code that finishes without creating a recorded operation fails, naming the missing one."""
    runtime.register(ship_v1)
    runtime.implement(quote, quote_fn)
    runtime.start(ship_v1, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    redeploy(runtime, ship_v2_fewer_calls)
    post_message(reply("w", "2", 5))
    runtime.run_until_idle()
    err = failed_with(runtime, "w")
    assert err.error_type == "NonDeterminismError"
    assert "finished after creating 1 operation, but its history recorded 2" in err.message
    assert "the first missing one is #2, call 'stock'" in err.message
    assert "n = await ctx.call(stock, ctx.request)" in cited_lines(err.message)[0]


def test_suspending_with_fewer_operations_than_recorded_is_non_determinism(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """Code that blocks before re-creating every recorded operation fails too."""

    @workflow(name="pair")
    async def pair_v1(ctx: WorkflowContext[Parcel]) -> str:
        q, n = await asyncio.gather(ctx.call(quote, ctx.request), ctx.call(stock, ctx.request))
        return f"{q.price}/{n}"

    @workflow(name="pair")
    async def pair_v2(ctx: WorkflowContext[Parcel]) -> str:
        return str((await ctx.call(quote, ctx.request)).price)

    runtime.register(pair_v1)
    runtime.start(pair_v1, PARCEL, workflow_id="w")
    runtime.run_until_idle()  # neither service is implemented
    redeploy(runtime, pair_v2)
    post_message(reply("w", "2", 5))
    runtime.run_until_idle()
    err = failed_with(runtime, "w")
    assert err.error_type == "NonDeterminismError"
    assert "suspended after creating 1 operation, but its history recorded 2" in err.message
    assert "#2, call 'stock'" in err.message


def test_a_caught_non_determinism_error_still_fails_the_workflow(
    runtime: LocalRuntime, post_message: PostMessage
) -> None:
    """Catching the NonDeterminismError in workflow code does not hide the mismatch."""

    @workflow(name="shipping")
    async def ship_v2_hides(ctx: WorkflowContext[Parcel]) -> str:
        try:
            await ctx.call(ship, ctx.request)
        except Exception:
            return "ignored"
        return "shipped"

    runtime.register(ship_v1)
    runtime.start(ship_v1, PARCEL, workflow_id="w")
    runtime.run_until_idle()
    redeploy(runtime, ship_v2_hides)
    post_message(reply("w", "1", {"price": 1}))
    runtime.run_until_idle()
    err = failed_with(runtime, "w")
    assert err.error_type == "NonDeterminismError"
    assert "created call 'ship', but the history recorded call 'quote'" in err.message
    assert len(runtime.service_queue("ship")) == 0


race_a = Service("race_a", int, int)
race_b = Service("race_b", int, int)
race_after = Service("race_after", str, int)


def _fail(x: int) -> int:
    raise ServiceError("Boom", f"failed {x}")


@workflow
async def first_error_wins(ctx: WorkflowContext[int]) -> int:
    try:
        await asyncio.gather(ctx.call(race_a, 1), ctx.call(race_b, 2))
    except ServiceError as err:
        return await ctx.call(race_after, err.service or "")
    return 0


def test_replay_delivers_replies_in_the_order_they_were_recorded(runtime: LocalRuntime) -> None:
    """When b's error arrives in an earlier activation than a's, every replay raises b's error
    from the gather, as the first run did, instead of the first error in program order."""
    runtime.register(first_error_wins)
    runtime.implement(race_a, _fail)
    runtime.implement(race_b, _fail)
    runtime.implement(race_after, lambda name: {"race_a": 1, "race_b": 2}[name])
    handle = runtime.start(first_error_wins, 0, workflow_id="race")
    runtime.step_workflows()                        # both requests leave
    held = runtime.service_queue("race_a").receive(10)
    runtime.step_services()                         # only b replies
    runtime.step_workflows()                        # b's error: the workflow calls race_after
    for message in held:
        runtime.service_queue("race_a").release(message)
    runtime.run_until_idle()                        # a's error arrives late; replay again
    assert handle.status() is InstanceStatus.COMPLETED
    assert handle.result() == 2
    a, b, after = handle.history().operations
    assert (a.name, b.name, after.name) == ("race_a", "race_b", "race_after")
    assert b.resolved_in is not None and a.resolved_in is not None
    assert b.resolved_in < a.resolved_in


@workflow
async def one_then_another(ctx: WorkflowContext[int]) -> int:
    first = await ctx.call(race_a, 1)
    return first + await ctx.call(race_b, 2)


def test_a_new_call_before_recorded_replies_is_nondeterminism(runtime: LocalRuntime) -> None:
    """New code that makes an extra call before the point where the history's first reply
    arrived fails with NonDeterminismError naming the new call, and sends nothing new."""
    runtime.register(one_then_another)
    runtime.implement(race_a, lambda x: x)
    handle = runtime.start(one_then_another, 0, workflow_id="early")
    runtime.run_until_idle()                        # race_a done, race_b has no implementation

    @workflow(name="one_then_another")
    async def changed(ctx: WorkflowContext[int]) -> int:
        calls = [ctx.call(race_a, 1), ctx.call(race_b, 2), ctx.call(race_after, "x")]
        return sum(await asyncio.gather(*calls))

    runtime._workflows["one_then_another"] = changed
    runtime.implement(race_b, lambda x: x)
    runtime.run_until_idle()
    assert handle.status() is InstanceStatus.FAILED
    with pytest.raises(WorkflowFailedError) as info:
        handle.result()
    assert info.value.error_type == "NonDeterminismError"
    assert "'race_after' as operation #3 before the recorded replies" in info.value.message
    assert [op.name for op in handle.history().operations] == ["race_a", "race_b"]
    assert len(runtime.service_queue("race_after")) == 0


@workflow
async def gather_or_fail(ctx: WorkflowContext[int]) -> int:
    a, b = await asyncio.gather(ctx.call(race_a, 1), ctx.call(race_b, 2))
    return a + b


def test_a_reply_the_replay_never_reaches_is_still_recorded(runtime: LocalRuntime) -> None:
    """After a crash left a's error recorded but the workflow unfinished, b's reply arrives:
    the workflow fails at a's stage without reaching b, and b's reply is recorded anyway."""
    runtime.register(gather_or_fail)
    runtime.start(gather_or_fail, 0, workflow_id="w")
    runtime.step_workflows()                        # calls 1 (race_a) and 2 (race_b) leave
    error = b'{"type":"Boom","message":"failed 1","details":null}'
    assert runtime.store.record_outcomes(
        "w", [RecordedOutcome("1", OperationState.FAILED, error)], 2, 0.0) == ["1"]
    runtime.transport.send_to_workflow("w", "reply-2", b'{"v":1,"kind":"call_result",'
                                       b'"workflow_id":"w","call_id":"2","ok":true,"value":7}')
    (report,) = runtime.run_until_idle()
    assert (report.status, report.applied) == ("failed", ["2"])
    ops = {op.op_id: op for op in runtime.history("w").operations}
    assert (ops["2"].state, ops["2"].result) == (OperationState.COMPLETED, b"7")
    assert runtime.dead_letters() == []
