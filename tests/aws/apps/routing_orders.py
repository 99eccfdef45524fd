"""The orders half of a two-module app for the template generator's tests: ``order`` reserves
stock (``reserve``, implemented here) and bills the order through the child workflow
``routing_billing.bill``, which runs in the other module's workflow function."""

from __future__ import annotations

from pydantic import BaseModel

# Lambda imports both modules from the zip's root; mypy checks this file as part of the tests
# package, where that name does not resolve.
from routing_billing import Invoice, bill  # type: ignore[import-not-found]

from lambda_workflow import Service, WorkflowContext, workflow
from lambda_workflow.aws import service_handler, workflow_handler


class Order(BaseModel):
    order_id: str
    cents: int


reserve = Service("reserve", Order, str)


@workflow(services=[reserve])
async def order(ctx: WorkflowContext[Order]) -> str:
    reserved = await ctx.call(reserve, ctx.request)
    billed: str = await ctx.child(bill, Invoice(order_id=ctx.request.order_id,
                                                cents=ctx.request.cents))
    return f"{reserved}; {billed}"


async def do_reserve(o: Order) -> str:
    return f"reserved {o.order_id}"


handler = workflow_handler(order)
handle_reserve = service_handler(reserve, do_reserve)
