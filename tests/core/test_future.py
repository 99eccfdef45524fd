"""The core's CallFuture follows asyncio's future protocol exactly as asyncio.Future does.

The compiled twin implements its own future (not an asyncio.Future subclass); the pure twin's
is a subclass. Each scenario runs once with ``asyncio.Future`` and once with the twin's
``CallFuture`` and must observe the same things: values, exception types and messages,
cancellation messages, ``Task.cancelling()``, callback order and contexts. Scenarios run on
a real asyncio loop with both of asyncio's tasks (the C ``Task`` and the Python ``_PyTask``),
and on the workflow's ReplayLoop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import sys
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from .helpers import Req, make_index, new_loop, record

Factory = Callable[[asyncio.AbstractEventLoop], Any]
Observe = Callable[[asyncio.AbstractEventLoop, Factory, Any], list[Any]]

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")

TASKS = {"c_task": asyncio.Task, "py_task": asyncio.tasks._PyTask}  # type: ignore[attr-defined]


def asyncio_future(loop: asyncio.AbstractEventLoop) -> Any:
    return asyncio.Future(loop=loop)


def core_future(core: ModuleType) -> Factory:
    def make(loop: asyncio.AbstractEventLoop) -> Any:
        index, _ = make_index(core, [], loop=loop)  # type: ignore[arg-type]
        return core.CallFuture(index, loop)
    return make


def index_future(core: ModuleType) -> Factory:
    """Futures as the index makes them (a call recorded without a reply: PENDING). The
    compiled twin's abi3 build gives them a subclass whose await runs through C slots."""
    def make(loop: asyncio.AbstractEventLoop) -> Any:
        index, _ = make_index(core, [record(0)], loop=loop)  # type: ignore[arg-type]
        decision, future, _, _ = index.step(0, "call", "svc", *_step_args())
        assert decision == core.PENDING
        return future
    return make


def describe(exc: BaseException | None) -> Any:
    """An exception as comparable data: its type, args, and its cause/context types."""
    if exc is None:
        return None
    return (type(exc).__name__, exc.args, type(exc.__cause__).__name__,
            type(exc.__context__).__name__ if exc.__context__ is not None else None)


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return ("ok", fn())
    except BaseException as exc:  # the comparison is the point
        return ("raised", describe(exc))


def compare(core: ModuleType, scenario: Observe, task: Any = asyncio.Task) -> list[Any]:
    """Run ``scenario`` with asyncio.Future, with the core's CallFuture made by calling the
    class, and with one made by the index; they must agree."""
    seen = []
    for factory in (asyncio_future, core_future(core), index_future(core)):
        loop = asyncio.new_event_loop()
        try:
            seen.append(scenario(loop, factory, task))
        finally:
            loop.close()
    assert seen[0] == seen[1] == seen[2]
    return seen[1]


# -- basic state and errors ------------------------------------------------------------------

def test_is_a_future_to_asyncio(core: ModuleType) -> None:
    loop = new_loop()
    fut = core_future(core)(loop)
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    assert not fut.done() and not fut.cancelled()


def test_it_can_be_weakly_referenced(core: ModuleType) -> None:
    """As asyncio's futures can (a WeakSet of futures, a weakref callback)."""
    for make in (core_future(core), index_future(core)):
        fut = make(new_loop())
        ref = weakref.ref(fut)
        assert ref() is fut
        del fut
        gc.collect()
        assert ref() is None


def test_errors_before_and_after_completion_match_asyncio(core: ModuleType) -> None:
    def scenario(loop: asyncio.AbstractEventLoop, make: Factory, task: Any) -> list[Any]:
        fut = make(loop)
        seen = [outcome(fut.result), outcome(fut.exception)]
        fut.set_result(7)
        seen += [outcome(fut.result), outcome(fut.exception), outcome(lambda: fut.set_result(8)),
                 outcome(lambda: fut.set_exception(ValueError("x"))), outcome(fut.cancel),
                 fut.done(), fut.cancelled(), outcome(fut.result)]
        return seen
    seen = compare(core, scenario)
    assert seen[0][0] == "raised" and seen[0][1][0] == "InvalidStateError"


