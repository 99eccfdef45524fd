"""Names for ctx.sleep and ctx.call (``name=``): recorded as the operation's name, shown in
the history, the CLI and errors, matched on replay; a named call is still routed to its
service. On the embedded runtime."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import pytest

from lambda_workflow import (
    CallTimeoutError,
    NonDeterminismError,
    Service,
    ServiceError,
    WorkflowContext,
    WorkflowFailedError,
    workflow,
)
from lambda_workflow._opnames import display, label_of, service_of
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.cli import main
from lambda_workflow.local import LocalRuntime

square = Service("square", int, int)
silent = Service("silent", int, int)
SEEN: list[int] = []


async def _square(n: int) -> int:
    SEEN.append(n)
    if n < 0:
        raise ServiceError("Negative", f"{n} is negative")
    return n * n


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


def _runtime(*workflows: Any) -> LocalRuntime:
    rt = LocalRuntime(clock=VirtualClock(1_700_000_000.0))
    rt.register(*workflows)
    rt.implement(square, _square)
    return rt


@workflow(name="named")
async def named(ctx: WorkflowContext[int]) -> int:
    await ctx.sleep(60, name="cool-off")
    await ctx.sleep(5)
    first = await ctx.call(square, ctx.request, name="first-square")
    second = await ctx.call(square, first, timeout=30, name="second-square")
    return await ctx.call(square, second)


def test_names_are_recorded_and_named_calls_reach_their_service() -> None:
    """A named sleep records its timer under that name (an unnamed one stays ``sleep``); a
    named call records its name with its service, is sent to the service and gets its
    reply; its timeout's timer is ``timeout:<name>``; an unnamed call is unchanged."""
    with _runtime(named) as rt:
        handle = rt.start(named, 2)
        rt.run_until_idle()
        assert handle.result() == 256
        ops = handle.history().operations
    assert SEEN == [2, 4, 16]
    assert [(op.kind, display(op.kind, op.name)) for op in ops] == [
        ("timer", "cool-off"), ("timer", "sleep"),
        ("call", "first-square (service square)"),
        ("call", "second-square (service square)"), ("timer", "timeout:second-square"),
        ("call", "square")]
    calls = [op for op in ops if op.kind == "call"]
    assert [service_of(op.name) for op in calls] == ["square"] * 3
    assert [label_of(op.name) for op in calls] == ["first-square", "second-square", "square"]


def _swap(rt: LocalRuntime, body: Any) -> Any:
    @workflow(name="named")
    async def changed(ctx: WorkflowContext[int]) -> int:
        await body(ctx)
        await ctx.sleep(3600, name="hold")  # the replay comes when it fires
        return 0
    rt._workflows["named"] = changed
    return changed


@pytest.mark.parametrize(("recorded", "changed", "says"), [
    # a call renamed at the same point
    (lambda ctx: ctx.call(square, 1, name="lookup"),
     lambda ctx: ctx.call(square, 1, name="fetch"),
     "created call 'fetch (service square)', but the history recorded call "
     "'lookup (service square)'"),
    # a name given to a call recorded without one
    (lambda ctx: ctx.call(square, 1),
     lambda ctx: ctx.call(square, 1, name="fetch"),
     "created call 'fetch (service square)', but the history recorded call 'square'"),
    # a sleep renamed at the same point
    (lambda ctx: ctx.sleep(3600, name="grace"),
     lambda ctx: ctx.sleep(3600, name="cool-off"),
     "created timer 'cool-off', but the history recorded timer 'grace'"),
])
def test_a_changed_name_at_the_same_point_is_nondeterminism(recorded: Any, changed: Any,
                                                            says: str) -> None:
    """Names are part of what a replay matches, as a step's name is: a renamed operation
    fails the replay with NonDeterminismError naming both names."""
    with _runtime(named) as rt:
        rt.start(_swap(rt, recorded), 1, workflow_id="renamed")
        rt.run_until_idle(skip_time=False)  # waits on a timer
        _swap(rt, changed)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            rt.result("renamed")
    assert failed.value.error_type == NonDeterminismError.__name__
    assert says in failed.value.message


