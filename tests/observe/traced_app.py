"""The workflows the tracing tests run on both runtimes: a call, a call whose service fails,
a step whose first attempt fails (retried after a timer), a timer, a callback and a child."""

from __future__ import annotations

import contextlib

from pydantic import BaseModel

from lambda_workflow import (
    RetryPolicy,
    Service,
    ServiceError,
    WorkflowContext,
    step,
    workflow,
)


class Parcel(BaseModel):
    sku: str
    qty: int


quote = Service("quote", Parcel, int)
refuse = Service("refuse", Parcel, int)

TOKENS: dict[str, str] = {}
ATTEMPTS: dict[str, int] = {}


def quote_fn(p: Parcel) -> int:
    return 10 * p.qty


def refuse_fn(p: Parcel) -> int:
    raise ValueError(f"no stock of {p.sku}")


@step(retry=RetryPolicy(max_attempts=2, initial_delay=5, jitter="none"))
def label(sku: str) -> str:
    ATTEMPTS[sku] = ATTEMPTS.get(sku, 0) + 1
    if ATTEMPTS[sku] == 1:
        raise RuntimeError("printer jammed")
    return sku.upper()


@workflow
async def pack(ctx: WorkflowContext[Parcel]) -> str:
    return f"packed {ctx.request.qty} {ctx.request.sku}"


@workflow
async def shipment(ctx: WorkflowContext[Parcel]) -> str:
    price = await ctx.call(quote, ctx.request)
    with contextlib.suppress(ServiceError):
        await ctx.call(refuse, ctx.request)
    name = await ctx.step(label, ctx.request.sku)
    await ctx.sleep(60)
    cb = ctx.create_callback("approval", str, timeout=3600)
    TOKENS[ctx.workflow_id] = cb.token
    approver = await cb
    packed = await ctx.child(pack, ctx.request)
    return f"{name} {price} by {approver}: {packed}"


@workflow
async def doomed(ctx: WorkflowContext[Parcel]) -> int:
    price = await ctx.call(quote, ctx.request)
    raise RuntimeError(f"over budget: {price}")
