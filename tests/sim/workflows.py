"""The workflows the fault simulator runs: together they use every durable operation kind
(call with and without timeout, step with retries, at-most-once step, sleep, callback, child,
parallel, map, wait_for_condition, cancel, patched, deterministic random), over services whose
replies are pure functions of the request.

Every side effect is counted in a :class:`Ledger` (the simulator installs one per run), so the
invariants can compare what ran with what each operation kind guarantees: a service execution
per call id, a step body execution per (workflow, step, attempt) with the activation it ran in.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from lambda_workflow import (
    Completion,
    RetryPolicy,
    Service,
    ServiceError,
    WorkflowContext,
    current_step,
    step,
    workflow,
)

double = Service("double", int, int)
picky = Service("picky", int, int)  # refuses odd numbers with a ServiceError

# The activation a step body runs in (set by the simulator's store proxy when the engine
# reads the history: the engine then runs activation ``activations + 1``), and the tick of
# the simulator's logical clock at which it read that history.
ACTIVATION: contextvars.ContextVar[int] = contextvars.ContextVar("sim_activation", default=0)
LOADED_AT: contextvars.ContextVar[int] = contextvars.ContextVar("sim_loaded_at", default=0)


@dataclass
class Ledger:
    """Every side effect of one simulated run."""

    # (workflow id, call id) -> executions, and the request bytes each saw
    services: Counter[tuple[str, str]] = field(default_factory=Counter)
    requests: dict[tuple[str, str], set[bytes]] = field(default_factory=dict)
    # (workflow id, step name, attempt, arguments as JSON) -> (activation, tick at which that
    # activation read its history) of each execution
    steps: dict[tuple[str, str, int, bytes], list[tuple[int, int]]] = field(
        default_factory=dict)
    # workflow id -> executions of its nonce step
    nonces: Counter[str] = field(default_factory=Counter)
    # workflow id -> callback tokens handed out by submitters (in order)
    tokens: dict[str, list[str]] = field(default_factory=dict)


LEDGER = Ledger()


def use_ledger(ledger: Ledger) -> None:
    """Count the effects of the next run in ``ledger``."""
    global LEDGER
    LEDGER = ledger


def serve_double(n: int) -> int:
    return 2 * n


def serve_picky(n: int) -> int:
    if n % 2:
        raise ServiceError("Odd", f"{n} is odd", {"n": n})
    return n // 2


def _count_step(*args: object) -> None:
    info = current_step()
    key = (info.workflow_id, info.name, info.attempt, orjson.dumps(list(args)))
    LEDGER.steps.setdefault(key, []).append((ACTIVATION.get(), LOADED_AT.get()))


@step(name="tally")
def tally(label: str) -> str:
    _count_step(label)
    return label.upper()


@step(name="flaky", retry=RetryPolicy(max_attempts=4, initial_delay=5, jitter="none"))
def flaky(n: int) -> int:
    """Fails its first two attempts (a retry timer each), then succeeds."""
    _count_step(n)
    if current_step().attempt < 3:
        raise RuntimeError(f"flaky attempt {current_step().attempt}")
    return n + 1000


@step(name="once", semantics="at_most_once",
      retry=RetryPolicy(max_attempts=8, initial_delay=1, jitter="none"))
def once(n: int) -> int:
    """At most once per attempt; a crash mid-attempt counts as a failed attempt, and the
    retries leave room for many of them."""
    _count_step(n)
    return n * 3


@step(name="nonce")
def nonce(n: int) -> int:
    """How many times this instance's nonce step has run so far (1 on the first)."""
    _count_step(n)
    LEDGER.nonces[current_step().workflow_id] += 1
    return LEDGER.nonces[current_step().workflow_id]


def submit(token: str) -> None:
    _count_step(token)
    tokens = LEDGER.tokens.setdefault(current_step().workflow_id, [])
    if token not in tokens:
        tokens.append(token)


@workflow
async def little(ctx: WorkflowContext[int]) -> int:
    """A child: a sleep and a call."""
    await ctx.sleep(5)
    return await ctx.call(double, ctx.request)


@workflow
async def waiter(ctx: WorkflowContext[int]) -> str:
    """A child that waits for a callback nobody completes: only a cancel ends it."""
    await ctx.create_callback("never", int)
    return "never"


@workflow
async def everything(ctx: WorkflowContext[int]) -> list[Any]:
    """Every durable operation kind but cancel, in one instance."""
    n = ctx.request
    out: list[Any] = [await ctx.step(tally, f"first-{n}")]
    out.append(await ctx.step(flaky, n))
    await ctx.sleep(60)
    out.append(await ctx.call(double, n, timeout=3600))

    async def nonce_call() -> int:
        # A step whose value differs on every execution (what steps are for), then a call
        # whose request carries it: the reply, less the nonce, is the same whatever ran.
        k = await ctx.step(nonce, n)
        return await ctx.call(double, 1000 + k) - 2 * k

    approved, fixed = await asyncio.gather(
        ctx.wait_for_callback("approve", submit, int, timeout=86_400), nonce_call())
    out += [approved, fixed]
    out.append(await ctx.child(little, n + 1))
    mapped = await ctx.map([1, 2, 3], lambda i: ctx.call(double, 100 * n + i),
                           max_concurrency=2)
    out.append(mapped.values())

    async def odd() -> int:
        return await ctx.call(picky, 2 * n + 1)

    async def even() -> int:
        return await ctx.call(picky, 2 * n)

    async def local() -> int:
        return await ctx.step(once, n)

    batch = await ctx.parallel([odd, even, local], completion=Completion(all_completed=True))
    out.append([item.status.value for item in batch.items])
    out.append(await ctx.wait_for_condition(
        lambda s: s + 1, 0, lambda s, attempt: None if s >= 2 else 30.0, name="poll"))
    if ctx.patched("v2"):
        out.append(await ctx.step(tally, "patched"))
    out.append(round(ctx.random(), 12))
    out.append(await ctx.step(tally, "last"))
    return out


@workflow
async def calls(ctx: WorkflowContext[int]) -> int:
    """A chain and a gather of calls; a ServiceError caught, then one uncaught (the instance
    fails) when the input is divisible by 3."""
    n = ctx.request
    a, b = await asyncio.gather(ctx.call(double, n), ctx.call(double, n + 1))
    try:
        c = await ctx.call(picky, a + b)  # a + b is odd: always refused
    except ServiceError as err:
        c = len(err.message)
    d = await ctx.call(picky, 3 if n % 3 == 0 else 4)
    return a + b + c + d


@workflow
async def cancellable(ctx: WorkflowContext[int]) -> str:
    """Waits for a callback and a child that never end; the simulator cancels it once both
    are recorded. It cleans up with a step and returns (parent) while the child is cancelled
    with it."""
    never = ctx.create_callback("never", int)
    try:
        await asyncio.gather(never, ctx.child(waiter, ctx.request))
    except asyncio.CancelledError:
        return await ctx.step(tally, f"cleanup-{ctx.request}")
    return "not cancelled"


@workflow
async def exits(ctx: WorkflowContext[int]) -> int:
    """Workflow code that raises SystemExit after a call: it must fail its own instance
    only (issue 10, finding 11), the same way with or without faults."""
    value = await ctx.call(double, ctx.request)
    if value > 0:
        raise SystemExit(f"workflow code exits with {value}")
    return value


WORKFLOWS = (everything, calls, cancellable, exits, little, waiter)
SERVICES = {double: serve_double, picky: serve_picky}