def test_set_exception_forms_match_asyncio(core: ModuleType) -> None:
    def scenario(loop: asyncio.AbstractEventLoop, make: Factory, task: Any) -> list[Any]:
        seen: list[Any] = []
        exceptions: list[Any] = [ValueError, ValueError("v"), StopIteration(), StopIteration, 3,
                                 KeyError]
        for exc in exceptions:
            fut = make(loop)
            seen.append(outcome(functools.partial(fut.set_exception, exc)))
            if fut.done():
                seen += [outcome(fut.result), describe(fut.exception())]
            else:
                seen.append(fut.done())
        return seen
    compare(core, scenario)


def test_cancel_with_and_without_message_matches_asyncio(core: ModuleType) -> None:
    def scenario(loop: asyncio.AbstractEventLoop, make: Factory, task: Any) -> list[Any]:
        seen = []
        for args in ((), ("why",), (None,)):
            fut = make(loop)
            seen += [fut.cancel(*args), fut.cancel(*args), fut.done(), fut.cancelled(),
                     outcome(fut.result), outcome(fut.exception)]
        fut = make(loop)
        seen += [fut.cancel(msg="kw"), outcome(fut.result)]
        return seen
    seen = compare(core, scenario)
    assert ("raised", ("CancelledError", ("why",), "NoneType", None)) in seen


# -- callbacks -------------------------------------------------------------------------------

def test_callbacks_run_in_order_with_their_contexts(core: ModuleType) -> None:
    def scenario(loop: asyncio.AbstractEventLoop, make: Factory, task: Any) -> list[Any]:
        seen: list[Any] = []
        fut = make(loop)

        def cb(name: str) -> Callable[[Any], None]:
            def run(f: Any) -> None:
                seen.append((name, f is fut, VAR.get(), f.result()))
            return run
        ctx = contextvars.copy_context()
        ctx.run(VAR.set, "explicit")
        token = VAR.set("at-add")
        try:
            fut.add_done_callback(cb("a"))
            fut.add_done_callback(cb("b"), context=ctx)
            fut.add_done_callback(cb("c"))
            removable = cb("d")
            fut.add_done_callback(removable)
            fut.add_done_callback(removable)
        finally:
            VAR.reset(token)
        seen.append(fut.remove_done_callback(removable))
        seen.append(fut.remove_done_callback(removable))
        fut.set_result(5)
        seen.append("set")
        loop.run_until_complete(asyncio.sleep(0))
        fut.add_done_callback(cb("late"))  # already done: scheduled at once
        loop.run_until_complete(asyncio.sleep(0))
        return seen
    seen = compare(core, scenario)
    assert seen == [2, 0, "set", ("a", True, "at-add", 5), ("b", True, "explicit", 5),
                    ("c", True, "at-add", 5), ("late", True, "unset", 5)]