def test_errors_of_a_named_call_name_it() -> None:
    """A named call's CallTimeoutError names the call and its service; a ServiceError from it
    names the service itself (not the recorded pair)."""
    @workflow(name="errors")
    async def errors(ctx: WorkflowContext[None]) -> list[str]:
        seen = []
        try:
            await ctx.call(silent, 1, timeout=10, name="lookup")
        except CallTimeoutError as exc:
            seen.append(str(exc))
        try:
            await ctx.call(square, -3, name="negative")
        except ServiceError as exc:
            seen.append(f"{exc.service}: {exc}")
        return seen

    with _runtime(errors) as rt:
        handle = rt.start(errors, None)
        rt.run_until_idle()
        assert handle.result() == [
            "call 'lookup' to service 'silent' got no reply within 10 s",
            "square: Negative: -3 is negative (service 'square', call 3)"]


@pytest.mark.parametrize("bad", ["", 7, "tab\there", "x" * 201])
@pytest.mark.parametrize("op", ["call", "sleep"])
def test_a_bad_name_is_refused_before_anything_is_recorded(op: str, bad: object) -> None:
    """A name that is not a non-empty printable string of at most 200 characters fails the
    workflow with a ValueError naming the option, before anything is recorded."""
    @workflow(name="bad-name")
    async def bad_name(ctx: WorkflowContext[None]) -> None:
        if op == "call":
            await ctx.call(square, 1, name=bad)  # type: ignore[arg-type]
        else:
            await ctx.sleep(5, name=bad)  # type: ignore[arg-type]

    with _runtime(bad_name) as rt:
        handle = rt.start(bad_name, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            handle.result()
        assert failed.value.error_type == "ValueError"
        assert f"ctx.{op}'s name must be a non-empty printable string" in failed.value.message
        assert handle.history().operations == []


def test_a_service_name_must_be_printable() -> None:
    """Service names cannot hold the separator of a named call's recorded name."""
    with pytest.raises(ValueError, match="printable"):
        Service("square\x1fsneaky", int, int)


MODULE = '''
from lambda_workflow import Service, WorkflowContext, workflow

audit = Service("audit", int, int)
ledger = Service("ledger", int, int)


@workflow
async def named_flow(ctx: WorkflowContext[int]) -> int:
    await ctx.sleep(60, name="cool-off")
    checked = await ctx.call(audit, ctx.request, name="audit-order")
    return await ctx.call(ledger, checked, name="book-it")


def setup(runtime):
    runtime.register(named_flow)
    runtime.implement(audit, lambda n: n * 10)
'''


def test_cli_history_and_describe_show_the_names(tmp_path: Path) -> None:
    """The CLI's history prints each named operation's name (a call's with its service), and
    describe says which named call waits on which service; a runtime reopening the state file
    re-sends the pending named call to its service (``recover``)."""
    module = tmp_path / "named_flow.py"
    module.write_text(MODULE)
    db = str(tmp_path / "state.sqlite3")

    def cli(*argv: str) -> str:
        out = io.StringIO()
        main(list(argv), out=out)
        return out.getvalue()

    started = cli("start", str(module), "--db", db, "--id", "n-1", "--input", "3", "--run")
    assert "sent call 2 audit-order (service audit)" in started, started
    history = cli("history", "--db", db, "n-1")
    assert "timer cool-off" in history, history
    assert "call audit-order (service audit)" in history, history
    assert "call book-it (service ledger)" in history, history
    described = cli("describe", "--db", db, "n-1")
    assert "call 3 'book-it': service 'ledger'" in described, described
    spec = importlib.util.spec_from_file_location("named_flow", module)
    assert spec is not None and spec.loader is not None
    flow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flow)
    with LocalRuntime(db, clock=VirtualClock(1_700_000_000.0)) as rt:
        rt.implement(flow.audit, lambda n: n * 10)
        rt.implement(flow.ledger, lambda n: n + 1)
        rt.register(flow.named_flow)
        rt.run_until_idle()
        assert rt.result("n-1") == 31


def test_a_named_call_removed_from_the_code_is_named_in_the_error() -> None:
    """The replay of code that no longer makes a recorded named call names it as
    ``<name> (service <service>)``."""
    with _runtime(named) as rt:
        rt.start(_swap(rt, lambda ctx: ctx.call(square, 1, name="lookup")), 1,
                 workflow_id="removed")
        rt.run_until_idle(skip_time=False)
        @workflow(name="named")
        async def gone(ctx: WorkflowContext[int]) -> int:
            return 0  # the call and the sleep are gone

        rt._workflows["named"] = gone
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            rt.result("removed")
    assert failed.value.error_type == NonDeterminismError.__name__
    assert ("the first missing one is #1, call 'lookup (service square)'"
            in failed.value.message), failed.value.message
