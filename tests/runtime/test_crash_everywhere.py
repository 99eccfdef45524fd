"""Crash injection across every durable operation: one workflow that uses steps, timers,
calls with timeouts, a callback, a child workflow, a map and a polled condition is run with a
crash injected at the N-th write, the N-th send and the N-th timer, for every N; each run must
end with the crash-free result, every call's work done once and every step's body at most
once more than its attempts (at-least-once)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from lambda_workflow import Service, WorkflowContext, workflow
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.local import LocalRuntime

double = Service("double", int, int)
CALLS: Counter[int] = Counter()
STEPS: Counter[str] = Counter()
TOKENS: dict[str, str] = {}
CRASHED: list[str] = []


async def _double(n: int) -> int:
    CALLS[n] += 1
    return 2 * n


def tally(label: str) -> str:
    STEPS[label] += 1
    return label.upper()


@workflow
async def little(ctx: WorkflowContext[int]) -> int:
    await ctx.sleep(5)
    return await ctx.call(double, ctx.request)


@workflow
async def everything(ctx: WorkflowContext[int]) -> list[Any]:
    out: list[Any] = [await ctx.step(tally, "first")]
    await ctx.sleep(60)
    out.append(await ctx.call(double, ctx.request, timeout=3600))
    cb = ctx.create_callback("ok", int, timeout=86_400)
    TOKENS[ctx.workflow_id] = cb.token
    out.append(await cb)
    out.append(await ctx.child(little, 7))
    mapped = await ctx.map([1, 2, 3], lambda n: ctx.call(double, 100 + n), max_concurrency=2)
    out.append(mapped.values())
    out.append(await ctx.wait_for_condition(
        lambda s: s + 1, 0, lambda s, attempt: None if s >= 2 else 30.0, name="poll"))
    out.append(await ctx.step(tally, "last"))
    return out


EXPECTED = ["FIRST", 42, 99, 14, [202, 204, 206], 2, "LAST"]


class Crash(Exception):
    """An injected crash."""


def _run(crash: Callable[[LocalRuntime], None] | None) -> tuple[list[Any], LocalRuntime]:
    CALLS.clear()
    STEPS.clear()
    TOKENS.clear()
    rt = LocalRuntime(clock=VirtualClock(1_700_000_000.0), max_receives=50)
    rt.register(everything, little)
    rt.implement(double, _double)
    if crash is not None:
        crash(rt)
    try:
        handle = rt.start(everything, 21, workflow_id="all")
    except Crash:  # the client retries a start that crashed (starts are idempotent)
        handle = rt.start(everything, 21, workflow_id="all")
    for _ in range(300):
        rt.run_until_idle(skip_time=False)
        if handle.status().value != "running":
            break
        token = TOKENS.get("all")
        if token is not None and not any(op.kind == "callback" and op.state.value == "completed"
                                         for op in rt.history("all").operations):
            with contextlib.suppress(Crash):  # the approver answers once the callback exists
                rt.complete_callback(token, 99)
            continue
        fire_at = rt.timers.next_fire_at()
        if fire_at is not None:
            with contextlib.suppress(Crash):
                rt.advance_time(max(0.0, fire_at - rt.clock.now()))
    return handle.result(), rt


def _crash_nth(target: str, n: int, when: str = "before") -> Callable[[LocalRuntime], None]:
    """Crash at the n-th call of ``target``: ``before`` it does anything, or ``after`` it
    did its work (the write is durable, the message is out) and before its caller learns."""
    def install(rt: LocalRuntime) -> None:
        owner: Any = rt.timers if target == "schedule" else (
            rt.transport if target.startswith("send") else rt.store)
        real = getattr(owner, target)
        count = [0]

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            if count[0] == n:
                CRASHED.append(target)
                if when == "after":
                    real(*args, **kwargs)
                raise Crash(f"crash {when} {target} #{n}")
            return real(*args, **kwargs)

        setattr(owner, target, wrapped)
    return install


def test_the_crash_free_run() -> None:
    """Without crashes the workflow returns the expected values; each call ran once and each
    step body once."""
    result, rt = _run(None)
    rt.close()
    assert result == EXPECTED
    assert Counter({21: 1, 7: 1, 101: 1, 102: 1, 103: 1}) == CALLS
    assert (STEPS["first"], STEPS["last"]) == (1, 1)


TARGETS = ("create_instance", "add_operations", "commit_activation", "record_outcomes",
           "mark_sent", "finish", "send_to_service", "send_to_workflow", "schedule")


def _counting(counts: Counter[str]) -> Callable[[LocalRuntime], None]:
    def install(rt: LocalRuntime) -> None:
        for target in TARGETS:
            owner: Any = rt.timers if target == "schedule" else (
                rt.transport if target.startswith("send") else rt.store)
            real = getattr(owner, target)

            def wrapped(*args: Any, _real: Any = real, _target: str = target,
                        **kwargs: Any) -> Any:
                counts[_target] += 1
                return _real(*args, **kwargs)

            setattr(owner, target, wrapped)
    return install


def _every_crash_point() -> list[tuple[str, int, str]]:
    """(target, n, when) for every call a crash-free run makes, so each case really
    crashes: before the call and after it."""
    counts: Counter[str] = Counter()
    _, rt = _run(_counting(counts))
    rt.close()
    return [(target, n, when) for target in TARGETS for n in range(1, counts[target] + 1)
            for when in ("before", "after")]


@pytest.mark.parametrize(("target", "n", "when"), _every_crash_point())
def test_a_crash_anywhere_changes_nothing_but_repeats(target: str, n: int, when: str) -> None:
    """A crash before or after the n-th call of a store write, a send or a timer schedule
    (child creation included): the messages come back, the activation repeats, and the
    workflow ends with the same result; each service call's work ran once (services are
    idempotent per call id here by the outbox's single send, at most twice when the crash
    fell between a send and its record) and each step body at most twice (at-least-once)."""
    CRASHED.clear()
    result, rt = _run(_crash_nth(target, n, when))
    rt.close()
    assert [target] == CRASHED  # the crash did happen
    assert result == EXPECTED
    assert all(count <= 2 for count in CALLS.values())
    assert STEPS["first"] <= 2 and STEPS["last"] <= 2