# -- tasks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_a_task_awaits_it(core: ModuleType, task_name: str) -> None:
    def scenario(loop: asyncio.AbstractEventLoop, make: Factory, task: Any) -> list[Any]:
        fut = make(loop)
        fut_err = make(loop)

        async def body() -> Any:
            a = await fut
            try:
                await fut_err
            except KeyError as exc:
                return a, describe(exc), await fut  # awaiting a done future again
            return None

        t = task(body(), loop=loop)
        loop.run_until_complete(asyncio.sleep(0))
        seen = [t.done()]
        fut.set_result("v")
        loop.run_until_complete(asyncio.sleep(0))
        fut_err.set_exception(KeyError("k"))
        seen.append(loop.run_until_complete(t))
        return seen
    assert compare(core, scenario, TASKS[task_name]) == [
        False, ("v", ("KeyError", ("k",), "NoneType", None), "v")]


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_cancelling_a_task_that_awaits_it(core: ModuleType, task_name: str) -> None:
    """task.cancel(msg) cancels the awaited future with the message; the task sees a
    CancelledError with it; cancelling() and uncancel() behave as with asyncio.Future."""
    def scenario(loop: asyncio.AbstractEventLoop, make: Factory, task: Any) -> list[Any]:
        fut = make(loop)
        seen: list[Any] = []

        async def body() -> Any:
            try:
                await fut
            except asyncio.CancelledError as exc:
                me = asyncio.current_task()
                assert me is not None
                seen.append(("caught", exc.args, me.cancelling()))
                seen.append(me.uncancel())
                return "swallowed"
            return "not cancelled"

        t = task(body(), loop=loop)
        loop.run_until_complete(asyncio.sleep(0))
        seen.append(t.cancel("stop"))
        seen.append((fut.cancelled(), outcome(fut.result)))
        seen.append(loop.run_until_complete(t))
        return seen
    seen = compare(core, scenario, TASKS[task_name])
    assert seen[0] is True and ("caught", ("stop",), 1) in seen


def test_a_cancelled_future_cancels_its_awaiting_task(core: ModuleType) -> None:
    def scenario(loop: asyncio.AbstractEventLoop, make: Factory, task: Any) -> list[Any]:
        fut = make(loop)

        async def body() -> Any:
            return await fut

        t = task(body(), loop=loop)
        loop.run_until_complete(asyncio.sleep(0))
        fut.cancel("gone")
        return [outcome(lambda: loop.run_until_complete(t)), t.cancelled()]
    compare(core, scenario)


# -- gather, wait, wait_for, shield, as_completed ---------------------------------------------

def test_gather(core: ModuleType) -> None:
    def scenario(loop: asyncio.AbstractEventLoop, make: Factory, task: Any) -> list[Any]:
        seen = []
        a, b = make(loop), make(loop)

        async def both() -> Any:
            return await asyncio.gather(a, b)
        t = loop.create_task(both())
        loop.run_until_complete(asyncio.sleep(0))
        b.set_result(2)
        a.set_result(1)
        seen.append(loop.run_until_complete(t))

        c, d, e = make(loop), make(loop), make(loop)

        async def with_exceptions() -> Any:
            return await asyncio.gather(c, d, e, return_exceptions=True)
        t = loop.create_task(with_exceptions())
        loop.run_until_complete(asyncio.sleep(0))
        c.set_exception(ValueError("c"))
        d.cancel("d-msg")
        e.set_result(3)
        seen.append([describe(r) if isinstance(r, BaseException) else r
                     for r in loop.run_until_complete(t)])

        f, g = make(loop), make(loop)

        async def first_error() -> Any:
            return await asyncio.gather(f, g)
        t = loop.create_task(first_error())
        loop.run_until_complete(asyncio.sleep(0))
        g.set_exception(KeyError("g"))
        seen.append(outcome(lambda: loop.run_until_complete(t)))
        seen.append(f.done())

        h = make(loop)

        async def cancelled_child() -> Any:
            return await asyncio.gather(h)
        t = loop.create_task(cancelled_child())
        loop.run_until_complete(asyncio.sleep(0))
        h.cancel("h-msg")
        seen.append(outcome(lambda: loop.run_until_complete(t)))

        i = make(loop)
        outer = asyncio.gather(i)
        seen.append(outer.cancel("outer"))
        seen.append((i.cancelled(), outcome(i.result)))
        seen.append(outcome(lambda: loop.run_until_complete(outer)))
        return seen
    compare(core, scenario)


def test_wait_for_and_shield(core: ModuleType) -> None:
    def scenario(loop: asyncio.AbstractEventLoop, make: Factory, task: Any) -> list[Any]:
        seen = []
        for timeout in (None, 10.0):
            fut = make(loop)
            loop.call_soon(fut.set_result, timeout)
            seen.append(loop.run_until_complete(asyncio.wait_for(fut, timeout)))
        slow = make(loop)
        seen.append(outcome(lambda: loop.run_until_complete(asyncio.wait_for(slow, 0.001))))
        seen.append((slow.cancelled(), outcome(slow.result)))

        inner = make(loop)

        async def shielded() -> Any:
            return await asyncio.shield(inner)
        t = loop.create_task(shielded())
        loop.run_until_complete(asyncio.sleep(0))
        t.cancel()
        seen.append(outcome(lambda: loop.run_until_complete(t)))
        seen.append(inner.cancelled())
        inner.set_result("kept")
        seen.append(loop.run_until_complete(asyncio.shield(inner)))
        return seen
    compare(core, scenario)


def test_wait_and_as_completed(core: ModuleType) -> None:
    def scenario(loop: asyncio.AbstractEventLoop, make: Factory, task: Any) -> list[Any]:
        seen = []
        a, b = make(loop), make(loop)
        loop.call_soon(b.set_result, "b")

        async def first() -> Any:
            done, pending = await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
            return [f is b for f in done], [f is a for f in pending]
        seen.append(loop.run_until_complete(first()))
        a.set_result("a")

        c, d = make(loop), make(loop)
        loop.call_soon(d.set_result, "d")
        loop.call_soon(c.set_result, "c")

        async def in_order() -> Any:
            # as_completed registers its callbacks in set order: compare the values only
            return sorted([await f for f in asyncio.as_completed([c, d])])
        seen.append(loop.run_until_complete(in_order()))
        return seen
    seen = compare(core, scenario)
    assert seen == [([True], [True]), ["c", "d"]]


# -- on the workflow's loop --------------------------------------------------------------------

def test_gather_of_replayed_calls_on_the_replay_loop(core: ModuleType) -> None:
    """gather over futures the index made, delivered by advance(), on the ReplayLoop."""
    from .helpers import INT, SERVICE

    loop = new_loop()
    ops = [record(i, "completed", result=str(10 * i).encode(), resolved_in=i + 1)
           for i in range(3)]
    index, _ = make_index(core, ops, activation=9, loop=loop)

    async def body() -> Any:
        futures = [index.step(i, "call", "svc", SERVICE.request_adapter, Req, INT, Req(n=i),
                              SERVICE)[1] for i in range(3)]
        return await asyncio.gather(*futures)

    task = loop.create_task(body())
    loop.run_until_idle()
    while index.advance():
        loop.run_until_idle()
    assert task.result() == [0, 10, 20]


def test_the_compiled_index_makes_futures_without_python_calls() -> None:
    """The compiled core creates its futures without calling Python code: no __init__ and no
    loop.get_debug (an asyncio.Future calls it on creation)."""
    from lambda_workflow._core import _c

    calls: list[str] = []

    class CountingLoop(type(new_loop())):  # type: ignore[misc]
        def get_debug(self) -> bool:
            calls.append("get_debug")
            return False

    loop = CountingLoop()
    index, _ = make_index(_c, [record(0, "completed", result=b"1", resolved_in=1)], loop=loop)
    original_init = _c.CallFuture.__init__
    fut = index.step(0, "call", "svc", *_step_args())[1]
    assert isinstance(fut, _c.CallFuture) and not isinstance(fut, asyncio.Future)
    assert calls == [] and _c.CallFuture.__init__ is original_init
    assert asyncio.isfuture(fut)


def _step_args() -> tuple[Any, ...]:
    from .helpers import INT, SERVICE
    return (SERVICE.request_adapter, Req, INT, Req(n=0), SERVICE)


def test_stopiteration_rule_follows_this_python(core: ModuleType) -> None:
    """Python 3.13 wraps a StopIteration in a RuntimeError; 3.11 and 3.12 refuse it."""
    fut = core_future(core)(new_loop())
    if sys.version_info >= (3, 13):
        fut.set_exception(StopIteration())
        assert type(fut.exception()) is RuntimeError
    else:
        with pytest.raises(TypeError, match="StopIteration interacts badly"):
            fut.set_exception(StopIteration())
